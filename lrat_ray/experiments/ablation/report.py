"""The ablation's statistics and report: arm means with seed-level intervals, the pre-registered
comparisons (paired t over seeds, seed x claim bootstrap, Holm), the control's equivalence, the
A/A calibration, the share of the oracle's gain, and the Markdown table and plot."""

from __future__ import annotations

import math

import numpy as np

from lrat_ray.experiments.ablation.config import ARM_LABELS, ARMS, METRICS, PRIMARY, PRIMARY_METRIC
from lrat_ray.experiments.figures import pyplot, save_figure


def render_pilot(report: dict) -> str:
    lines = [
        f"Pilot (seed {report['seed']}, order seeds {report['order_seeds']}, {report['wall_seconds']:.0f} s): "
        f"nDCG@10 untrained {report['base']:.4f}, oracle - untrained {report['oracle_minus_untrained']:+.4f}, "
        f"naive - untrained {report['naive_minus_untrained']:+.4f}, oracle - naive "
        f"{report['oracle_minus_naive']:+.4f}, "
        f"LRAT - naive {report['lrat_minus_naive'][0]:+.4f} / {report['lrat_minus_naive'][1]:+.4f}, "
        f"A/A (naive, two order seeds) {report['aa_naive']:+.4f}; sd of the LRAT - naive difference "
        f"between order seeds {report['sd_of_difference']:.4f} (from 2 values: a rough estimate, and "
        "without the rollouts' share).",
        "",
        "| true effect (nDCG@10) | seeds for 80% power |",
        "|---:|---:|",
    ]
    for effect, n in report["seeds_needed_80"].items():
        lines.append(f"| {effect} | {n if n is not None else 'n/a (no spread seen)'} |")
    return "\n".join(lines) + "\n"


def mean_interval(values: list[float], confidence: float = 0.95) -> dict:
    """Mean and a t-interval (half-width) over independent runs (seeds)."""
    from scipy import stats

    values = [float(v) for v in values]
    mean = float(np.mean(values))
    if len(values) < 2:
        return {"mean": mean, "half_width": None, "n": len(values)}
    sem = float(np.std(values, ddof=1)) / math.sqrt(len(values))
    return {
        "mean": mean,
        "half_width": float(stats.t.ppf(0.5 + confidence / 2, len(values) - 1)) * sem,
        "n": len(values),
    }


