"""BrowseComp-Plus run files (``result``: reasoning / tool_call / output_text items) -> Trajectory."""

from __future__ import annotations

from typing import Any

from lrat_ray.core.adapters.tool_calls import (
    _correctness,
    _flatten_text,
    _last_answer,
    _text_or_none,
    _tool_step,
)
from lrat_ray.core.trajectory import (
    ANSWER,
    THINK,
    Step,
    Trajectory,
)
from lrat_ray.infra.errors import RecordError


def from_browsecomp(obj: dict) -> Trajectory:
    if obj.get("query_id") is None:
        raise RecordError("missing_field", "is required", field="query_id")
    items = obj.get("result")
    if items is None:
        raise RecordError("missing_field", "is required", field="result")
    if not isinstance(items, list):
        raise RecordError("wrong_type", f"expected a list, got {type(items).__name__}", field="result")
    if not items:
        raise RecordError("empty_trajectory", "the run has no steps", field="result")
    steps = tuple(_browsecomp_step(item, f"result[{i}]") for i, item in enumerate(items))
    metadata = {key: obj[key] for key in ("metadata", "status", "tool_call_counts") if key in obj}
    return Trajectory(
        id=str(obj["query_id"]),
        steps=steps,
        question=_text_or_none(obj.get("query"), "query"),
        gold_answer=_text_or_none(obj.get("answer"), "answer"),
        final_answer=_last_answer(steps),
        correct=_correctness(obj),
        metadata=metadata,
    )


def _browsecomp_step(item: Any, path: str) -> Step:
    if not isinstance(item, dict):
        raise RecordError("wrong_type", f"expected an object, got {type(item).__name__}", field=path)
    kind = item.get("type")
    if kind == "reasoning":
        return Step(THINK, text=_flatten_text(item.get("output"), f"{path}.output"))
    if kind == "output_text":
        return Step(ANSWER, text=_flatten_text(item.get("output"), f"{path}.output"))
    if kind == "tool_call":
        return _tool_step(
            item.get("tool_name"), item.get("arguments"), item.get("output"), path, args_field="arguments"
        )
    if kind is None:
        raise RecordError("missing_field", "is required", field=f"{path}.type")
    raise RecordError(
        "unknown_step_kind",
        f"unknown item type {kind!r} (expected reasoning, tool_call or output_text)",
        field=f"{path}.type",
    )
