"""Retrieval evaluation: IR metrics of an index on judged queries, and agent-run metrics.

``lrat eval`` searches an index with every judged query and scores the ranking against graded
judgments (qrels) with ``pytrec_eval`` (the reference trec_eval implementation): nDCG@10 uses the
grades as gains; Recall@k and MRR@10 count a document as relevant when its grade is at least
``rel_threshold``. With ``evidence`` qrels it also reports the LRAT paper's evidence recall
(Recall@k against the evidence documents). ``compare`` evaluates a second index on the same
queries and reports per-query wins/losses and paired significance tests (t-test and a two-sided
sign-flip permutation test).

``lrat eval-runs`` scores agent trajectories the way BrowseComp-Plus and the official LRAT scripts
do: per task, evidence recall = |doc ids retrieved (in any search result or browse) ∩ evidence| /
|evidence|, averaged over the tasks that have evidence; average tool calls (search + browse) per
task; search and browse counts; success rate where trajectories carry a correctness label.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from lrat_ray.infra import storage
from lrat_ray.infra.config import checked, option
from lrat_ray.infra.errors import LratError, RecordError

log = logging.getLogger(__name__)

Qrels = dict[str, dict[str, int]]
Run = dict[str, dict[str, float]]
DEFAULT_KS = (1, 5, 10, 20, 100)


@dataclass
@checked
class EvalConfig:
    """Options of ``lrat eval``."""

    index: str = option(help="index directory built by `lrat index`", path=True)
    queries: str = option(help="queries: BEIR queries.jsonl ({_id, text}) or TSV (id<TAB>text)", path=True)
    qrels: str = option(help="judgments: BEIR TSV (query-id corpus-id score, with header) or TREC qrels", path=True)
    k: str = option("1,5,10,20,100", help="cut-offs for Recall@k, comma-separated")
    rel_threshold: int = option(1, help="minimum grade counted as relevant for recall and MRR")
    evidence: str | None = option(None, help="evidence qrels: adds evidence_recall@k", path=True)
    output: str | None = option(None, help="write metrics.json and run.trec here")
    compare: str | None = option(None, help="second index to compare against, on the same queries", path=True)
    model: str | None = option(None, help="encoder for queries (default: the index's own model)", path=True)
    batch_size: int = option(64, help="queries per forward pass", runtime=True)

    @property
    def cutoffs(self) -> list[int]:
        try:
            ks = sorted({int(x) for x in self.k.split(",") if x.strip()})
        except ValueError:
            raise LratError(f"--k must be comma-separated integers, got {self.k!r}") from None
        if not ks or ks[0] < 1:
            raise LratError(f"--k needs positive cut-offs, got {self.k!r}")
        return ks


# ---------------------------------------------------------------------------------------------
# Reading queries and judgments
# ---------------------------------------------------------------------------------------------

def load_answers(path: str) -> dict[str, str]:
    """Query id -> gold answer where the queries file has one: a third TSV column, or ``answer``
    (top level or in ``metadata``) in BEIR JSONL. Queries without one are left out."""
    answers = {}
    for line in storage.read_bytes(path).decode("utf-8").split("\n"):
        if not line.strip():
            continue
        if path.endswith((".jsonl", ".json")):
            record = json.loads(line)
            qid = record.get("_id", record.get("id"))
            answer = record.get("answer") or (record.get("metadata") or {}).get("answer")
        else:
            parts = line.split("\t")
            qid, answer = parts[0], parts[2] if len(parts) > 2 else None
        if qid is not None and isinstance(answer, str) and answer.strip():
            answers[str(qid)] = answer.strip()
    return answers


def load_queries(path: str) -> dict[str, str]:
    """Query id -> text from BEIR JSONL or a TSV of ``id<TAB>text[<TAB>...]`` (no header)."""
    text = storage.read_bytes(path).decode("utf-8")
    queries = {}
    is_jsonl = path.endswith((".jsonl", ".json"))
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        if is_jsonl:
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RecordError("invalid_json", str(exc), source=path, record=f"line {lineno}") from None
            qid, qtext = record.get("_id", record.get("id")), record.get("text")
            field = "_id" if qid is None else "text"
        else:
            parts = line.split("\t")
            qid, qtext = parts[0], parts[1] if len(parts) > 1 else None
            field = "text"
        if qid is None or not qtext:
            raise RecordError("missing_field", "a query needs an id and text", source=path,
                              record=f"line {lineno}", field=field)
        queries[str(qid)] = qtext
    return queries


def load_qrels(path: str) -> Qrels:
    """Judgments from BEIR TSV (``query-id corpus-id score``, header optional) or TREC qrels
    (``qid Q0 docid grade``), whitespace- or tab-separated."""
    qrels: Qrels = defaultdict(dict)
    text = storage.read_bytes(path).decode("utf-8")
    for lineno, line in enumerate(text.split("\n"), start=1):
        parts = line.split()
        if not parts or (lineno == 1 and not parts[-1].lstrip("-").isdigit()):
            continue  # blank line or header
        if len(parts) == 4:
            qid, _, doc, grade = parts
        elif len(parts) == 3:
            qid, doc, grade = parts
        else:
            raise RecordError("wrong_type", f"expected 3 or 4 columns, got {len(parts)}", source=path,
                              record=f"line {lineno}")
        try:
            qrels[qid][doc] = int(grade)
        except ValueError:
            raise RecordError("wrong_type", f"grade {grade!r} is not an integer", source=path,
                              record=f"line {lineno}", field="score") from None
    return dict(qrels)


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------

def score_run(run: Run, qrels: Qrels, ks: Iterable[int], rel_threshold: int = 1,
              evidence: Qrels | None = None) -> dict:
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
    binary = pytrec_eval.RelevanceEvaluator(judged, {"recall." + ",".join(map(str, ks))},
                                            relevance_level=rel_threshold)
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


def paired_comparison(a: Mapping[str, dict], b: Mapping[str, dict], metric: str,
                      permutations: int = 10000, seed: int = 0) -> dict:
    """Per-query wins/losses/ties of ``b`` over ``a`` on ``metric`` plus paired tests."""
    from scipy import stats

    qids = sorted(set(a) & set(b))
    x = np.array([a[q][metric] for q in qids])
    y = np.array([b[q][metric] for q in qids])
    diff = y - x
    t_p = float(stats.ttest_rel(y, x).pvalue) if np.any(diff != 0) else 1.0
    rng = random.Random(seed)
    observed = abs(diff.mean())
    extreme = sum(abs(np.mean([d if rng.random() < 0.5 else -d for d in diff])) >= observed - 1e-12
                  for _ in range(permutations)) if np.any(diff != 0) else permutations
    return {"metric": metric, "queries": len(qids), "mean_a": float(x.mean()), "mean_b": float(y.mean()),
            "wins_b": int((diff > 0).sum()), "losses_b": int((diff < 0).sum()), "ties": int((diff == 0).sum()),
            "t_test_p": t_p if not math.isnan(t_p) else 1.0,
            "permutation_p": (extreme + 1) / (permutations + 1)}


def bootstrap_interval(values, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
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
    result = stats.bootstrap((values,), np.mean, confidence_level=confidence, n_resamples=resamples,
                             method="percentile", rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


# ---------------------------------------------------------------------------------------------
# lrat eval
# ---------------------------------------------------------------------------------------------

def retrieve(index_dir: str, queries: dict[str, str], depth: int, model: str | None = None,
             batch_size: int = 64) -> Run:
    """Search ``index_dir`` with every query; the encoder is the index's own unless ``model``."""
    from lrat_ray.models.encoder import Encoder, spec_for
    from lrat_ray.stages.index import RetrievalIndex

    index = RetrievalIndex.load(index_dir)
    spec = index.spec if model is None else spec_for(model)
    index.check_encoder(spec)
    encoder = Encoder(spec, batch_size=batch_size)  # this machine's precision (see serving.load_query_encoder)
    qids = list(queries)
    hits = index.search(encoder.encode_queries([queries[q] for q in qids]), depth)
    return {q: dict(h) for q, h in zip(qids, hits)}


