"""``lrat eval`` and ``lrat eval-runs``: the metrics of :mod:`lrat_ray.core.metrics` as stages.

``lrat eval`` searches an index with every judged query and scores the ranking against graded
judgments (qrels). With ``evidence`` qrels it also reports the LRAT paper's evidence recall
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
import logging
from collections import defaultdict
from dataclasses import dataclass

from lrat_ray.core.datasets import load_qrels, load_queries
from lrat_ray.core.metrics import Run, paired_comparison, score_run, score_trajectories, write_trec_run
from lrat_ray.infra import storage
from lrat_ray.infra.config import checked, option
from lrat_ray.infra.errors import LratError, RecordError

log = logging.getLogger(__name__)

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
    output: str | None = option(None, help="write run.trec here, and report.json with the metrics")
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


def retrieve(
    index_dir: str, queries: dict[str, str], depth: int, model: str | None = None, batch_size: int = 64
) -> Run:
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
        log.warning(
            "%d of the %d judged queries in %s have no text in %s and are not scored (e.g. %s)",
            len(missing),
            len(qrels),
            config.qrels,
            config.queries,
            ", ".join(missing[:3]),
        )
    selected = {q: queries[q] for q in judged}
    depth = max(max(ks), 10)
    result = {"index": config.index, "config": dataclasses.asdict(config), "judged_queries_without_text": len(missing)}
    run_a = retrieve(config.index, selected, depth, config.model, config.batch_size)
    scored_a = score_run(run_a, {q: qrels[q] for q in judged}, ks, config.rel_threshold, evidence)
    result.update(scored_a)
    if config.compare:
        run_b = retrieve(config.compare, selected, depth, None, config.batch_size)
        scored_b = score_run(run_b, {q: qrels[q] for q in judged}, ks, config.rel_threshold, evidence)
        result["compare"] = {
            "index": config.compare,
            "metrics": scored_b["metrics"],
            "per_query": scored_b["per_query"],
            "tests": {
                m: paired_comparison(scored_a["per_query"], scored_b["per_query"], m)
                for m in ("ndcg@10", f"recall@{max(ks)}", "mrr@10")
            },
        }
    if config.output:
        write_trec_run(storage.join(config.output, "run.trec"), run_a, "lrat")
        if config.compare:
            write_trec_run(storage.join(config.output, "run_compare.trec"), run_b, "lrat-compare")
    return result


@dataclass
@checked
class EvalRunsConfig:
    """Options of ``lrat eval-runs``."""

    runs: list[str] = option(help="agent trajectories: files, directories or globs (any supported format)", path=True)
    evidence: str = option(help="evidence qrels (TREC: qid Q0 docid grade)", path=True)
    gold: str | None = option(None, help="gold-document qrels: adds gold recall", path=True)
    format: str = option("auto", choices=("auto", "native", "browsecomp", "openai"), help="trajectory format")
    output: str | None = option(None, help="write report.json with the metrics here")


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
        log.warning(
            "%d of the %d runs have ids with no evidence judgments in %s (e.g. run %s; judged ids look "
            "like %s): they do not count in evidence recall",
            len(unjudged),
            len(result["per_task"]),
            config.evidence,
            unjudged[0],
            ", ".join(sorted(evidence)[:2]) or "none",
        )
    return result
