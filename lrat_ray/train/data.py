"""Pairs -> training examples (query, positive, negatives, weight), and examples -> the texts of
one contrastive batch (the collation: each pair's group of positive + sampled in-set negatives)."""

from __future__ import annotations

import math
import random

from lrat_ray import storage
from lrat_ray.errors import LratError
from lrat_ray.loss import ablation_weights, sample_negatives
from lrat_ray.pairs import pairs_source
from lrat_ray.train.config import TrainConfig

EXAMPLE_COLUMNS = ("query", "positive", "negatives", "weight")


def load_examples(config: TrainConfig) -> list[dict]:
    """Training examples from the pairs, after the ablation's filter and weights."""
    import pyarrow.dataset as pads

    texts = None
    if config.corpus:
        from lrat_ray.corpus import load_texts

        texts = load_texts(config.corpus)
    rows: list[dict] = []
    for spec in config.pairs:
        if spec.endswith((".jsonl", ".json")) or spec.endswith(".jsonl.gz"):
            rows.extend(_official_rows(spec))
            continue
        fs, path = storage.resolve(pairs_source(spec))
        table = pads.dataset(path, filesystem=fs, format="parquet").to_table()
        missing = {"query", "positive_id", "negative_ids", "weight"} - set(table.column_names)
        if missing:
            raise LratError(f"{spec}: pairs lack column(s) {sorted(missing)}; expected lrat mine output")
        for row in table.to_pylist():
            rows.append({"query": row["query"], "positive_id": row["positive_id"],
                         "positive_text": row.get("positive_text"), "negative_ids": row["negative_ids"] or [],
                         "negative_texts": row.get("negative_texts") or [], "weight": row["weight"],
                         "relevant": row.get("relevant"), "source": spec, "snippets": True})
    if not rows:
        raise LratError(f"no pairs in {config.pairs}")
    for row in rows:
        weight = row["weight"]
        if weight is None or not math.isfinite(weight) or weight < 0:
            raise LratError(f"{row['source']}: pair for query {row['query']!r:.60} has weight {weight}; "
                            "weights must be finite and non-negative")
    weights, keep = ablation_weights([r["weight"] for r in rows], [r["relevant"] for r in rows], config.ablation)
    examples = [_example(row, float(weight), texts) for row, weight, kept in zip(rows, weights, keep) if kept]
    if not examples:
        raise LratError(f"every pair was filtered out by ablation {config.ablation!r}")
    return examples


def _example(row: dict, weight: float, texts: dict[str, str] | None) -> dict:
    """One example. Corpus texts when a corpus is given; else what the pairs carry, and for mined
    pairs (negatives are snippets) the positive is cut to the snippets' length, so the two have
    the same form and length is not a shortcut."""
    shown = dict(zip(row["negative_ids"], row["negative_texts"]))
    if texts is not None:
        positive = texts.get(row["positive_id"]) or row["positive_text"]
        negatives = [t for t in (texts.get(d) or shown.get(d) for d in row["negative_ids"]) if t]
    else:
        negatives = [t for t in (shown.get(d) for d in row["negative_ids"]) if t]
        positive = row["positive_text"]
        if positive and negatives and row.get("snippets"):
            positive = positive[:max(len(t) for t in negatives)]
    if not positive:
        raise LratError(f"{row['source']}: no text for positive {row['positive_id']!r}; pass --corpus")
    return {"query": row["query"], "positive": positive, "negatives": negatives, "weight": weight}


def _official_rows(path: str) -> list[dict]:
    rows = []
    for position, record in storage.iter_records(path):
        if isinstance(record, Exception):
            raise record
        missing = {"query", "pos", "neg"} - set(record)
        if missing:
            raise LratError(f"{path}:{position}: missing field(s) {sorted(missing)} of the LRAT JSONL schema")
        pos_ids = record.get("pos_id") or [f"{path}:{position}:pos"]
        neg_ids = record.get("neg_id") or [f"{path}:{position}:neg{i}" for i in range(len(record["neg"]))]
        rows.append({"query": record["query"], "positive_id": pos_ids[0], "positive_text": record["pos"][0],
                     "negative_ids": neg_ids, "negative_texts": record["neg"],
                     "weight": record.get("reweight_rate", 1.0), "relevant": record.get("satisfied"),
                     "source": path})
    return rows


def group_texts(batch: dict, group_size: int, rng: random.Random, with_replacement: bool
                ) -> tuple[list[str], list[str], list[bool], list[float]]:
    """Queries, documents (groups of positive + negatives), the document mask and the weights."""
    queries, documents, mask = [], [], []
    for query, positive, negatives in zip(batch["query"], batch["positive"], batch["negatives"]):
        queries.append(query)
        chosen = sample_negatives(list(negatives), group_size - 1, rng, with_replacement)
        documents.append(positive)
        mask.append(True)
        for doc in chosen:
            documents.append(doc if doc is not None else "")
            mask.append(doc is not None)
    return queries, documents, mask, [float(w) for w in batch["weight"]]