def run_eval(config: EvalConfig) -> dict:
    ks = config.cutoffs
    queries = load_queries(config.queries)
    qrels = load_qrels(config.qrels)
    evidence = load_qrels(config.evidence) if config.evidence else None
    judged = [q for q in qrels if q in queries]
    missing = sorted(set(qrels) - set(queries))
    if not judged:
        raise LratError(f"none of the {len(qrels)} judged queries in {config.qrels} is in {config.queries}")
    if missing:
        log.warning("%d of the %d judged queries in %s have no text in %s and are not scored (e.g. %s)",
                    len(missing), len(qrels), config.qrels, config.queries, ", ".join(missing[:3]))
    selected = {q: queries[q] for q in judged}
    depth = max(max(ks), 10)
    result = {"index": config.index, "config": dataclasses.asdict(config),
              "judged_queries_without_text": len(missing)}
    run_a = retrieve(config.index, selected, depth, config.model, config.batch_size)
    scored_a = score_run(run_a, {q: qrels[q] for q in judged}, ks, config.rel_threshold, evidence)
    result.update(scored_a)
    if config.compare:
        run_b = retrieve(config.compare, selected, depth, None, config.batch_size)
        scored_b = score_run(run_b, {q: qrels[q] for q in judged}, ks, config.rel_threshold, evidence)
        result["compare"] = {
            "index": config.compare, "metrics": scored_b["metrics"], "per_query": scored_b["per_query"],
            "tests": {m: paired_comparison(scored_a["per_query"], scored_b["per_query"], m)
                      for m in ("ndcg@10", f"recall@{max(ks)}", "mrr@10")},
        }
    if config.output:
        write_trec_run(storage.join(config.output, "run.trec"), run_a, "lrat")
        if config.compare:
            write_trec_run(storage.join(config.output, "run_compare.trec"), run_b, "lrat-compare")
        storage.write_json_atomic(storage.join(config.output, "metrics.json"), result)
    return result


