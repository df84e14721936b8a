"""Pairs -> training examples (query, positive, negatives, weight), and examples -> the texts of
one contrastive batch (the collation: each pair's group of positive + sampled in-set negatives)."""

from __future__ import annotations

import random

from lrat_ray.core.loss import ablation_weights, sample_negatives
from lrat_ray.core.pairs import pairs_source
from lrat_ray.infra import storage
from lrat_ray.infra.errors import LratError
from lrat_ray.stages.train.config import TrainConfig

EXAMPLE_COLUMNS = ("query", "positive", "negatives", "weight")


def load_examples(config: TrainConfig) -> list[dict]:
    """Training examples from the pairs, after the ablation's filter and weights."""
    import pyarrow.dataset as pads

    texts = None
    if config.corpus:
        from lrat_ray.core.corpus import load_texts

        texts = load_texts(config.corpus)
    rows: list[dict] = []
    for spec in config.pairs:
        if spec.endswith(OFFICIAL_SUFFIXES):
            rows.extend(_official_rows(spec))
            continue
        fs, path = storage.resolve(pairs_source(spec))
        table = pads.dataset(path, filesystem=fs, format="parquet").to_table()
        _check_columns(spec, table.column_names)
        _check_weights(spec, table.column("weight"), lambda row, t=table: t.column("query")[row].as_py())
        rows.extend(_pair_row(row, spec) for row in table.to_pylist())
    if not rows:
        raise LratError(f"no pairs in {config.pairs}")
    weights, keep = ablation_weights([r["weight"] for r in rows], [r["relevant"] for r in rows], config.ablation)
    examples = [_example(row, float(weight), texts) for row, weight, kept in zip(rows, weights, keep) if kept]
    if not examples:
        raise LratError(f"every pair was filtered out by ablation {config.ablation!r}")
    return examples


OFFICIAL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz")
PAIR_COLUMNS = ("query", "positive_id", "positive_text", "negative_ids", "negative_texts", "weight", "relevant")


def example_dataset(config: TrainConfig):
    """The training examples as a Ray Dataset streamed from the pairs' Parquet files: read, filtered
    and weighted by the ablation, joined with corpus texts and shuffled in Ray Data tasks and
    actors, so the driver never holds a pair's texts. Returns ``(dataset, count)``; the driver
    reads only the ``weight`` and ``relevant`` columns (for the count and the weights' mean over
    the kept pairs). Official LRAT JSONL inputs are small release files and go through
    :func:`load_examples`."""
    import ray.data

    if any(spec.endswith(OFFICIAL_SUFFIXES) for spec in config.pairs):
        examples = load_examples(config)
        random.Random(config.seed).shuffle(examples)
        return ray.data.from_items(examples), len(examples)
    sources = [(spec, *storage.resolve(pairs_source(spec))) for spec in config.pairs]
    kept, mean, columns = _pair_stats(sources, config.ablation)
    parts = [
        ray.data.read_parquet(path, filesystem=fs, columns=present, file_extensions=["parquet"]).map_batches(
            _ExampleMaker,
            fn_constructor_kwargs={
                "corpus": list(config.corpus),
                "ablation": config.ablation,
                "mean": mean,
                "source": spec,
            },
            batch_format="pyarrow",
            concurrency=1,
        )
        for (spec, fs, path), present in zip(sources, columns)
    ]
    dataset = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    return dataset.random_shuffle(seed=config.seed), kept


