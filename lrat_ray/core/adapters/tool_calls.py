"""What both adapters parse: tool calls and their arguments, search outputs (JSON or the text
format BrowseComp-Plus writes), document outputs, answers and correctness labels; doc ids
normalised; anything unusable raised as a RecordError naming the field."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Sequence
from functools import partial
from typing import Any

from lrat_ray.core.trajectory import (
    ANSWER,
    BROWSE,
    SEARCH,
    LazyHits,
    SearchHit,
    Step,
)
from lrat_ray.infra.errors import RecordError

SEARCH_TOOLS = frozenset({"search"})
BROWSE_TOOLS = frozenset({"get_document", "visit", "browse", "open"})
_SEARCH_HEADER = re.compile(r"^A search for '(?P<query>.*)' found \d+ results?:[ \t]*$", re.MULTILINE)
_NO_RESULTS = re.compile(r"^No results found for '(?P<query>.*)'", re.MULTILINE)
_DOCID_LINE = re.compile(r"^DocID:", re.MULTILINE)
_DOCID_LINE_ID = re.compile(r"^DocID:(.*)", re.MULTILINE)
_DOCUMENT_HEADER = re.compile(r"^Document (?P<id>\S+?):\s*\n", re.DOTALL)
_DOCID_PREFIX = re.compile(r"^\s*docid:\s*", re.IGNORECASE)
_JSON_START = re.compile(r"\s*[\[{]")
_new_tuple = tuple.__new__


def _tool_step(name: Any, arguments: Any, output: Any, path: str, args_field: str) -> Step:
    args = _decode_arguments(arguments, f"{path}.{args_field}")
    if name in SEARCH_TOOLS:
        queries = _search_queries(args.get("query"), f"{path}.{args_field}.query")
        named_query, hits = parse_search_output(output, f"{path}.output")
        query = named_query if named_query is not None else queries[0]
        return Step(SEARCH, query=query, results=hits if isinstance(hits, LazyHits) else tuple(hits))
    if name in BROWSE_TOOLS:
        doc_id = _browse_doc_id(args, f"{path}.{args_field}")
        return Step(BROWSE, doc_id=doc_id, text=parse_document_output(output))
    if name is None:
        raise RecordError("missing_field", "is required", field=f"{path}.tool_name")
    raise RecordError(
        "unknown_step_kind",
        f"unknown tool {name!r} (search tools: {sorted(SEARCH_TOOLS)}, browse tools: {sorted(BROWSE_TOOLS)})",
        field=f"{path}.tool_name",
    )


def _decode_arguments(arguments: Any, path: str) -> dict:
    if isinstance(arguments, dict):
        return arguments
    if isinstance(arguments, str):
        try:
            decoded = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            raise RecordError("invalid_json", f"arguments are not valid JSON: {exc}", field=path) from None
        if isinstance(decoded, dict):
            return decoded
    if arguments is None:
        raise RecordError("missing_field", "is required", field=path)
    raise RecordError("wrong_type", f"expected an object or a JSON string of one, got {arguments!r:.80}", field=path)


def _search_queries(query: Any, path: str) -> list[str]:
    if isinstance(query, str):
        return [query]
    if isinstance(query, list) and query and all(isinstance(q, str) for q in query):
        return query
    if query is None:
        raise RecordError("missing_field", "a search needs a query", field=path)
    raise RecordError("wrong_type", f"expected a string or a non-empty list of strings, got {query!r:.80}", field=path)


def _browse_doc_id(args: dict, path: str) -> str:
    doc = next((args[k] for k in ("docid", "doc_id", "id") if args.get(k) is not None), None)
    if isinstance(doc, list):
        doc = doc[0] if doc else None
    if doc is None:
        raise RecordError("missing_field", "a browse needs a docid", field=f"{path}.docid")
    if isinstance(doc, bool) or not isinstance(doc, (str, int)):
        raise RecordError("wrong_type", f"expected a string or int doc id, got {doc!r:.80}", field=f"{path}.docid")
    return normalize_doc_id(doc)


def normalize_doc_id(doc: Any) -> str:
    """Doc ids as strings, without the ``DocID:`` prefix some agents copy from search output."""
    return _DOCID_PREFIX.sub("", str(doc)).strip()


def parse_search_output(output: Any, path: str = "output") -> tuple[str | None, Sequence[SearchHit]]:
    """Ranked hits of a search tool's output, and the query the output says was run (if it says).

    Understands both real forms: a JSON list of ``{"docid", "score", "snippet"|"text"}`` (also
    already decoded), and the text blocks of BrowseComp-Plus/LRAT search tools
    (``A search for '<q>' found N results:`` / ``## Web Results`` / ``DocID:<id>`` / ``[<title>]`` /
    snippet), whose titles and snippets are parsed when first read (:class:`LazyHits`). Empty,
    error and "No results" outputs give no hits.
    """
    if output is None:
        return None, []
    if isinstance(output, (list, dict)):
        return None, _json_hits(output, path)
    text = str(output)
    if _JSON_START.match(text):  # not text.strip(): that copies every logged search output
        try:
            decoded = json.loads(text)
        except json.JSONDecodeError:
            decoded = None  # text that merely starts with a bracket: read it as text blocks
        if decoded is not None:
            return None, _json_hits(decoded, path)
    return _text_hits(text)


def _json_hits(decoded: Any, path: str) -> list[SearchHit]:
    if isinstance(decoded, dict):
        decoded = decoded.get("results") or decoded.get("hits") or []
    hits = []
    for j, entry in enumerate(decoded):
        doc = (
            next((entry[k] for k in ("docid", "doc_id", "id") if entry.get(k) is not None), None)
            if isinstance(entry, dict)
            else None
        )
        if doc is None:
            raise RecordError("missing_field", "a search result needs a docid", field=f"{path}[{j}].docid")
        score = entry.get("score")
        hits.append(
            SearchHit(
                doc_id=normalize_doc_id(doc),
                title=entry.get("title"),
                snippet=entry.get("snippet", entry.get("text")),
                score=float(score) if isinstance(score, (int, float)) and not isinstance(score, bool) else None,
            )
        )
    return hits


def _text_hits(text: str) -> tuple[str | None, LazyHits]:
    first = _DOCID_LINE.search(text)
    header = text[: first.start()] if first else text
    named = _SEARCH_HEADER.search(header) or _NO_RESULTS.search(header)
    hits = LazyHits(partial(_text_hit_ids, text), partial(_text_hit_blocks, text))
    return (named.group("query") if named else None), hits


def _text_hit_ids(text: str) -> list[str]:
    return [doc.strip() for doc in _DOCID_LINE_ID.findall(text)]


def _text_hit_blocks(text: str) -> list[SearchHit]:
    return [_text_hit(block) for block in _DOCID_LINE.split(text)[1:]]


def _text_hit(block: str) -> SearchHit:
    """One ``DocID:<id>`` block: the id line, an optional ``[title]`` line, then the snippet."""
    id_line, _, body = block.partition("\n")
    title = None
    first, _, rest = body.partition("\n")
    if first.startswith("[") and first.endswith("]"):
        title, body = first[1:-1], rest
    # tuple.__new__ skips the NamedTuple's Python-level constructor: hundreds of thousands are made
    return _new_tuple(SearchHit, (id_line.strip(), title, body.strip() or None, None))


def parse_document_output(output: Any) -> str | None:
    """The document text of a browse output (``Document <id>:`` + text, a JSON/dict, or raw text)."""
    if output is None:
        return None
    if isinstance(output, dict):
        return _text_or_none(output.get("text"), "output.text")
    text = str(output)
    header = _DOCUMENT_HEADER.match(text)
    body = text[header.end() :] if header else text
    stripped = body.strip()
    if stripped[:1] == "{" and stripped[-1:] == "}":  # a cut-off dict is text: no decoder can read it
        decoded = _decode_mapping(stripped)
        if isinstance(decoded, dict) and isinstance(decoded.get("text"), str):
            return decoded["text"]
    return body


def _decode_mapping(text: str) -> Any:
    # Some harnesses print the document dict with Python's repr, not JSON; try both.
    for decode in (json.loads, ast.literal_eval):
        try:
            return decode(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            continue
    return None


def _flatten_text(value: Any, path: str) -> str:
    """Reasoning/answer text: a string, or a list of summary parts (strings or ``{"text": ...}``)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for part in value:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                raise RecordError("wrong_type", f"expected text parts, got {part!r:.80}", field=path)
        return "\n".join(parts)
    raise RecordError("wrong_type", f"expected text, got {type(value).__name__}", field=path)


def _text_or_none(value: Any, path: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise RecordError("wrong_type", f"expected a string, got {type(value).__name__}", field=path)


def _correctness(obj: dict) -> bool | None:
    for key in ("correct", "is_correct"):
        value = obj.get(key)
        if value is None:
            continue
        if not isinstance(value, bool):
            raise RecordError("wrong_type", f"expected true/false, got {value!r:.40}", field=key)
        return value
    return None


def _last_answer(steps: tuple[Step, ...]) -> str | None:
    answers = [s.text for s in steps if s.kind == ANSWER]
    return answers[-1] if answers else None