# ---------------------------------------------------------------------------------------------
# lrat eval-runs
# ---------------------------------------------------------------------------------------------

@dataclass
@checked
class EvalRunsConfig:
    """Options of ``lrat eval-runs``."""

    runs: list[str] = option(help="agent trajectories: files, directories or globs (any supported format)",
                             path=True)
    evidence: str = option(help="evidence qrels (TREC: qid Q0 docid grade)", path=True)
    gold: str | None = option(None, help="gold-document qrels: adds gold recall", path=True)
    format: str = option("auto", choices=("auto", "native", "browsecomp", "openai"), help="trajectory format")
    output: str | None = option(None, help="write runs_metrics.json here")


def score_trajectories(trajectories, evidence: Qrels, gold: Qrels | None = None) -> dict:
    """Agent-run metrics; ``trajectories`` is an iterable of Trajectory."""
    per_task = {}
    for traj in trajectories:
        retrieved = {h.doc_id for s in traj.steps for h in s.results} | \
            {s.doc_id for s in traj.steps if s.kind == "browse"}
        row = {"searches": traj.count("search"), "browses": traj.count("browse"),
               "steps": traj.tool_calls, "correct": traj.correct}
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
    return {"tasks": len(per_task),
            "tasks_with_evidence": sum("evidence_recall" in r for r in per_task.values()),
            "evidence_recall": mean("evidence_recall"), "gold_recall": mean("gold_recall") if gold else None,
            "avg_steps": mean("steps"), "avg_searches": mean("searches"), "avg_browses": mean("browses"),
            "success_rate": float(np.mean(judged)) if judged else None, "tasks_judged": len(judged),
            "per_task": per_task}


def run_eval_runs(config: EvalRunsConfig) -> dict:
    from lrat_ray.core.adapters import read_trajectories

    trajectories, skipped = [], defaultdict(int)
    for uri in storage.expand_inputs(config.runs):
        for _, traj in read_trajectories(uri, config.format):
            if isinstance(traj, RecordError):
                skipped[traj.reason] += 1
            else:
                trajectories.append(traj)
    evidence = load_qrels(config.evidence)
    result = score_trajectories(trajectories, evidence, load_qrels(config.gold) if config.gold else None)
    result["records_skipped"] = dict(skipped)
    unjudged = sorted(t for t in result["per_task"] if t not in evidence)
    result["tasks_without_evidence_judgments"] = len(unjudged)
    if unjudged:
        log.warning("%d of the %d runs have ids with no evidence judgments in %s (e.g. run %s; judged ids look "
                    "like %s): they do not count in evidence recall", len(unjudged), len(result["per_task"]),
                    config.evidence, unjudged[0], ", ".join(sorted(evidence)[:2]) or "none")
    if config.output:
        storage.write_json_atomic(storage.join(config.output, "runs_metrics.json"), result)
    return result
