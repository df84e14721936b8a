"""Retrieval and agent-run metrics, pure functions over runs and judgments.

Rankings are scored with ``pytrec_eval`` (the reference trec_eval implementation): nDCG@10 uses
the grades as gains; Recall@k and MRR@10 count a document as relevant when its grade is at least
``rel_threshold``; evidence recall is Recall@k against the evidence documents. Agent runs are
scored as BrowseComp-Plus and the official LRAT scripts do (:func:`score_trajectories`). Paired
comparisons (t-test and a sign-flip permutation test) and task-level bootstrap intervals serve the
eval command and the experiments.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping

import numpy as np

from lrat_ray.core.datasets import Qrels
from lrat_ray.infra import storage
from lrat_ray.infra.errors import LratError

Run = dict[str, dict[str, float]]  # query id -> {doc id: score}


def score_run(run: Run, qrels: Qrels, ks: Iterable[int], rel_threshold: int = 1, evidence: Qrels | None = None) -> dict:
    """Aggregate and per-query metrics of ``run`` (qid -> {doc: score}) with pytrec_eval.

    Only queries that have judgments are scored (a query with no relevant document has no
    defined recall); a judged query missing from the run scores 0 on every metric.
    """
    import pytrec_eval

    ks = sorted(set(ks))
    judged = {q: d for q, d in qrels.items() if any(g >= rel_threshold for g in d.values())}
    if not judged:
        raise LratError(f"no query has a judgment with grade >= {rel_threshold}")
    full = {q: run.get(q, {}) for q in judged}
    per_query: dict[str, dict[str, float]] = {q: {} for q in judged}

    graded = pytrec_eval.RelevanceEvaluator(judged, {"ndcg_cut.10"})
    for q, values in graded.evaluate(full).items():
        per_query[q]["ndcg@10"] = values["ndcg_cut_10"]
    binary = pytrec_eval.RelevanceEvaluator(judged, {"recall." + ",".join(map(str, ks))}, relevance_level=rel_threshold)
    for q, values in binary.evaluate(full).items():
        for k in ks:
            per_query[q][f"recall@{k}"] = values[f"recall_{k}"]
    mrr = pytrec_eval.RelevanceEvaluator(judged, {"recip_rank"}, relevance_level=rel_threshold)
    for q, values in mrr.evaluate(truncate(full, 10)).items():
        per_query[q]["mrr@10"] = values["recip_rank"]
    if evidence:
        with_evidence = {q: d for q, d in evidence.items() if q in judged and d}
        ev = pytrec_eval.RelevanceEvaluator(with_evidence, {"recall." + ",".join(map(str, ks))})
        for q, values in ev.evaluate({q: full[q] for q in with_evidence}).items():
            for k in ks:
                per_query[q][f"evidence_recall@{k}"] = values[f"recall_{k}"]
    names = sorted({m for values in per_query.values() for m in values})
    aggregate = {m: float(np.mean([v[m] for v in per_query.values() if m in v])) for m in names}
    return {"queries": len(judged), "metrics": aggregate, "per_query": per_query}


def truncate(run: Run, depth: int) -> Run:
    return {q: dict(sorted(docs.items(), key=lambda kv: -kv[1])[:depth]) for q, docs in run.items()}


def write_trec_run(path: str, run: Run, tag: str) -> None:
    """Standard TREC run file: ``qid Q0 docid rank score tag``, ranks from 1, best first."""
    lines = []
    for qid in sorted(run):
        ranked = sorted(run[qid].items(), key=lambda kv: -kv[1])
        lines.extend(f"{qid} Q0 {doc} {rank} {score:.6f} {tag}" for rank, (doc, score) in enumerate(ranked, 1))
    storage.write_bytes_atomic(path, ("\n".join(lines) + "\n").encode())


def paired_comparison(
    a: Mapping[str, dict], b: Mapping[str, dict], metric: str, permutations: int = 10000, seed: int = 0
) -> dict:
    """Per-query wins/losses/ties of ``b`` over ``a`` on ``metric`` plus paired tests."""
    from scipy import stats

    qids = sorted(set(a) & set(b))
    x = np.array([a[q][metric] for q in qids])
    y = np.array([b[q][metric] for q in qids])
    diff = y - x
    t_p = float(stats.ttest_rel(y, x).pvalue) if np.any(diff != 0) else 1.0
    rng = random.Random(seed)
    observed = abs(diff.mean())
    extreme = (
        sum(
            abs(np.mean([d if rng.random() < 0.5 else -d for d in diff])) >= observed - 1e-12
            for _ in range(permutations)
        )
        if np.any(diff != 0)
        else permutations
    )
    return {
        "metric": metric,
        "queries": len(qids),
        "mean_a": float(x.mean()),
        "mean_b": float(y.mean()),
        "wins_b": int((diff > 0).sum()),
        "losses_b": int((diff < 0).sum()),
        "ties": int((diff == 0).sum()),
        "t_test_p": t_p if not math.isnan(t_p) else 1.0,
        "permutation_p": (extreme + 1) / (permutations + 1),
    }


def bootstrap_interval(
    values, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean over tasks (scipy.stats.bootstrap); None for fewer
    than two values. Over tasks, not seeds: it says how much the task sample alone could move the
    mean, not how much another run of the whole experiment would."""
    from scipy import stats

    values = np.asarray([v for v in values if v is not None], dtype=float)
    if len(values) < 2:
        return None
    if np.all(values == values[0]):
        return float(values[0]), float(values[0])
    result = stats.bootstrap(
        (values,),
        np.mean,
        confidence_level=confidence,
        n_resamples=resamples,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def score_trajectories(trajectories, evidence: Qrels, gold: Qrels | None = None) -> dict:
    """Agent-run metrics; ``trajectories`` is an iterable of Trajectory."""
    per_task = {}
    for traj in trajectories:
        retrieved = {h.doc_id for s in traj.steps for h in s.results} | {
            s.doc_id for s in traj.steps if s.kind == "browse"
        }
        row = {
            "searches": traj.count("search"),
            "browses": traj.count("browse"),
            "steps": traj.tool_calls,
            "correct": traj.correct,
        }
        ev = {d for d, g in evidence.get(traj.id, {}).items() if g > 0}
        if ev:
            row["evidence_recall"] = len(retrieved & ev) / len(ev)
        if gold:
            gd = {d for d, g in gold.get(traj.id, {}).items() if g > 0}
            if gd:
                row["gold_recall"] = len(retrieved & gd) / len(gd)
        per_task[traj.id] = row

    def mean(key):
        values = [r[key] for r in per_task.values() if r.get(key) is not None]
        return float(np.mean(values)) if values else None

    judged = [r["correct"] for r in per_task.values() if r["correct"] is not None]
    return {
        "tasks": len(per_task),
        "tasks_with_evidence": sum("evidence_recall" in r for r in per_task.values()),
        "evidence_recall": mean("evidence_recall"),
        "gold_recall": mean("gold_recall") if gold else None,
        "avg_steps": mean("steps"),
        "avg_searches": mean("searches"),
        "avg_browses": mean("browses"),
        "success_rate": float(np.mean(judged)) if judged else None,
        "tasks_judged": len(judged),
        "per_task": per_task,
    }
