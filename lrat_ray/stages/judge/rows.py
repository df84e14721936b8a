"""The judge columns of a batch: prompts and cache keys added, answers (or the lack of one)
turned into labels, statuses and ``relevant`` under the failure policy, in the output schema."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa

from lrat_ray.stages.judge.backends import BACKENDS
from lrat_ray.stages.judge.prompts import judge_key, parse_label, render_prompt

if TYPE_CHECKING:
    from lrat_ray.stages.judge.config import JudgeConfig

JUDGE_FIELDS = [
    pa.field("judge_key", pa.string()),
    pa.field("relevant", pa.bool_()),
    pa.field("judge_label", pa.bool_()),
    pa.field("judge_status", pa.string()),
    pa.field("judge_raw", pa.string()),
    pa.field("judge_backend", pa.string()),
    pa.field("judge_model", pa.string()),
    pa.field("judge_prompt_version", pa.string()),
]


def _document(row: dict) -> str | None:
    return row.get("positive_text", row.get("document_text"))


def add_prompts(batch: pa.Table, config: JudgeConfig) -> pa.Table:
    """``judge_prompt`` and ``judge_key`` for each row (pairs or browse events)."""
    rows = batch.select(
        [c for c in ("query", "reasoning", "positive_text", "document_text") if c in batch.column_names]
    ).to_pylist()
    prompts = [render_prompt(config, r.get("reasoning"), r.get("query"), _document(r)) for r in rows]
    return batch.append_column("judge_prompt", pa.array(prompts, pa.string())).append_column(
        "judge_key", pa.array([judge_key(config, p) for p in prompts], pa.string())
    )


def output_schema(input_schema: pa.Schema) -> pa.Schema:
    """The input's columns (a stage's judge columns replaced), then ``judge_key`` and the judge columns."""
    replaced = {f.name for f in JUDGE_FIELDS}
    fields = [f for f in input_schema if f.name not in replaced]
    return pa.schema(fields + JUDGE_FIELDS)


def label_rows(
    batch: pa.Table,
    config: JudgeConfig,
    schema: pa.Schema,
    labels: list[bool | None],
    statuses: list[str],
    raws: list[str | None],
) -> pa.Table:
    """The rows with the judge columns, in ``schema`` (:func:`output_schema`); ``relevant``
    follows the label, else the failure policy."""
    fallback = config.on_failure == "relevant"
    n = batch.num_rows
    judged = {
        "relevant": [
            label if label is not None else (True if status == "not_judged" else fallback)
            for label, status in zip(labels, statuses)
        ],
        "judge_label": labels,
        "judge_status": statuses,
        "judge_raw": raws,
        "judge_backend": [config.backend] * n,
        "judge_model": [config.model_label] * n,
        "judge_prompt_version": [config.prompt_version] * n,
    }
    columns = []
    for field in schema:
        if field.name in judged:
            columns.append(pa.array(judged[field.name], field.type))
        elif field.name in batch.column_names:
            # Row-wise engines hand columns back re-inferred (int64, null-typed): restore the input's types.
            columns.append(batch.column(field.name).cast(field.type))
        else:
            columns.append(pa.nulls(n, field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def label_without_model(batch: pa.Table, config: JudgeConfig, schema: pa.Schema) -> pa.Table:
    """A backend that labels the reasoning itself (no model); a ``None`` label: not judged."""
    n = batch.num_rows
    labels = [BACKENDS[config.backend].label(r) for r in batch.column("reasoning").to_pylist()]
    statuses = ["ok" if label is not None else "not_judged" for label in labels]
    return label_rows(batch, config, schema, labels, statuses, [None] * n)


def label_answers(batch: pa.Table, config: JudgeConfig, schema: pa.Schema) -> pa.Table:
    """Parse ``judge_answer`` (or count ``judge_error``) of each row."""
    answers = batch.column("judge_answer").to_pylist()
    errors = batch.column("judge_error").to_pylist()
    labels, statuses, raws = [], [], []
    for answer, error in zip(answers, errors):
        if error:
            labels.append(None), statuses.append("failed"), raws.append(error)
            continue
        label = parse_label(answer, config.thinking)
        labels.append(label), statuses.append("ok" if label is not None else "unparseable"), raws.append(answer)
    return label_rows(batch, config, schema, labels, statuses, raws)


def label_cached(batch: pa.Table, config: JudgeConfig, schema: pa.Schema) -> pa.Table:
    n = batch.num_rows
    return label_rows(
        batch,
        config,
        schema,
        batch.column("cached_label").to_pylist(),
        ["cached"] * n,
        batch.column("cached_raw").to_pylist(),
    )
