"""OpenAI chat messages (assistant tool calls, tool results, reasoning content) -> Trajectory."""

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


def from_openai_messages(obj: dict) -> Trajectory:
    messages = obj.get("messages")
    if messages is None:
        raise RecordError("missing_field", "is required", field="messages")
    if not isinstance(messages, list):
        raise RecordError("wrong_type", f"expected a list, got {type(messages).__name__}", field="messages")
    traj_id = next((obj[k] for k in ("id", "query_id", "trajectory_id") if obj.get(k) is not None), None)
    if traj_id is None:
        raise RecordError("missing_field", "an OpenAI-messages trajectory needs an id", field="id")
    tool_outputs = _tool_outputs(messages)
    steps: list[Step] = []
    question = _text_or_none(obj.get("question", obj.get("query")), "question")
    for i, message in enumerate(messages):
        path = f"messages[{i}]"
        if not isinstance(message, dict):
            raise RecordError("wrong_type", "a message must be an object", field=path)
        role = message.get("role")
        if role == "user" and question is None:
            question = _message_text(message.get("content"), f"{path}.content")
        if role == "assistant":
            steps.extend(_assistant_steps(message, tool_outputs, path))
        elif role not in ("system", "developer", "user", "tool"):
            raise RecordError("unknown_step_kind", f"unknown message role {role!r}", field=f"{path}.role")
    if not steps:
        raise RecordError("empty_trajectory", "no assistant steps", field="messages")
    return Trajectory(
        id=str(traj_id),
        steps=tuple(steps),
        question=question,
        gold_answer=_text_or_none(obj.get("gold_answer", obj.get("answer")), "gold_answer"),
        final_answer=_last_answer(tuple(steps)),
        correct=_correctness(obj),
        metadata=obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {},
    )


def _tool_outputs(messages: list) -> dict[str, Any]:
    return {
        str(m["tool_call_id"]): m.get("content")
        for m in messages
        if isinstance(m, dict) and m.get("role") == "tool" and "tool_call_id" in m
    }


def _assistant_steps(message: dict, tool_outputs: dict[str, Any], path: str) -> list[Step]:
    steps = []
    reasoning = _message_text(message.get("reasoning_content"), f"{path}.reasoning_content")
    content = _message_text(message.get("content"), f"{path}.content")
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise RecordError("wrong_type", "expected a list", field=f"{path}.tool_calls")
    # With tool calls, visible content is more thinking; without, it is the answer.
    thinking = "\n".join(t for t in (reasoning, content if calls else None) if t)
    if thinking:
        steps.append(Step(THINK, text=thinking))
    for j, call in enumerate(calls):
        call_path = f"{path}.tool_calls[{j}]"
        if not isinstance(call, dict):
            raise RecordError("wrong_type", "a tool call must be an object", field=call_path)
        function = call.get("function") if isinstance(call.get("function"), dict) else call
        output = tool_outputs.get(str(call.get("id")))
        steps.append(
            _tool_step(
                function.get("name"),
                function.get("arguments"),
                _message_text(output, f"{call_path}.output"),
                call_path,
                args_field="function.arguments",
            )
        )
    if not calls and content:
        steps.append(Step(ANSWER, text=content))
    return steps


def _message_text(content: Any, path: str) -> str | None:
    if content is None or isinstance(content, str):
        return content
    return _flatten_text(content, path)
