"""The mined-pairs table: the contract between mining, judging and training.

``lrat mine`` writes ``DIR/pairs/*.parquet`` with this Arrow schema (:data:`PAIR_SCHEMA`); later
stages and outside tools (pandas, duckdb) read it::

    trajectory_id     string        the trajectory the pair came from
    turn              int32         index (in the trajectory's steps) of the search giving the query
    browse_turn       int32         index of the browse that made the positive
    query             string        q_t
    positive_id       string        the browsed document d
    negative_ids      list<string>  unbrowsed candidates (see lrat_ray.core.mining for the two modes)
    reasoning         string        the agent's reasoning right after the browse
    reasoning_length  int32         its length l (tokens of the configured tokenizer, or characters)
    rank              int32         1-based rank of d in the search it was attributed to
    correct           bool?         whether the trajectory's final answer was correct (null: unknown)
    relevant          bool?         judge label (null: not judged yet)
    weight            float64       (1 - exp(-ln2 l / beta)) / mu_raw, mean 1 over the data
    positive_text     string?       the document text the agent was shown when browsing
    negative_texts    list<string?> the snippets the agent was shown for each negative
    source            string        the input file the trajectory was read from

``export_lrat_jsonl`` writes the official LRAT release schema (``query, pos, neg, pos_id, neg_id,
reasoning_len, satisfied, reweight_rate``), the input format of FlagEmbedding-based training.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping

import pyarrow as pa

from lrat_ray.core.mining import MinedPair
from lrat_ray.core.weighting import WeightParams

PAIR_SCHEMA = pa.schema(
    [
        ("trajectory_id", pa.string()),
        ("turn", pa.int32()),
        ("browse_turn", pa.int32()),
        ("query", pa.string()),
        ("positive_id", pa.string()),
        ("negative_ids", pa.list_(pa.string())),
        ("reasoning", pa.string()),
        ("reasoning_length", pa.int32()),
        ("rank", pa.int32()),
        ("correct", pa.bool_()),
        ("relevant", pa.bool_()),
        ("weight", pa.float64()),
        ("positive_text", pa.string()),
        ("negative_texts", pa.list_(pa.string())),
        ("source", pa.string()),
    ]
)
UNWEIGHTED_SCHEMA = PAIR_SCHEMA.remove(PAIR_SCHEMA.get_field_index("weight"))


def pairs_source(path: str) -> str:
    """The Parquet files of a mined-pairs input, given the way every stage accepts it: a stage
    directory (``lrat mine`` or ``lrat judge`` output), its ``pairs/`` folder or Parquet files."""
    from lrat_ray.infra import storage

    return storage.parquet_source(
        path, "pairs", "a lrat mine or judge output directory, its pairs/ folder or Parquet files"
    )


def pairs_to_table(pairs: Iterable[MinedPair], source: str) -> pa.Table:
    """Mined pairs as an Arrow table without the ``weight`` column (weights need global stats)."""
    rows = [
        {
            "trajectory_id": p.trajectory_id,
            "turn": p.turn,
            "browse_turn": p.browse_turn,
            "query": p.query,
            "positive_id": p.positive_id,
            "negative_ids": p.negative_ids,
            "reasoning": p.reasoning,
            "reasoning_length": p.reasoning_length,
            "rank": p.rank,
            "correct": p.correct,
            "relevant": p.relevant,
            "positive_text": p.positive_text,
            "negative_texts": p.negative_texts,
            "source": source,
        }
        for p in pairs
    ]
    return pa.Table.from_pylist(rows, schema=UNWEIGHTED_SCHEMA)


def add_weights(table: pa.Table, params: WeightParams) -> pa.Table:
    """The table with a ``weight`` column computed from ``reasoning_length``, in schema order."""
    weights = pa.array([params.weight(l) for l in table.column("reasoning_length").to_pylist()], type=pa.float64())
    table = table.append_column("weight", weights)
    return table.select(PAIR_SCHEMA.names).cast(PAIR_SCHEMA)


def to_lrat_record(pair: Mapping, texts: Mapping[str, str] | None = None) -> dict | None:
    """One pair in the official LRAT JSONL schema, or None when the positive has no text.

    Texts come from ``texts`` (a corpus: doc id -> text) when given, else from what the agent was
    shown (browse output for the positive, snippets for the negatives). Negatives without any
    text are left out, as the official builder leaves out documents missing from its corpus.
    """
    texts = texts or {}
    pos_text = texts.get(pair["positive_id"]) or pair.get("positive_text")
    if not pos_text:
        return None
    shown = dict(zip(pair["negative_ids"], pair.get("negative_texts") or []))
    neg_ids, neg_texts = [], []
    for doc in pair["negative_ids"]:
        text = texts.get(doc) or shown.get(doc)
        if text:
            neg_ids.append(doc)
            neg_texts.append(text)
    return {
        "query": pair["query"],
        "pos": [pos_text],
        "neg": neg_texts,
        "pos_id": [pair["positive_id"]],
        "neg_id": neg_ids,
        "reasoning_len": pair["reasoning_length"],
        "satisfied": pair["relevant"] is not False,
        "reweight_rate": pair["weight"],
    }


def iter_lrat_jsonl(
    rows: Iterable[Mapping], texts: Mapping[str, str] | None = None, counts: dict | None = None
) -> Iterator[str]:
    """JSONL lines for :func:`to_lrat_record`; ``counts`` tallies exported and skipped pairs."""
    counts = counts if counts is not None else {}
    for row in rows:
        record = to_lrat_record(row, texts)
        if record is None:
            counts["skipped_no_positive_text"] = counts.get("skipped_no_positive_text", 0) + 1
            continue
        counts["exported"] = counts.get("exported", 0) + 1
        counts["negatives_without_text"] = (
            counts.get("negatives_without_text", 0) + len(row["negative_ids"]) - len(record["neg_id"])
        )
        yield json.dumps(record, ensure_ascii=False)
