"""The judge's prompts and answers, pure: the official rule, rendering a prompt, parsing a label,
the keyword stand-in and the cache key of a prompt."""

from __future__ import annotations

import hashlib
import json
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lrat_ray.stages.judge.config import JudgeConfig

LABELS = ("RELEVANT", "NOT_RELEVANT")

# The decision rule of the official LRAT judge (src/data_builder.py in Yuqi-Zhou/LRAT, Apache-2.0),
# verbatim; it sees nothing but the agent's analysis.
OFFICIAL_RULE = """You are an LLM judge. You will classify whether the AnalysisText suggests the browsing text is relevant or not relevant, using a bias aligned with typical browsing behavior: models often keep searching even when content is relevant, but they only say “not relevant” when it’s clearly off-topic.

Input
AnalysisText: another model’s analysis of a browsing page.
Decision rule (important)
Output NOT_RELEVANT only if the analysis contains a clear negative judgment of relevance (explicit or unmistakable), such as: “not relevant / irrelevant / unrelated / off-topic / doesn’t help / cannot answer / no useful info,” or it clearly concludes the content is about a different topic and provides no value for the task.
Otherwise output RELEVANT.
    - This includes cases where the analysis:
    - extracts useful facts/steps/details from the page,
    - says the page is partially helpful,
    - suggests using it as background/context,
    - recommends continuing to search for more sources (continuing search does not imply irrelevance).
Output (strict)
Return exactly one token:

RELEVANT
NOT_RELEVANT
"""  # noqa: E501 (the official prompt, verbatim)
PROMPTS = {
    "lrat-official": ("lrat-official-v1", OFFICIAL_RULE + "\nClassify this:\nAnalysisText:\n{reasoning}"),
    "query-document": (
        "lrat-judge-v2",
        OFFICIAL_RULE + "\nClassify this:\nTask query: {query}\nStart of the browsed page: {document}\n"
        "AnalysisText:\n{reasoning}",
    ),
}
NEGATIVE_PHRASES = (
    "not relevant",
    "irrelevant",
    "unrelated",
    "off-topic",
    "off topic",
    "doesn't help",
    "does not help",
    "not helpful",
    "no useful information",
    "no useful info",
    "cannot answer",
    "can't answer",
    "not useful",
    "nothing useful",
    "about something else",
    "different topic",
)


def render_prompt(
    config: JudgeConfig, reasoning: str | None, query: str | None = None, document: str | None = None
) -> str:
    template = PROMPTS[config.prompt][1]
    return template.format(
        reasoning=reasoning or "(the agent wrote nothing)",
        query=query or "",
        document=(document or "(not shown)")[: config.document_chars],
    )


def parse_label(answer: str | None, thinking: bool = False) -> bool | None:
    """``RELEVANT`` -> True, ``NOT_RELEVANT`` -> False, anything else -> None.

    Only the text after the last ``</think>`` counts; with ``thinking`` an answer without one
    (thinking cut off by the budget) is unparseable, and so is any answer with an unclosed
    ``<think>``. The verdict is the last label word, case-insensitive, so "NOT RELEVANT",
    "**RELEVANT**", ``{"label": "NOT_RELEVANT"}`` and "Answer: irrelevant" parse.
    """
    if not answer:
        return None
    closed = answer.rfind("</think>")
    if closed >= 0:
        answer = answer[closed + len("</think>") :]
    elif thinking or "<think>" in answer:
        return None
    text = answer.upper().replace("NOT RELEVANT", "NOT_RELEVANT").replace("IRRELEVANT", "NOT_RELEVANT")
    words = re.findall(r"NOT_RELEVANT|RELEVANT", text)
    return None if not words else words[-1] == "RELEVANT"


def keyword_label(reasoning: str | None) -> bool:
    text = (reasoning or "").lower().replace("’", "'")
    return not any(phrase in text for phrase in NEGATIVE_PHRASES)


def judge_key(config: JudgeConfig, prompt: str) -> str:
    """Cache key: everything that determines the answer."""
    parts = [
        config.prompt_version,
        config.model,
        config.guided,
        config.thinking,
        config.max_new_tokens,
        config.temperature,
        prompt,
    ]
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()[:32]
