"""The flywheel's results: per-iteration metrics with bootstrap intervals over the held-out tasks,
written as ``results.csv``, ``results.md`` and ``results.png``."""

from __future__ import annotations

import csv
import io
import os

from lrat_ray.experiments.figures import pyplot, save_figure
from lrat_ray.infra import storage

INTERVAL_METRICS = ("success_rate", "evidence_recall", "avg_steps", "ndcg@10", "recall@100")
RESULT_COLUMNS = (
    "iteration",
    "model",
    *INTERVAL_METRICS,
    *(f"{m}_{end}" for m in INTERVAL_METRICS for end in ("lo", "hi")),
    "ndcg@10_p_vs_0",
    "train_pairs",
    "judged_relevant",
)


def intervals(per_task: dict, per_query: dict) -> dict:
    """95% bootstrap intervals over the held-out tasks of every reported metric."""
    from lrat_ray.core.metrics import bootstrap_interval

    values = {
        "success_rate": [None if r["correct"] is None else float(r["correct"]) for r in per_task.values()],
        "evidence_recall": [r.get("evidence_recall") for r in per_task.values()],
        "avg_steps": [r["steps"] for r in per_task.values()],
        "ndcg@10": [m["ndcg@10"] for m in per_query.values()],
        "recall@100": [m["recall@100"] for m in per_query.values()],
    }
    out = {}
    for name, series in values.items():
        interval = bootstrap_interval(series)
        out[f"{name}_lo"], out[f"{name}_hi"] = interval if interval else (None, None)
    return out


def write_results(output: str, rows: list[dict]) -> None:
    """results.csv, results.md and results.png (metrics per iteration)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RESULT_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    storage.write_bytes_atomic(os.path.join(output, "results.csv"), buffer.getvalue().encode())
    storage.write_bytes_atomic(os.path.join(output, "results.md"), results_table(rows).encode())
    _plot(output, rows)


def results_table(rows: list[dict]) -> str:
    def fmt(value):
        return "-" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))

    def cell(row, name):
        if name not in INTERVAL_METRICS or row.get(f"{name}_lo") is None:
            return fmt(row.get(name))
        return f"{fmt(row.get(name))} [{row[f'{name}_lo']:.3f}, {row[f'{name}_hi']:.3f}]"

    header = ("iteration", *INTERVAL_METRICS, "ndcg@10_p_vs_0", "train_pairs", "judged_relevant")
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    lines += ["| " + " | ".join(cell(row, h) for h in header) + " |" for row in rows]
    return (
        "\n".join(lines) + "\n\n[lo, hi]: 95% bootstrap interval over the held-out tasks (one run, one seed); "
        "ndcg@10_p_vs_0: paired t-test of per-task nDCG@10 against iteration 0.\n"
    )


def _plot(output: str, rows: list[dict]) -> None:
    plt = pyplot()
    iterations = [r["iteration"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, keys, title in (
        (axes[0], ("evidence_recall", "success_rate"), "held-out agent metrics"),
        (axes[1], ("avg_steps",), "steps per task"),
        (axes[2], ("ndcg@10", "recall@100"), "held-out IR metrics"),
    ):
        for key in keys:
            shown = [
                (i, r[key], r.get(f"{key}_lo"), r.get(f"{key}_hi"))
                for i, r in zip(iterations, rows)
                if r.get(key) is not None
            ]
            if not shown:
                continue
            xs, values, lows, highs = zip(*shown)
            errors = [
                [v - (lo if lo is not None else v) for v, lo in zip(values, lows)],
                [(hi if hi is not None else v) - v for v, hi in zip(values, highs)],
            ]
            ax.errorbar(xs, values, yerr=errors, marker="o", capsize=4, label=key)
        ax.set_xlabel("iteration")
        ax.set_title(f"{title}\n(95% bootstrap CI over tasks)", fontsize=9)
        ax.set_xticks(iterations)
        ax.legend()
    save_figure(fig, os.path.join(output, "results.png"), dpi=100)