def summarize(
    cells: dict[tuple[str, str], dict[int, dict]],
    base: dict,
    disjoint: list[str],
    seeds: list[int],
    margin: float = 0.005,
) -> dict:
    """Arm means with seed-level intervals (all held-out tasks and the disjoint ones), the
    pre-registered seed-level comparisons (paired t over seeds, seed x claim bootstrap, Holm over
    :data:`PRIMARY` on nDCG@10), the control's equivalence test, the A/A calibration, the share of
    the oracle's gain LRAT recovers, the effect detectable at 80% power, exploratory comparisons
    for the other arms and, labelled conditional, per-claim tests on seed-averaged scores."""
    from lrat_ray.core.metrics import paired_comparison
    from lrat_ray.experiments.ablation import stats as st

    qids = sorted(base)
    subsets = {"all": qids, "disjoint": sorted(disjoint)}
    rows = []
    for (variant, arm), by_seed in sorted(cells.items(), key=lambda kv: (kv[0][0], ARMS.index(kv[0][1]))):
        for subset, ids in subsets.items():
            row = {"agent": variant, "arm": arm, "subset": subset, "queries": len(ids), "seeds": sorted(by_seed)}
            for metric in METRICS:
                row[metric] = mean_interval([np.mean([by_seed[s][q][metric] for q in ids]) for s in sorted(by_seed)])
            rows.append(row)
    base_rows = [
        {"subset": subset, "queries": len(ids), **{m: float(np.mean([base[q][m] for q in ids])) for m in METRICS}}
        for subset, ids in subsets.items()
    ]

    def matrix(key, metric, seeds):  # [seeds, claims] of one arm
        return np.array([[cells[key][s][q][metric] for q in qids] for s in seeds])

    comparisons = []
    for label, variant, arm in PRIMARY + tuple(
        (f"{variant}: {ARM_LABELS[arm]} - naive", variant, arm)
        for variant, arm in sorted(cells)
        if arm not in ("naive", "oracle") and (variant, arm) not in {(v, a) for _, v, a in PRIMARY}
    ):
        if (variant, arm) not in cells or (variant, "naive") not in cells:
            continue
        common = sorted(set(cells[(variant, arm)]) & set(cells[(variant, "naive")]))
        entry = {
            "label": label,
            "agent": variant,
            "arm": arm,
            "seeds": common,
            "primary": any(label == p[0] for p in PRIMARY),
        }
        for metric in METRICS:
            naive, other = (matrix((variant, "naive"), metric, common), matrix((variant, arm), metric, common))
            entry[metric] = {
                **st.paired_seed_test(naive.mean(axis=1), other.mean(axis=1)),
                "bootstrap": st.bootstrap_interval(other - naive) if len(common) > 1 else None,
            }
        entry["per_claim_conditional"] = paired_comparison(
            _seed_average({s: cells[(variant, "naive")][s] for s in common}, qids),
            _seed_average({s: cells[(variant, arm)][s] for s in common}, qids),
            PRIMARY_METRIC,
        )
        comparisons.append(entry)
    primary = [c for c in comparisons if c["primary"]]
    adjusted = st.holm({c["label"]: c[PRIMARY_METRIC]["p"] for c in primary})
    for c in primary:
        c["holm_p"] = adjusted[c["label"]]
        c["detected"] = c["holm_p"] is not None and c["holm_p"] < 0.05
        sd = c[PRIMARY_METRIC]["sd"]
        c["min_detectable_effect_80"] = st.min_detectable_effect(sd, len(c["seeds"])) if sd else None
    extra = {}
    control = next((c for c in comparisons if c["label"] == "control: LRAT - naive"), None)
    if control:
        common = control["seeds"]
        diff = matrix(("control", "reweight"), PRIMARY_METRIC, common) - matrix(
            ("control", "naive"), PRIMARY_METRIC, common
        )
        extra["control_equivalence"] = st.equivalence_test(diff.mean(axis=1), margin)
    if ("informative", "naive") in cells and ("control", "naive") in cells:
        common = sorted(set(cells[("informative", "naive")]) & set(cells[("control", "naive")]))
        first = matrix(("informative", "naive"), PRIMARY_METRIC, common)
        second = matrix(("control", "naive"), PRIMARY_METRIC, common)
        extra["aa"] = {
            "label": "naive (control agent) - naive (informative agent)",
            **st.paired_seed_test(first.mean(axis=1), second.mean(axis=1)),
            "bootstrap": st.bootstrap_interval(second - first) if len(common) > 1 else None,
        }
    if all(k in cells for k in (("informative", "reweight"), ("informative", "oracle"), ("informative", "naive"))):
        common = sorted(
            set(cells[("informative", "reweight")])
            & set(cells[("informative", "oracle")])
            & set(cells[("informative", "naive")])
        )
        naive = matrix(("informative", "naive"), PRIMARY_METRIC, common)
        gain = matrix(("informative", "reweight"), PRIMARY_METRIC, common) - naive
        oracle = matrix(("informative", "oracle"), PRIMARY_METRIC, common) - naive
        extra["oracle_share"] = (
            st.bootstrap_interval(gain, denominator=oracle)
            if len(common) > 1
            else {"mean": float(gain.mean() / oracle.mean()) if oracle.mean() else None, "low": None, "high": None}
        )
    return {"rows": rows, "base": base_rows, "seeds": seeds, "comparisons": comparisons, **extra}


def _seed_average(by_seed: dict[int, dict], qids: list[str]) -> dict[str, dict]:
    return {q: {m: float(np.mean([by_seed[s][q][m] for s in by_seed])) for m in METRICS} for q in qids}


