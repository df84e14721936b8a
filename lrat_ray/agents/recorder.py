"""The run file being written: one BrowseComp-Plus run per task (``query_id``, ``query``,
``result`` = reasoning / tool_call / output_text items, ``tool_call_counts``, ``retrieved_docids``,
``status``, ``correct``), the format of the official LRAT trajectories, so ``lrat mine`` reads
agents' runs unchanged."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lrat_ray.agents.tasks import Task


class RunRecorder:
    """Builds one BrowseComp-Plus run file."""

    def __init__(self, task: Task, metadata: dict):
        self.task = task
        self.items: list[dict] = []
        self.counts = {"search": 0, "get_document": 0}
        self.retrieved: set[str] = set()
        self.metadata = metadata
        self.last_hits: list[str] | None = None

    def think(self, text: str) -> None:
        self.items.append({"type": "reasoning", "tool_name": None, "arguments": None, "output": text})

    def search(self, query: str, hits: list[dict]) -> None:
        self.last_hits = [h["docid"] for h in hits]
        self.counts["search"] += 1
        self.retrieved.update(h["docid"] for h in hits)
        output = json.dumps(
            [{"docid": h["docid"], "score": h["score"], "snippet": h["snippet"]} for h in hits], ensure_ascii=False
        )
        self.items.append(
            {
                "type": "tool_call",
                "tool_name": "search",
                "arguments": json.dumps({"query": query}, ensure_ascii=False),
                "output": output,
            }
        )

    def browse(self, doc_id: str, document: dict | None) -> None:
        self.counts["get_document"] += 1
        self.retrieved.add(doc_id)
        text = (
            json.dumps({"docid": doc_id, "text": doc_text(document)}, ensure_ascii=False)
            if document
            else f"[Document not found] docid={doc_id}"
        )
        self.items.append(
            {
                "type": "tool_call",
                "tool_name": "get_document",
                "arguments": json.dumps({"docid": doc_id}),
                "output": text,
            }
        )

    def answer(self, text: str, correct: bool | None) -> dict:
        self.items.append({"type": "output_text", "tool_name": None, "arguments": None, "output": text})
        return {
            "query_id": self.task.id,
            "query": self.task.question,
            "answer": self.task.answer,
            "status": "completed",
            "correct": correct,
            "tool_call_counts": self.counts,
            "retrieved_docids": sorted(self.retrieved),
            "metadata": self.metadata,
            "result": self.items,
        }


def doc_text(document: dict | None) -> str:
    from lrat_ray.core.corpus import document_text

    return document_text(document) if document else ""