def _pair_stats(sources, ablation: str) -> tuple[int, float, list[list[str]]]:
    """How many pairs the ablation keeps, their weights' mean, and the pair columns each source
    has; weights are checked here, naming the file and the query of a bad one."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    count, total, rows, present = 0, 0.0, 0, []
    for spec, fs, path in sources:
        dataset = pads.dataset(path, filesystem=fs, format="parquet")
        present.append([c for c in PAIR_COLUMNS if c in dataset.schema.names])
        _check_columns(spec, dataset.schema.names)
        columns = ["weight", "relevant"] if "relevant" in dataset.schema.names else ["weight"]
        table = dataset.to_table(columns=columns)
        weight = table.column("weight")
        _check_weights(spec, weight, lambda row, d=dataset: d.to_table(columns=["query"]).column("query")[row].as_py())
        keep = _keep_mask(table.column("relevant") if "relevant" in columns else None, len(table), ablation)
        rows += len(table)
        count += pc.sum(keep).as_py() or 0
        total += pc.sum(pc.filter(weight, keep)).as_py() or 0.0
    if not rows:
        raise LratError(f"no pairs in {[spec for spec, _, _ in sources]}")
    if not count:
        raise LratError(f"every pair was filtered out by ablation {ablation!r}")
    return count, total / count, present


REQUIRED_COLUMNS = ("query", "positive_id", "negative_ids", "weight")


def _check_columns(spec: str, names) -> None:
    missing = set(REQUIRED_COLUMNS) - set(names)
    if missing:
        raise LratError(f"{spec}: pairs lack column(s) {sorted(missing)}; expected lrat mine output")


def _check_weights(spec: str, weight, query_at) -> None:
    """Every weight finite and non-negative, else an error naming the file and the pair's query
    (``query_at(row)``, read only then). The one check of pair weights, over an Arrow column."""
    import pyarrow.compute as pc

    bad = pc.or_kleene(
        pc.or_kleene(pc.is_null(weight), pc.is_nan(weight)), pc.or_kleene(pc.less(weight, 0), pc.is_inf(weight))
    )
    if pc.any(bad).as_py():
        row = pc.index(bad, True).as_py()
        raise LratError(
            f"{spec}: pair for query {query_at(row)!r:.60} has weight {weight[row].as_py()}; "
            "weights must be finite and non-negative"
        )


def _keep_mask(relevant, length: int, ablation: str):
    """The ablation's filter as an Arrow mask, for counting in the driver without Python objects
    per pair: the rule of :func:`lrat_ray.core.loss.ablation_weights`."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if ablation not in ("filter", "reweight") or relevant is None:
        return pa.array([True] * length)
    return pc.fill_null(pc.invert(pc.equal(relevant, False)), True)


class _ExampleMaker:
    """Ray Data actor: pairs -> examples (the ablation's filter and weights, texts from the corpus
    when one is given, loaded once per actor)."""

    def __init__(self, corpus: list[str], ablation: str, mean: float, source: str):
        from lrat_ray.core.corpus import load_texts

        self.texts = load_texts(corpus) if corpus else None
        self.ablation, self.mean, self.source = ablation, mean, source

    def __call__(self, table):
        import pyarrow as pa

        rows = [_pair_row(row, self.source) for row in table.to_pylist()]
        weights, keep = ablation_weights(
            [r["weight"] for r in rows], [r["relevant"] for r in rows], self.ablation, mean=self.mean
        )
        examples = [_example(row, float(weight), self.texts) for row, weight, kept in zip(rows, weights, keep) if kept]
        return pa.Table.from_pylist(
            examples,
            schema=pa.schema(
                [
                    ("query", pa.string()),
                    ("positive", pa.string()),
                    ("negatives", pa.list_(pa.string())),
                    ("weight", pa.float64()),
                ]
            ),
        )


def _pair_row(row: dict, source: str) -> dict:
    """A mined pair (a Parquet row) as the rows examples are built from."""
    return {
        "query": row["query"],
        "positive_id": row["positive_id"],
        "positive_text": row.get("positive_text"),
        "negative_ids": row["negative_ids"] or [],
        "negative_texts": row.get("negative_texts") or [],
        "weight": row["weight"],
        "relevant": row.get("relevant"),
        "source": source,
        "snippets": True,
    }


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
            positive = positive[: max(len(t) for t in negatives)]
    if not positive:
        raise LratError(f"{row['source']}: no text for positive {row['positive_id']!r}; pass --corpus")
    return {"query": row["query"], "positive": positive, "negatives": negatives, "weight": weight}


def _official_rows(path: str) -> list[dict]:
    import pyarrow as pa

    rows = []
    for position, record in storage.iter_records(path):
        if isinstance(record, Exception):
            raise record
        missing = {"query", "pos", "neg"} - set(record)
        if missing:
            raise LratError(f"{path}:{position}: missing field(s) {sorted(missing)} of the LRAT JSONL schema")
        pos_ids = record.get("pos_id") or [f"{path}:{position}:pos"]
        neg_ids = record.get("neg_id") or [f"{path}:{position}:neg{i}" for i in range(len(record["neg"]))]
        rows.append(
            {
                "query": record["query"],
                "positive_id": pos_ids[0],
                "positive_text": record["pos"][0],
                "negative_ids": neg_ids,
                "negative_texts": record["neg"],
                "weight": record.get("reweight_rate", 1.0),
                "relevant": record.get("satisfied"),
                "source": path,
            }
        )
    try:
        weights = pa.array([r["weight"] for r in rows], pa.float64())
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise LratError(f"{path}: reweight_rate must be a number ({exc})") from None
    _check_weights(path, weights, lambda row: rows[row]["query"])
    return rows


def group_texts(
    batch: dict, group_size: int, rng: random.Random, with_replacement: bool
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