def render_markdown(report: dict) -> str:
    seeds = len(report["seeds"])
    lines = [
        f"Held-out scores: mean over {seeds} seeds ± 95% t-interval over seeds (the seed is the unit: "
        "rollouts, batch stream and dropout).",
        "",
    ]
    for subset in ("all", "disjoint"):
        base = next(b for b in report["base"] if b["subset"] == subset)
        title = (
            "all held-out tasks"
            if subset == "all"
            else "held-out tasks sharing no relevant document with any training task"
        )
        lines += [
            f"**{title}** ({base['queries']} tasks; untrained: nDCG@10 {base['ndcg@10']:.4f}, MRR@100 "
            f"{base['mrr@100']:.4f}, Recall@100 {base['recall@100']:.4f}, evidence recall "
            f"{base['evidence_recall']:.4f})",
            "",
            "| agent | arm | nDCG@10 | MRR@100 | Recall@100 | agent evidence recall |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for row in (r for r in report["rows"] if r["subset"] == subset):
            lines.append(
                f"| {row['agent']} | {ARM_LABELS[row['arm']]} | " + " | ".join(_fmt(row[m]) for m in METRICS) + " |"
            )
        lines.append("")
    lines += [
        "**Comparisons on nDCG@10, all held-out tasks** (Δ = arm - naive of the same agent, paired by seed; "
        "pre-registered: the first three, Holm-corrected together; the rest exploratory, uncorrected)",
        "",
        "| comparison | Δ | 95% CI (t over seeds) | 95% CI (seed x claim bootstrap) | p (t over seeds) | "
        "Holm p | detected | effect detectable at 80% power |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for c in report["comparisons"]:
        t, boot = c[PRIMARY_METRIC], c[PRIMARY_METRIC]["bootstrap"]
        lines.append(
            f"| {c['label']}{'' if c['primary'] else ' (exploratory)'} | {t['mean']:+.4f} | "
            f"{_interval(t['low'], t['high'])} | {_interval(boot and boot['low'], boot and boot['high'])} | "
            f"{_p(t['p'])} | {_p(c.get('holm_p'))} | "
            f"{'' if 'detected' not in c else ('yes' if c['detected'] else 'no')} | "
            f"{_num(c.get('min_detectable_effect_80'))} |"
        )
    lines.append("")
    if "control_equivalence" in report:
        eq = report["control_equivalence"]
        lines.append(
            f"Control equivalence (TOST over seeds, margin ±{eq['margin']}): p = {_p(eq['p'])} "
            f"({'equivalent' if eq['p'] is not None and eq['p'] < 0.05 else 'equivalence not shown'})."
        )
    if "aa" in report:
        aa = report["aa"]
        lines.append(
            f"A/A calibration ({aa['label']}; both naive arms train on browses made the same way): "
            f"{aa['mean']:+.4f}, 95% CI {_interval(aa['low'], aa['high'])}, p = {_p(aa['p'])}."
        )
    if "oracle_share" in report:
        share = report["oracle_share"]
        interval = (
            _interval(share["low"], share["high"])
            if share["low"] is not None
            else "unbounded (the oracle's own gain is not clear of zero across the resamples)"
        )
        lines.append(
            f"Share of the oracle's gain that LRAT recovers: {_num(share['mean'])}, 95% bootstrap CI {interval}."
        )
    lines += [
        "",
        "Secondary measures (Δ vs naive, mean over seeds, 95% CI over seeds):",
        "",
        "| comparison | " + " | ".join(METRICS) + " |",
        "|---|" + "---:|" * len(METRICS),
    ]
    for c in report["comparisons"]:
        lines.append(
            f"| {c['label']} | "
            + " | ".join(f"{c[m]['mean']:+.4f} {_interval(c[m]['low'], c[m]['high'])}" for m in METRICS)
            + " |"
        )
    lines += [
        "",
        "Per-claim tests, **conditional on the trained models** (scores averaged over seeds, paired by "
        "claim: training noise ignored, so these are not tests of the method):",
        "",
        "| comparison | wins / losses / ties | p (t) | p (perm.) |",
        "|---|---:|---:|---:|",
    ]
    for c in report["comparisons"]:
        pc = c["per_claim_conditional"]
        lines.append(
            f"| {c['label']} | {pc['wins_b']} / {pc['losses_b']} / {pc['ties']} | {_p(pc['t_test_p'])} | "
            f"{_p(pc['permutation_p'])} |"
        )
    lines += [
        "",
        "| seed/agent | pairs | useful share | judge kept | useful share of kept | mean w (useful) | "
        "mean w (useless) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, stats in report["pairs"].items():
        lines.append(
            f"| {key} | {stats['pairs']} | {_num(stats['useful_share'])} | {stats['judge_kept']} | "
            f"{_num(stats['judge_kept_useful_share'])} | {_num(stats['mean_weight_useful'])} | "
            f"{_num(stats['mean_weight_useless'])} |"
        )
    return "\n".join(lines) + "\n"


def _interval(low, high) -> str:
    return "-" if low is None or high is None else f"[{low:+.4f}, {high:+.4f}]"


def _p(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _fmt(cell: dict) -> str:
    if cell["half_width"] is None:
        return f"{cell['mean']:.4f}"
    return f"{cell['mean']:.4f} ± {cell['half_width']:.4f}"


def _num(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def plot(report: dict, path: str) -> None:
    """Left: nDCG@10 per arm (all held-out tasks) with seed-level 95% intervals, the untrained
    model as a line. Right: each comparison's Δ nDCG@10 vs naive with its seed-level interval
    (what the tests are about: the arms' own spread is mostly shared seed noise)."""
    fig, (left, right) = pyplot().subplots(1, 2, figsize=(12, 4.5))
    rows = [r for r in report["rows"] if r["subset"] == "all"]
    means = [r["ndcg@10"]["mean"] for r in rows]
    errors = [r["ndcg@10"]["half_width"] or 0.0 for r in rows]
    left.bar(
        range(len(rows)),
        means,
        yerr=errors,
        capsize=4,
        color=["tab:blue" if r["agent"] == "informative" else "tab:gray" for r in rows],
    )
    base = next(b for b in report["base"] if b["subset"] == "all")
    left.axhline(base["ndcg@10"], color="black", linestyle="--", linewidth=1, label="untrained")
    left.set_xticks(
        range(len(rows)), [f"{r['agent']}\n{ARM_LABELS[r['arm']]}" for r in rows], rotation=60, ha="right", fontsize=8
    )
    left.set_ylabel("nDCG@10 (mean ± 95% CI over seeds)")
    left.set_title(f"arms, {base['queries']} held-out tasks")
    left.legend(loc="lower right")
    low = min([m - e for m, e in zip(means, errors)] + [base["ndcg@10"]])
    high = max([m + e for m, e in zip(means, errors)] + [base["ndcg@10"]])
    left.set_ylim(low - 0.02, high + 0.02)
    comparisons = report.get("comparisons", [])
    deltas = [c["ndcg@10"]["mean"] for c in comparisons]
    lows = [c["ndcg@10"]["low"] if c["ndcg@10"]["low"] is not None else d for d, c in zip(deltas, comparisons)]
    highs = [c["ndcg@10"]["high"] if c["ndcg@10"]["high"] is not None else d for d, c in zip(deltas, comparisons)]
    bars = [[d - low for d, low in zip(deltas, lows)], [high - d for d, high in zip(deltas, highs)]]
    right.errorbar(deltas, range(len(comparisons)), xerr=bars, fmt="o", capsize=4)
    right.axvline(0, color="black", linewidth=1)
    if "control_equivalence" in report:
        margin = report["control_equivalence"]["margin"]
        right.axvspan(-margin, margin, color="tab:gray", alpha=0.15, label=f"±{margin} (equivalence margin)")
        right.legend(loc="lower right", fontsize=8)
    right.set_yticks(range(len(comparisons)), [c["label"] for c in comparisons], fontsize=8)
    right.invert_yaxis()
    right.set_xlabel("Δ nDCG@10 vs naive (mean, 95% CI over seeds)")
    right.set_title("paired comparisons")
    save_figure(fig, path, dpi=110)
