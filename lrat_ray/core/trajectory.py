"""The trajectory: what a deep-research agent did on one task, in the order it did it.

An agent works in turns: it *thinks* (writes reasoning), *searches* (sends a query, gets back a ranked
list of candidate documents, usually with snippets), *browses* (opens one document and reads it in
full) and finally *answers*. LRAT (Zhou et al., "Learning to Retrieve from Agent Trajectories",
SIGIR 2026) mines retriever training data from exactly these logs, so every stage of this package
reads trajectories in the one format defined here.

Arrow schema (:data:`TRAJECTORY_SCHEMA`), one row per trajectory::

    id            string      unique id of this trajectory (BrowseComp-Plus: the query_id)
    question      string?     the task given to the agent
    gold_answer   string?     the reference answer, when the task has one
    final_answer  string?     what the agent answered (the text of its last ``answer`` step)
    correct       bool?       whether the final answer was judged correct; null = not judged
    metadata      string?     JSON object with whatever else the source recorded (model, searcher...)
    steps         list<struct>, in the order they happened:
        kind      string      "think" | "search" | "browse" | "answer"
        text      string?     think: the reasoning; browse: the document text shown; answer: the answer
        query     string?     search: the query that was run
        doc_id    string?     browse: the document opened
        results   list<struct{doc_id string, title string?, snippet string?, score double?}>?
                              search: the ranked candidates, best first

The same records are read and written as JSONL (one JSON object per line, keys as above) and Parquet.
Formats other agents write (BrowseComp-Plus run files, OpenAI chat messages) are converted by
:mod:`lrat_ray.core.adapters`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NamedTuple

import pyarrow as pa

from lrat_ray.infra.errors import RecordError

THINK, SEARCH, BROWSE, ANSWER = "think", "search", "browse", "answer"
STEP_KINDS = (THINK, SEARCH, BROWSE, ANSWER)


class SearchHit(NamedTuple):
    """One ranked candidate returned by a search (rank = position in ``Step.results`` + 1).

    A NamedTuple rather than a dataclass: searches return thousands of these per trajectory file,
    and tuples are several times cheaper to create."""

    doc_id: str
    title: str | None = None
    snippet: str | None = None
    score: float | None = None


class LazyHits(Sequence):
    """Ranked hits of a logged search output, parsed only when read: the ids when a browse is
    attributed or negatives are chosen, titles and snippets when a hit itself is read.

    Mining needs the ids of the searches a browse could come from and the snippets only of those a
    pair comes from; parsing every logged search output up front was a third of the miner's time.
    Behaves as the tuple of hits it stands for (equality, hashing, pickling)."""

    def __init__(self, parse_ids: Callable[[], list[str]], parse: Callable[[], Sequence[SearchHit]]):
        self._parse_ids: Callable[[], list[str]] | None = parse_ids
        self._ids: list[str] = []
        self._parse: Callable[[], Sequence[SearchHit]] | None = parse
        self._hits: tuple[SearchHit, ...] = ()

    @property
    def ids(self) -> list[str]:
        if self._parse_ids is not None:
            self._ids, self._parse_ids = self._parse_ids(), None
        return self._ids

    def _parsed(self) -> tuple[SearchHit, ...]:
        if self._parse is not None:
            self._hits, self._parse = tuple(self._parse()), None
        return self._hits

    def __getitem__(self, index):
        return self._parsed()[index]

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self):
        return iter(self._parsed())

    def __eq__(self, other) -> bool:
        return isinstance(other, (tuple, LazyHits)) and self._parsed() == tuple(other)

    def __hash__(self) -> int:
        return hash(self._parsed())

    def __repr__(self) -> str:
        return repr(self._parsed())

    def __reduce__(self):
        return tuple, (self._parsed(),)


@dataclass(frozen=True)
class Step:
    """One step of a trajectory; which fields are set depends on ``kind`` (see the module doc)."""

    kind: str
    text: str | None = None
    query: str | None = None
    doc_id: str | None = None
    results: Sequence[SearchHit] = ()  # a tuple, or LazyHits for outputs parsed on demand

    @cached_property
    def result_ids(self) -> list[str]:
        if isinstance(self.results, LazyHits):
            return self.results.ids
        return [hit.doc_id for hit in self.results]


@dataclass(frozen=True)
class Trajectory:
    """One agent run on one task. ``steps`` is ordered; see the module doc for field meanings."""

    id: str
    steps: tuple[Step, ...]
    question: str | None = None
    gold_answer: str | None = None
    final_answer: str | None = None
    correct: bool | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def count(self, kind: str) -> int:
        return sum(1 for step in self.steps if step.kind == kind)

    @property
    def tool_calls(self) -> int:
        """Searches plus browses: the "steps per task" of BrowseComp-Plus and the LRAT paper."""
        return self.count(SEARCH) + self.count(BROWSE)


HIT_TYPE = pa.struct(
    [
        ("doc_id", pa.string()),
        ("title", pa.string()),
        ("snippet", pa.string()),
        ("score", pa.float64()),
    ]
)
STEP_TYPE = pa.struct(
    [
        ("kind", pa.string()),
        ("text", pa.string()),
        ("query", pa.string()),
        ("doc_id", pa.string()),
        ("results", pa.list_(HIT_TYPE)),
    ]
)
TRAJECTORY_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("question", pa.string()),
        ("gold_answer", pa.string()),
        ("final_answer", pa.string()),
        ("correct", pa.bool_()),
        ("metadata", pa.string()),
        ("steps", pa.list_(STEP_TYPE)),
    ]
)


# ---------------------------------------------------------------------------------------------
# dict <-> Trajectory (the native JSON form)
# ---------------------------------------------------------------------------------------------


def trajectory_to_dict(traj: Trajectory) -> dict[str, Any]:
    """The native JSON form; ``metadata`` stays a dict here (it is a JSON string only in Arrow)."""
    return {
        "id": traj.id,
        "question": traj.question,
        "gold_answer": traj.gold_answer,
        "final_answer": traj.final_answer,
        "correct": traj.correct,
        "metadata": traj.metadata,
        "steps": [_step_to_dict(s) for s in traj.steps],
    }


def _step_to_dict(step: Step) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": step.kind}
    if step.text is not None:
        out["text"] = step.text
    if step.query is not None:
        out["query"] = step.query
    if step.doc_id is not None:
        out["doc_id"] = step.doc_id
    if step.kind == SEARCH:
        out["results"] = [
            {"doc_id": h.doc_id, "title": h.title, "snippet": h.snippet, "score": h.score} for h in step.results
        ]
    return out


def trajectory_from_dict(obj: Any) -> Trajectory:
    """Validate a native-format object and build a :class:`Trajectory`.

    Raises :class:`RecordError` naming the offending field (without file/line: the reader adds them).
    """
    if not isinstance(obj, dict):
        raise RecordError("wrong_type", f"a trajectory must be a JSON object, got {type(obj).__name__}")
    traj_id = _require(obj, "id", (str, int), "id")
    steps_raw = _require(obj, "steps", list, "steps")
    if not steps_raw:
        raise RecordError("empty_trajectory", "the trajectory has no steps", field="steps")
    metadata = obj.get("metadata") or {}
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata)
        except json.JSONDecodeError as exc:
            raise RecordError("invalid_json", f"metadata is not valid JSON: {exc}", field="metadata") from None
    if not isinstance(metadata, dict):
        raise RecordError("wrong_type", "must be an object", field="metadata")
    return Trajectory(
        id=str(traj_id),
        steps=tuple(_step_from_dict(s, f"steps[{i}]") for i, s in enumerate(steps_raw)),
        question=_optional(obj, "question", str, "question"),
        gold_answer=_optional(obj, "gold_answer", str, "gold_answer"),
        final_answer=_optional(obj, "final_answer", str, "final_answer"),
        correct=_optional(obj, "correct", bool, "correct"),
        metadata=metadata,
    )


def _step_from_dict(obj: Any, path: str) -> Step:
    if not isinstance(obj, dict):
        raise RecordError("wrong_type", f"a step must be an object, got {type(obj).__name__}", field=path)
    kind = _require(obj, "kind", str, f"{path}.kind")
    if kind not in STEP_KINDS:
        raise RecordError(
            "unknown_step_kind", f"unknown step kind {kind!r} (expected one of {STEP_KINDS})", field=f"{path}.kind"
        )
    if kind == SEARCH:
        query = _require(obj, "query", str, f"{path}.query")
        hits_raw = _optional(obj, "results", list, f"{path}.results") or []
        hits = tuple(_hit_from_dict(h, f"{path}.results[{j}]") for j, h in enumerate(hits_raw))
        return Step(SEARCH, query=query, results=hits, text=_optional(obj, "text", str, f"{path}.text"))
    if kind == BROWSE:
        doc_id = _require(obj, "doc_id", (str, int), f"{path}.doc_id")
        return Step(BROWSE, doc_id=str(doc_id), text=_optional(obj, "text", str, f"{path}.text"))
    return Step(kind, text=_optional(obj, "text", str, f"{path}.text") or "")


def _hit_from_dict(obj: Any, path: str) -> SearchHit:
    if not isinstance(obj, dict):
        raise RecordError("wrong_type", "a search result must be an object", field=path)
    score = _optional(obj, "score", (int, float), f"{path}.score")
    return SearchHit(
        doc_id=str(_require(obj, "doc_id", (str, int), f"{path}.doc_id")),
        title=_optional(obj, "title", str, f"{path}.title"),
        snippet=_optional(obj, "snippet", str, f"{path}.snippet"),
        score=None if score is None else float(score),
    )


def _require(obj: dict, key: str, types, path: str):
    if key not in obj or obj[key] is None:
        raise RecordError("missing_field", "is required", field=path)
    return _typed(obj[key], types, path)


def _optional(obj: dict, key: str, types, path: str):
    value = obj.get(key)
    return None if value is None else _typed(value, types, path)


def _typed(value, types, path: str):
    # bool is an int in Python; a boolean where a number or id is expected is still a type error.
    allowed = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool) and bool not in allowed:
        raise RecordError("wrong_type", f"expected {_names(allowed)}, got bool", field=path)
    if not isinstance(value, allowed):
        raise RecordError("wrong_type", f"expected {_names(allowed)}, got {type(value).__name__}", field=path)
    return value


def _names(types: tuple) -> str:
    return " or ".join(t.__name__ for t in types)


# ---------------------------------------------------------------------------------------------
# Arrow
# ---------------------------------------------------------------------------------------------


def to_arrow_row(traj: Trajectory) -> dict[str, Any]:
    row = trajectory_to_dict(traj)
    row["metadata"] = json.dumps(traj.metadata, ensure_ascii=False, sort_keys=True)
    row["steps"] = [
        {
            "kind": s.kind,
            "text": s.text,
            "query": s.query,
            "doc_id": s.doc_id,
            "results": [
                {"doc_id": h.doc_id, "title": h.title, "snippet": h.snippet, "score": h.score} for h in s.results
            ]
            if s.kind == SEARCH
            else None,
        }
        for s in traj.steps
    ]
    return row


def to_arrow_table(trajectories: Iterable[Trajectory]) -> pa.Table:
    return pa.Table.from_pylist([to_arrow_row(t) for t in trajectories], schema=TRAJECTORY_SCHEMA)


def iter_arrow_table(table: pa.Table) -> Iterator[dict[str, Any]]:
    """Rows of a trajectory table as native-format dicts (None-valued keys dropped)."""
    for row in table.to_pylist():
        steps = row.get("steps")
        if isinstance(steps, list):
            row["steps"] = [{k: v for k, v in s.items() if v is not None} if isinstance(s, dict) else s for s in steps]
        yield row
