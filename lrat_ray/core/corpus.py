"""Corpora: the documents a retriever searches.

Read from BEIR-style JSONL (``{"_id" or "docid", "title", "text"}`` per line) or Parquet with the
same columns. A document's searchable text is its title and text joined by a newline (the title
alone or the text alone when the other is empty), the convention of BEIR and sentence-transformers.
"""

from __future__ import annotations

from collections.abc import Iterator

from lrat_ray.infra import storage
from lrat_ray.infra.errors import RecordError


def document_text(record: dict) -> str:
    title = (record.get("title") or "").strip()
    text = (record.get("text") or "").strip()
    return "\n".join(part for part in (title, text) if part)


def iter_documents(files: list[str], strict: bool = False, skipped: dict | None = None) -> Iterator[tuple[str, dict]]:
    """``(doc_id, record)`` for every usable line; bad lines raise (strict) or are counted in
    ``skipped`` under their reason."""
    skipped = skipped if skipped is not None else {}
    for uri in storage.expand_inputs(files):
        yield from piece_documents(uri, strict, skipped)


def piece_documents(piece: str | dict, strict: bool, skipped: dict) -> Iterator[tuple[str, dict]]:
    """:func:`iter_documents` of one file, or of one piece of a large JSONL file
    (:func:`lrat_ray.infra.storage.line_pieces`)."""
    uri, line_range = (piece, None) if isinstance(piece, str) else (piece["uri"], tuple(piece["range"]))
    for position, record in storage.iter_records(uri, line_range):
        try:
            if isinstance(record, RecordError):
                raise record
            yield _checked(record), record
        except RecordError as exc:
            if strict:
                raise exc.located(uri, position) from None
            skipped[exc.reason] = skipped.get(exc.reason, 0) + 1


def _checked(record) -> str:
    if not isinstance(record, dict):
        raise RecordError("wrong_type", "a document must be a JSON object")
    doc_id = record.get("_id", record.get("docid", record.get("doc_id")))
    if doc_id is None or str(doc_id).strip() == "":
        raise RecordError("missing_field", "a document needs an id", field="_id")
    if not document_text(record):
        raise RecordError("missing_field", "a document needs a title or text", field="text")
    return str(doc_id)


def load_texts(files: list[str]) -> dict[str, str]:
    """doc id -> searchable text for every usable document of ``files``."""
    return {doc_id: document_text(record) for doc_id, record in iter_documents(files)}
