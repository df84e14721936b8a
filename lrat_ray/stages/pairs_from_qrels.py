"""``lrat pairs-from-qrels``: training pairs from human relevance judgments, in the mined-pairs schema.

Before any agent has run, a retriever can still be trained on judged data. For every judged query
and every document judged relevant (grade >= ``rel_threshold``), one pair: positive = that
document; in-set negatives = the base retriever's top-ranked documents that are not judged
relevant (hard negatives, as agents would have seen them); weight 1. The output is
``DIR/pairs/part-0.parquet`` with the columns of :mod:`lrat_ray.core.pairs` (``reasoning`` empty,
``rank`` = the positive's rank in the base retriever's list or null) plus ``DIR/report.json`` (the
returned report, recorded by run_stage).
"""

import dataclasses
from dataclasses import dataclass

from lrat_ray.core.corpus import document_text
from lrat_ray.infra import storage
from lrat_ray.infra.config import checked, option
from lrat_ray.infra.errors import LratError


@dataclass
@checked
class PairsFromQrelsConfig:
    """Options of ``lrat pairs-from-qrels``."""

    index: str = option(help="index of the base retriever (its documents give the texts)", path=True)
    queries: str = option(help="queries: BEIR queries.jsonl or TSV", path=True)
    qrels: str = option(help="judgments: BEIR TSV or TREC qrels", path=True)
    output: str = option(help="output directory (pairs/ and report.json)")
    negative_count: int = option(
        20, old_names=("negatives",), help="hard negatives per pair, from the base retriever's top results"
    )
    depth: int = option(50, help="how deep to search for them")
    rel_threshold: int = option(1, help="minimum grade counted as relevant")


def run_pairs_from_qrels(config: PairsFromQrelsConfig) -> dict:
    import pyarrow as pa

    from lrat_ray.core.datasets import load_qrels, load_queries
    from lrat_ray.core.pairs import PAIR_SCHEMA
    from lrat_ray.stages.eval import retrieve
    from lrat_ray.stages.index import RetrievalIndex

    queries = load_queries(config.queries)
    qrels = load_qrels(config.qrels)
    judged = {q: {d for d, g in docs.items() if g >= config.rel_threshold} for q, docs in qrels.items()}
    judged = {q: docs for q, docs in judged.items() if docs and q in queries}
    if not judged:
        raise LratError(f"no query of {config.qrels} with a relevant judgment has text in {config.queries}")
    index = RetrievalIndex.load(config.index)
    run = retrieve(config.index, {q: queries[q] for q in judged}, config.depth)
    rows, missing_docs = [], 0
    for qid in sorted(judged):
        ranked = [d for d, _ in sorted(run[qid].items(), key=lambda kv: -kv[1])]
        negatives = [d for d in ranked if d not in qrels[qid] or qrels[qid][d] < config.rel_threshold]
        negatives = negatives[: config.negative_count]
        for positive in sorted(judged[qid]):
            doc = index.document(positive)
            if doc is None:
                missing_docs += 1
                continue
            rows.append(
                {
                    "trajectory_id": f"qrels:{qid}",
                    "turn": 0,
                    "browse_turn": 0,
                    "query": queries[qid],
                    "positive_id": positive,
                    "negative_ids": negatives,
                    "reasoning": "",
                    "reasoning_length": 0,
                    "rank": ranked.index(positive) + 1 if positive in ranked else None,
                    "correct": None,
                    "relevant": True,
                    "weight": 1.0,
                    "positive_text": document_text(doc),
                    "negative_texts": [document_text(index.document(d)) for d in negatives],
                    "source": config.qrels,
                }
            )
    table = pa.Table.from_pylist(rows, schema=PAIR_SCHEMA)
    storage.write_table_atomic(storage.join(config.output, "pairs", "part-0.parquet"), table)
    report = {
        "queries": len(judged),
        "pairs": len(rows),
        "positives_missing_from_index": missing_docs,
        "config": dataclasses.asdict(config),
        "index_model": index.manifest["model"],
    }
    return report
