"""How each stage's throughput grows from 1 to 2 workers on this machine; writes a Markdown table.

Stages and workloads (real data, the embedded MiniLM, one local Ray of 2 CPUs):

* ``mine``: ``lrat mine`` (Ray Data actors, embedded tokenizer) on synthetic BrowseComp-Plus runs
  shaped like the ten real LRAT trajectories (``benchmarks/synthetic.py``); trajectories/s over
  the whole run, Ray Data start included;
* ``index``: ``lrat index`` (Ray Data encoder actors + FAISS flat) over SciFact abstracts at 128
  tokens; documents/s over the whole run;
* ``rollout``: simulated agents (Ray actors) on SciFact training claims against the index served
  by one Ray Serve replica; tasks/s;
* ``train``: ``lrat train`` (Ray Train DDP, gloo) on the mined pairs, 8 pairs per worker and step,
  1 positive + 1 in-set negative, 128-token documents; examples/s of the last step (steady state;
  the global batch grows with the workers, as data parallelism does).

The judge is not measured: on a cluster it is LLM inference on GPUs (vLLM), which this machine
cannot run; the README sizes it from token counts instead.

Two cores cap every ratio at 2.0; Ray's own processes, Serve and the driver share them, so a
ratio shows how much of the second core a stage turns into throughput, the figure that carries
over to nodes with more cores.

Usage: ``python benchmarks/bench_scale.py [--trajectories 8000] [--documents 1500] [--tasks 200]
[--output benchmarks/results/scale.md]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from lrat_ray.infra.hardware import summary_line

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic import generate  # noqa: E402

DATA = Path(os.environ.get("LRAT_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SCIFACT = DATA / "scifact-beir"


def scifact_subset(directory: Path, documents: int, tasks: int) -> tuple[Path, list[str]]:
    """The abstracts judged for the first ``tasks`` training claims, filled up to ``documents``."""
    from lrat_ray.core.datasets import load_qrels

    qrels = load_qrels(str(SCIFACT / "qrels" / "train.tsv"))
    claims = sorted(qrels)[:tasks]
    judged = {d for q in claims for d in qrels[q]}
    kept = []
    for line in (SCIFACT / "corpus.jsonl").read_text().split("\n"):
        if line.strip() and (json.loads(line)["_id"] in judged or len(kept) < documents - len(judged)):
            kept.append(line)
    path = directory / "corpus.jsonl"
    path.write_text("\n".join(kept) + "\n")
    return path, claims


def bench_mine(runs: Path, out: Path, workers: int, count: int) -> float:
    from lrat_ray.stages.mine import MineConfig, run_mine

    started = time.perf_counter()
    report = run_mine(MineConfig(input=[str(runs)], output=str(out), workers=workers, files_per_task=1))
    assert report["records_used"] == count
    return count / (time.perf_counter() - started)


def bench_index(corpus: Path, out: Path, workers: int) -> float:
    from lrat_ray.stages.index import IndexConfig, run_index

    started = time.perf_counter()
    manifest = run_index(IndexConfig(corpus=[str(corpus)], output=str(out), workers=workers, document_max_length=128))
    return manifest["count"] / (time.perf_counter() - started)


def bench_rollout(index: Path, claims: list[str], out: Path, workers: int) -> float:
    from lrat_ray.agents.config import AgentConfig
    from lrat_ray.agents.rollout import run_rollouts
    from lrat_ray.agents.tasks import load_tasks
    from lrat_ray.core.datasets import load_qrels, load_queries
    from lrat_ray.serving.config import ServeConfig
    from lrat_ray.serving.retriever import deploy

    url = deploy(ServeConfig(index=str(index), port=18731, replica_cpus=0))
    tasks = load_tasks(
        load_queries(str(SCIFACT / "queries.jsonl")), load_qrels(str(SCIFACT / "qrels" / "train.tsv")), claims
    )
    started = time.perf_counter()
    summary = run_rollouts(url, tasks, AgentConfig(max_turns=4), str(out), workers=workers)
    assert summary["completed"] == len(tasks), summary
    return len(tasks) / (time.perf_counter() - started)


def bench_train(pairs: Path, out: Path, workers: int) -> float:
    from lrat_ray.stages.train import TrainConfig, run_train

    summary = run_train(
        TrainConfig(
            pairs=[str(pairs)],
            output=str(out),
            workers=workers,
            per_device_batch=8,
            group_size=2,
            max_steps=6,
            document_max_length=128,
            checkpoint_every=1000,
        )
    )
    return summary["final_metrics"]["examples_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trajectories", type=int, default=8000)
    parser.add_argument("--documents", type=int, default=1500)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--output", default=str(Path(__file__).with_name("results") / "scale.md"))
    args = parser.parse_args()
    print(summary_line(), flush=True)  # figures depend on it: bf16 native or emulated

    import ray
    from ray import serve

    from lrat_ray.infra.runtime import init_ray

    init_ray(num_cpus=2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        runs = tmp / "runs"
        runs.mkdir()
        generate(args.trajectories, 40, runs)
        corpus, claims = scifact_subset(tmp, args.documents, args.tasks)
        measured: dict[str, dict[int, float]] = {}
        for workers in (1, 2):
            measured.setdefault("mine (trajectories/s)", {})[workers] = bench_mine(
                runs, tmp / f"mine-{workers}", workers, args.trajectories
            )
            measured.setdefault("index (documents/s)", {})[workers] = bench_index(
                corpus, tmp / f"index-{workers}", workers
            )
        for workers in (1, 2):
            measured.setdefault("rollout (tasks/s)", {})[workers] = bench_rollout(
                tmp / "index-2", claims, tmp / f"rollout-{workers}", workers
            )
        serve.shutdown()
        for workers in (1, 2):
            measured.setdefault("train (examples/s)", {})[workers] = bench_train(
                tmp / "mine-1" / "pairs", tmp / f"train-{workers}", workers
            )
    ray.shutdown()
    for stage, by_workers in measured.items():
        rows.append(f"| {stage} | {by_workers[1]:.1f} | {by_workers[2]:.1f} | {by_workers[2] / by_workers[1]:.2f}x |")
    table = "\n".join(["| stage | 1 worker | 2 workers | 2 vs 1 |", "|---|---:|---:|---:|", *rows]) + "\n"
    header = (
        f"# bench_scale ({time.strftime('%Y-%m-%d')}; {os.cpu_count()} cores; {args.trajectories} trajectories, "
        f"{args.documents} documents, {args.tasks} tasks)\n\n{summary_line()}\n\n"
    )
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(header + table)
    print(header + table)


if __name__ == "__main__":
    main()
