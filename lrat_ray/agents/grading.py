"""Graded answers: was the agent's final answer right?

Two graders (``GraderConfig.kind``):

``exact``
    Normalised match for data with short answers (SQuAD-style normalisation: lower case, no
    punctuation, no articles, single spaces). A gold answer may list alternatives separated by
    ``" | "`` (aliases, or every evidence document id of a task); with ``contains`` (default) an
    answer is right when a normalised gold appears in it as whole words, so "The docid is 4983."
    matches gold ``4983``.
``llm``
    An LLM grader in the BrowseComp-Plus style: it reads the question, the response and the
    correct answer, extracts the response's final answer and says whether it matches, as JSON
    (``response_format`` JSON schema, so the verdict parses); any OpenAI-compatible endpoint,
    including the Ray Serve LLM next to the retriever. An unparseable verdict grades ``None``
    (unknown), never a silent ``False``.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass

from lrat_ray.infra.config import checked, option

GRADERS = ("none", "exact", "llm")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
GRADER_PROMPT = """Judge whether the response to the question is correct, using the correct answer as the only reference.

[question]: {question}

[response]: {response}

[correct_answer]: {gold}

First extract the final answer the response gives (or "None" if it gives none). Then decide: it is correct only if it means the same as the correct answer (small differences in wording or formatting are fine; a different or vaguer answer is not). Reply in JSON with the fields extracted_final_answer and correct ("yes" or "no")."""  # noqa: E501 (the prompt's lines as written)
VERDICT_SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "grade",
        "strict": True,
        "schema": {
            "type": "object",
            "additionalProperties": False,
            "required": ["extracted_final_answer", "correct"],
            "properties": {
                "extracted_final_answer": {"type": "string", "maxLength": 200},
                "correct": {"type": "string", "enum": ["yes", "no"]},
            },
        },
    },
}


@dataclass
@checked
class GraderConfig:
    """How final answers are graded (``grader:`` inside agent settings)."""

    kind: str = option("exact", choices=GRADERS, help="none, exact (normalised match) or llm")
    contains: bool = option(True, help="exact: a gold answer found as whole words in the answer counts")
    endpoint: str | None = option(None, help="llm: OpenAI-compatible base URL (default: the agent's)")
    model: str | None = option(None, help="llm: model name at the endpoint (default: the agent's)")
    api_key_env: str = option("OPENAI_API_KEY", help="llm: environment variable holding the API key")
    timeout_s: float = option(120.0, help="llm: timeout of one call")


def normalize(text: str) -> str:
    text = text.lower()
    text = "".join(" " if ch in string.punctuation else ch for ch in text)
    return " ".join(_ARTICLES.sub(" ", text).split())


def golds(gold: str) -> list[str]:
    return [g for g in (normalize(part) for part in gold.split(" | ")) if g]


def exact_match(answer: str | None, gold: str, contains: bool = True) -> bool:
    said = normalize(answer or "")
    if not said:
        return False
    return any(said == g or (contains and f" {g} " in f" {said} ") for g in golds(gold))


def parse_verdict(content: str | None) -> bool | None:
    """``correct`` of the grader's JSON (or of a ``correct: yes`` line in free text)."""
    if not content:
        return None
    try:
        value = json.loads(content).get("correct")
    except (ValueError, AttributeError):
        found = re.search(r"correct\W+(yes|no)\b", content, re.IGNORECASE)
        value = found.group(1) if found else None
    if not isinstance(value, str) or value.strip().lower() not in ("yes", "no"):
        return None
    return value.strip().lower() == "yes"


class Grader:
    """Grades final answers; ``endpoint``/``model`` fill in what the grader config leaves unset."""

    def __init__(self, config: GraderConfig, endpoint: str | None = None, model: str | None = None):
        self.config = config
        self.client = None
        if config.kind == "llm":
            from lrat_ray.infra.chat_client import ChatClient, ChatEndpoint

            self.client = ChatClient(
                ChatEndpoint(
                    config.endpoint or endpoint or "", config.model or model or "", config.api_key_env, config.timeout_s
                )
            )

    def grade(self, question: str, answer: str | None, gold: str | None) -> bool | None:
        if gold is None or self.config.kind == "none":
            return None
        if self.config.kind == "exact":
            return exact_match(answer, gold, self.config.contains)
        alternatives = " or ".join(part.strip() for part in gold.split(" | "))
        prompt = GRADER_PROMPT.format(question=question, response=answer or "(no answer)", gold=alternatives)
        message = self.client.chat_sync(
            [{"role": "user", "content": prompt}], temperature=0.0, max_tokens=256, response_format=VERDICT_SCHEMA
        )
        return parse_verdict(message.get("content"))
