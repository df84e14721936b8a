"""Tasks: a question, its gold answer and the relevance judgments the simulated agent reads."""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass


@dataclass
class Task:
    id: str
    question: str
    answer: str | None = None
    judgments: dict[str, int] = dataclasses.field(default_factory=dict)


def load_tasks(
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
    ids: list[str],
    answers: dict[str, str] | None = None,
    answer_with: str = "text",
    evidence_grade: int = 1,
) -> list[Task]:
    """Tasks with their judgments and gold answers: ``answers`` by id, or with ``answer_with='docid'``
    the ids of the task's evidence documents as alternatives (``"id1 | id2"``)."""

    def gold(q: str) -> str | None:
        if answer_with == "docid":
            evidence = sorted(d for d, g in qrels.get(q, {}).items() if g >= evidence_grade)
            return " | ".join(evidence) or None
        return (answers or {}).get(q)

    return [Task(id=q, question=queries[q], answer=gold(q), judgments=qrels.get(q, {})) for q in ids]


def split_task_ids(ids: list[str], held_out_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic split by query id into (training, held-out)."""
    ordered = sorted(ids)
    random.Random(seed).shuffle(ordered)
    cut = int(math.floor(len(ordered) * (1 - held_out_fraction)))
    return sorted(ordered[:cut]), sorted(ordered[cut:])
