"""LRAT's ablation (paper Fig. 7) on one set of trajectories: naive vs +filter vs +reweight.

Takes the judged pairs of one flywheel iteration (default: the demo's ``runs/demo/iter-1/judge``,
i.e. the same simulated-agent trajectories for all three), trains the starting model three times
with ``--ablation naive`` (every browse, weight 1), ``filter`` (judge-irrelevant browses dropped,
weight 1) and ``reweight`` (dropped, reasoning-length weights), indexes the corpus with each and
reports held-out IR metrics side by side, with the untrained model as the baseline row.

Usage: ``python benchmarks/bench_ablation.py [--flywheel runs/demo] [--iteration 1]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

DATA = Path(os.environ.get("LRAT_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flywheel", default="runs/demo")
    parser.add_argument("--iteration", type=int, default=1)
    parser.add_argument("--output", default="runs/ablation")
    args = parser.parse_args()

    from lrat_ray.evaluate import load_qrels, load_queries, retrieve, score_run
    from lrat_ray.index import IndexConfig, run_index
    from lrat_ray.train import TrainConfig, run_train

    flywheel = Path(args.flywheel)
    fw_config = json.loads((flywheel / f"iter-{args.iteration}" / "judge" / "report.json").read_text())
    tasks = json.loads((flywheel / "tasks.json").read_text())
    queries = load_queries(str(DATA / "scifact-beir" / "queries.jsonl"))
    qrels = load_qrels(str(DATA / "scifact-beir" / "qrels" / "test.tsv"))
    heldout = {q: queries[q] for q in tasks["heldout"]}
    corpus = [str(DATA / "scifact-beir" / "corpus.jsonl")]
    pairs = str(flywheel / f"iter-{args.iteration}" / "judge" / "pairs")
    base_index = str(flywheel / "iter-0" / "index")
    print(f"pairs: {fw_config['pairs']} ({fw_config['relevant']} judged relevant by {fw_config['backend']}); "
          f"held-out claims: {len(heldout)}", flush=True)

    def metrics(index_dir):
        run = retrieve(index_dir, heldout, 100)
        return score_run(run, {q: qrels[q] for q in heldout}, [10, 100])["metrics"]

    rows = [("base (no training)", metrics(base_index))]
    manifest = json.loads((Path(base_index) / "manifest.json").read_text())
    for ablation in ("naive", "filter", "reweight"):
        model = os.path.join(args.output, ablation, "model")
        run_train(TrainConfig(pairs=[pairs], output=model, corpus=corpus, ablation=ablation, workers=2,
                              per_device_batch=16, group_size=2, learning_rate=5e-5, epochs=1, seed=0,
                              document_max_length=manifest["encoder"]["document_max_length"],
                              checkpoint_every=1000))
        index = os.path.join(args.output, ablation, "index")
        run_index(IndexConfig(corpus=corpus, output=index, model=model))
        rows.append((ablation, metrics(index)))
        print(f"{ablation}: {rows[-1][1]}", flush=True)
    print("\n| variant | nDCG@10 | Recall@10 | Recall@100 |\n|---|---:|---:|---:|")
    for name, m in rows:
        print(f"| {name} | {m['ndcg@10']:.4f} | {m['recall@10']:.4f} | {m['recall@100']:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
