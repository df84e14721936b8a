"""Would a real LLM judge earn an arm in the ablation? The tiny chat model against the keyword judge.

Issue 24's optional arm: before an ablation arm uses ``--backend vllm --model tiny`` (the embedded
SmolLM2-135M-Instruct), score it on the simulation's own truth. The informative agent of the
ablation (seed 0, the ablation's settings) solves SciFact training claims against the untrained
retriever; its runs go through the real stages (``lrat mine``, then ``lrat judge`` with the
``keyword`` backend and with ``vllm``/``tiny``); each judged pair is compared with whether its
browsed abstract is judged relevant for the claim in SciFact's qrels (``useful``). The arm is
worth adding only if the LLM judge finds more of the useless browses than the keyword judge does
(recall of useless) without dropping more useful ones.

    python benchmarks/bench_judge_usefulness.py [--tasks 200] [--output benchmarks/results/judge_usefulness.md]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LRAT_DATA", REPO.parent / "shared" / "data"))
SCIFACT = DATA / "scifact-beir"


def rollouts(tasks: int, work: Path) -> tuple[Path, dict[str, dict[str, int]]]:
    """The ablation's informative agent (seed 0) on ``tasks`` training claims; run files in ``work``."""
    from lrat_ray.agents.retrievers import LocalRetriever
    from lrat_ray.experiments.ablation import AblationConfig
    from lrat_ray.experiments.ablation.run import corpus_index, load_experiment, make_encoder, roll_out, training_tasks

    config = AblationConfig(
        corpus=[str(SCIFACT / "corpus.jsonl")],
        queries=str(SCIFACT / "queries.jsonl"),
        train_qrels=str(SCIFACT / "qrels" / "train.tsv"),
        heldout_qrels=str(SCIFACT / "qrels" / "test.tsv"),
        output=str(work / "ablation"),
        train_tasks=tasks,
        agent={"max_turns": 4, "k": 10},
    )
    exp = load_experiment(config)
    encoder = make_encoder(exp.base_spec, bf16=config.bf16)
    chosen = training_tasks(exp, 0)
    runs = roll_out(exp, LocalRetriever(corpus_index(exp, encoder), encoder), chosen, "informative", 0)
    folder = work / "runs"
    folder.mkdir(parents=True, exist_ok=True)
    for run in runs:
        (folder / f"{run['query_id']}.json").write_text(json.dumps(run))
    return folder, {t.id: t.judgments for t in chosen}


def judged(pairs_dir: Path, backend: str, work: Path) -> tuple[list[dict], dict]:
    import pyarrow.dataset as pads

    from lrat_ray.infra.stage_run import run_stage
    from lrat_ray.stages.judge import JudgeConfig, run_judge

    options = {"model": "tiny", "gpus_per_replica": 0, "concurrency": 1, "batch_size": 16} if backend == "vllm" else {}
    started = time.time()
    report = run_stage(
        "judge",
        JudgeConfig(pairs=str(pairs_dir), output=str(work / f"judge-{backend}"), backend=backend, **options),
        run_judge,
    ).result
    report["seconds"] = round(time.time() - started, 1)
    columns = ["trajectory_id", "browse_turn", "positive_id", "relevant", "judge_status"]
    rows = pads.dataset(str(work / f"judge-{backend}" / "pairs"), format="parquet").to_table(columns=columns)
    return rows.to_pylist(), report


def scores(rows: list[dict], judgments: dict[str, dict[str, int]]) -> dict:
    """Recall of useless browses (labelled NOT_RELEVANT), useful browses wrongly dropped."""
    useful = [judgments.get(r["trajectory_id"], {}).get(r["positive_id"], 0) > 0 for r in rows]
    useless = [r for r, u in zip(rows, useful) if not u]
    kept_useful = [r for r, u in zip(rows, useful) if u]
    return {
        "pairs": len(rows),
        "useful": len(kept_useful),
        "useless": len(useless),
        "useless_recall": sum(not r["relevant"] for r in useless) / len(useless) if useless else None,
        "useful_dropped": sum(not r["relevant"] for r in kept_useful) / len(kept_useful) if kept_useful else None,
        "kept_useful_share": _share([u for r, u in zip(rows, useful) if r["relevant"]]),
        "unparseable_or_failed": sum(r["judge_status"] in ("unparseable", "failed") for r in rows),
    }


def _share(values: list[bool]) -> float | None:
    return sum(values) / len(values) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=200, help="training claims rolled out (seed 0)")
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "judge_usefulness.md"))
    args = parser.parse_args()

    from lrat_ray.infra.hardware import summary_line
    from lrat_ray.infra.stage_run import run_stage
    from lrat_ray.stages.mine import MineConfig, run_mine

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        runs, judgments = rollouts(args.tasks, work)
        mined = work / "mined"
        run_stage("mine", MineConfig(input=[str(runs)], output=str(mined), zero_length="neutral"), run_mine)
        results = {}
        for backend in ("keyword", "vllm"):
            rows, report = judged(mined, backend, work)
            results[backend] = {**scores(rows, judgments), "seconds": report["seconds"]}
    lines = [
        f"# Judges against the simulation's usefulness labels ({time.strftime('%Y-%m-%d')}, {summary_line()})",
        "",
        f"`python benchmarks/bench_judge_usefulness.py --tasks {args.tasks}`: the ablation's informative agent "
        "(seed 0) on SciFact training claims, its runs mined and judged by the real stages; `useful` = the "
        "browsed abstract is judged relevant for the claim in SciFact's qrels.",
        "",
        "| judge | pairs | useless | recall of useless | useful dropped | useful share of kept | "
        "unparseable/failed | judge s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for backend, r in results.items():
        name = "keyword" if backend == "keyword" else "vllm, tiny (SmolLM2-135M-Instruct)"
        lines.append(
            f"| {name} | {r['pairs']} | {r['useless']} | {_fmt(r['useless_recall'])} | {_fmt(r['useful_dropped'])} "
            f"| {_fmt(r['kept_useful_share'])} | {r['unparseable_or_failed']} | {r['seconds']:.0f} |"
        )
    better = (results["vllm"]["useless_recall"] or 0) > (results["keyword"]["useless_recall"] or 0) and (
        results["vllm"]["useful_dropped"] or 0
    ) <= (results["keyword"]["useful_dropped"] or 0)
    lines += [
        "",
        "Verdict: "
        + (
            "the LLM judge finds more useless browses without dropping more useful ones: worth an arm."
            if better
            else "the LLM judge does not beat the keyword judge on both counts: no LLM-judge arm."
        ),
    ]
    text = "\n".join(lines) + "\n"
    Path(args.output).write_text(text)
    print(text)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
