"""Reading evaluation data sets: queries (BEIR JSONL or TSV), graded judgments (BEIR TSV or TREC
qrels) and reference answers, with errors that name the file and line."""

from __future__ import annotations

import json
from collections import defaultdict

from lrat_ray.infra import storage
from lrat_ray.infra.errors import RecordError

Qrels = dict[str, dict[str, int]]  # query id -> {doc id: grade}


def load_answers(path: str) -> dict[str, str]:
    """Query id -> gold answer where the queries file has one: a third TSV column, or ``answer``
    (top level or in ``metadata``) in BEIR JSONL. Queries without one are left out."""
    answers = {}
    for line in storage.read_bytes(path).decode("utf-8").split("\n"):
        if not line.strip():
            continue
        if path.endswith((".jsonl", ".json")):
            record = json.loads(line)
            qid = record.get("_id", record.get("id"))
            answer = record.get("answer") or (record.get("metadata") or {}).get("answer")
        else:
            parts = line.split("\t")
            qid, answer = parts[0], parts[2] if len(parts) > 2 else None
        if qid is not None and isinstance(answer, str) and answer.strip():
            answers[str(qid)] = answer.strip()
    return answers


def load_queries(path: str) -> dict[str, str]:
    """Query id -> text from BEIR JSONL or a TSV of ``id<TAB>text[<TAB>...]`` (no header)."""
    text = storage.read_bytes(path).decode("utf-8")
    queries = {}
    is_jsonl = path.endswith((".jsonl", ".json"))
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        if is_jsonl:
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RecordError("invalid_json", str(exc), source=path, record=f"line {lineno}") from None
            qid, qtext = record.get("_id", record.get("id")), record.get("text")
            field = "_id" if qid is None else "text"
        else:
            parts = line.split("\t")
            qid, qtext = parts[0], parts[1] if len(parts) > 1 else None
            field = "text"
        if qid is None or not qtext:
            raise RecordError(
                "missing_field", "a query needs an id and text", source=path, record=f"line {lineno}", field=field
            )
        queries[str(qid)] = qtext
    return queries


def load_qrels(path: str) -> Qrels:
    """Judgments from BEIR TSV (``query-id corpus-id score``, header optional) or TREC qrels
    (``qid Q0 docid grade``), whitespace- or tab-separated."""
    qrels: Qrels = defaultdict(dict)
    text = storage.read_bytes(path).decode("utf-8")
    for lineno, line in enumerate(text.split("\n"), start=1):
        parts = line.split()
        if not parts or (lineno == 1 and not parts[-1].lstrip("-").isdigit()):
            continue  # blank line or header
        if len(parts) == 4:
            qid, _, doc, grade = parts
        elif len(parts) == 3:
            qid, doc, grade = parts
        else:
            raise RecordError(
                "wrong_type", f"expected 3 or 4 columns, got {len(parts)}", source=path, record=f"line {lineno}"
            )
        try:
            qrels[qid][doc] = int(grade)
        except ValueError:
            raise RecordError(
                "wrong_type", f"grade {grade!r} is not an integer", source=path, record=f"line {lineno}", field="score"
            ) from None
    return dict(qrels)
