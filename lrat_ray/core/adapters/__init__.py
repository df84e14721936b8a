"""Adapters from the trajectory formats agents write today to :class:`~lrat_ray.core.trajectory.Trajectory`.

Three formats are understood, chosen per record by :func:`detect_format` or forced by name:

``native``
    This package's own format (:mod:`lrat_ray.core.trajectory`): an object with ``id`` and ``steps``.

``browsecomp``
    BrowseComp-Plus run files, as written by the BrowseComp-Plus harness and the official LRAT code
    (one JSON object per task): ``query_id``, ``status``, ``tool_call_counts``, ``metadata``,
    optionally ``query``/``answer``, and ``result``, an ordered list of
    ``{"type": "reasoning"|"tool_call"|"output_text", "tool_name", "arguments", "output"}``.

``openai``
    OpenAI chat-completions messages (``{"messages": [...]}``): assistant messages with
    ``reasoning_content``/``content`` and ``tool_calls``, tool messages answering by ``tool_call_id``.

Real logs are untidy, so the adapters accept doc ids as ints or strings, ``arguments`` as a JSON
string or a dict, search results with or without scores, and list-valued search queries (the query
actually run is the one the search output names, else the first). Anything they cannot make sense
of raises :class:`~lrat_ray.infra.errors.RecordError` naming the field.

Modules: :mod:`.browsecomp` and :mod:`.openai_messages` (one per format), :mod:`.tool_calls`
(what both parse); this module detects the format and reads files.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from lrat_ray.core.adapters.browsecomp import from_browsecomp
from lrat_ray.core.adapters.openai_messages import from_openai_messages
from lrat_ray.core.adapters.tool_calls import normalize_doc_id, parse_document_output, parse_search_output
from lrat_ray.core.trajectory import Trajectory, trajectory_from_dict
from lrat_ray.infra import storage
from lrat_ray.infra.errors import RecordError

# One adapter per format (a decoded record in, a Trajectory out); "auto" detects the format per record.
ADAPTERS = {"native": trajectory_from_dict, "browsecomp": from_browsecomp, "openai": from_openai_messages}
FORMATS = ("auto", *ADAPTERS)


def detect_format(obj: Any) -> str:
    """Name the format of one decoded record, or raise ``unknown_format``."""
    if isinstance(obj, dict):
        if "steps" in obj:
            return "native"
        if "result" in obj and ("query_id" in obj or "tool_call_counts" in obj or "status" in obj):
            return "browsecomp"
        if "messages" in obj:
            return "openai"
    keys = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
    raise RecordError(
        "unknown_format",
        f"not a known trajectory format (keys: {keys}); expected 'steps' (native), "
        "'result' + 'query_id' (BrowseComp-Plus) or 'messages' (OpenAI)",
    )


def parse_trajectory(obj: Any, fmt: str = "auto") -> Trajectory:
    """Convert one decoded record in format ``fmt`` (or detected, for ``auto``) to a Trajectory."""
    if fmt == "auto":
        fmt = detect_format(obj)
    if not isinstance(obj, dict):
        raise RecordError("wrong_type", f"a trajectory must be a JSON object, got {type(obj).__name__}")
    if fmt not in ADAPTERS:
        raise ValueError(f"unknown trajectory format {fmt!r}; choose one of {FORMATS}")
    return ADAPTERS[fmt](obj)


def read_trajectories(
    uri: str, fmt: str = "auto", line_range: storage.LineRange | None = None
) -> Iterator[tuple[str | None, Trajectory | RecordError]]:
    """Every record of one file (or of a line range of a JSONL file) as ``(position, trajectory)``;
    a record that cannot be used comes as ``(position, RecordError)`` naming the file, so callers
    count it (or stop) instead of losing it."""
    records = storage.iter_records(uri, line_range)
    while True:
        try:
            position, record = next(records)
        except StopIteration:
            return
        except storage.READ_ERRORS as exc:  # a corrupt or unreadable file: counted, named, never a crash
            yield None, storage.unreadable(uri, exc)
            return
        try:
            if isinstance(record, RecordError):
                raise record
            yield position, parse_trajectory(record, fmt)
        except RecordError as exc:
            yield position, exc.located(uri, position)


__all__ = [
    "ADAPTERS",
    "FORMATS",
    "detect_format",
    "from_browsecomp",
    "from_openai_messages",
    "normalize_doc_id",
    "parse_document_output",
    "parse_search_output",
    "parse_trajectory",
    "read_trajectories",
]
