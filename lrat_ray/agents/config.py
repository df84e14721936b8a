"""``AgentConfig``: how the agents behave (the kinds: :mod:`lrat_ray.agents.kinds`)."""

from __future__ import annotations

from dataclasses import dataclass

from lrat_ray.agents.kinds import AGENT_KINDS
from lrat_ray.infra.config import checked, option


@dataclass
@checked
class AgentConfig:
    """How the agents behave (see the module docstring for the simulated agent's model)."""

    kind: str = option(
        "simulated",
        choices=tuple(AGENT_KINDS),
        help="simulated (browses from snippets; needs qrels), simulated-judged (browses from the "
        "judgments; the earlier agent, for comparison) or llm (needs an endpoint)",
    )
    k: int = option(10, help="results per search")
    max_turns: int = option(6, help="simulated: searches per task; llm: tool calls per task")
    position_bias: float = option(0.3, help="simulated: examine rank r with probability r ** -position_bias")
    browse_midpoint: float = option(
        0.4,
        help="simulated: share of the task's content words in a result's title "
        "and snippet at which an examined result is browsed with "
        "probability 0.5",
    )
    browse_slope: float = option(12.0, help="simulated: slope of the logistic browse probability in that share")
    p_browse_relevant: float = option(0.85, help="simulated-judged: browse an examined relevant document")
    p_browse_irrelevant: float = option(0.08, help="simulated-judged: browse an examined non-relevant document")
    reasoning_words_relevant: int = option(120, help="simulated: mean reasoning words after reading a useful document")
    reasoning_words_irrelevant: int = option(30, help="simulated: mean reasoning words after reading another one")
    p_state_irrelevant: float = option(0.7, help="simulated: dismiss a useless document explicitly in the reasoning")
    reasoning_signal: bool = option(
        True,
        help="simulated: reasoning reflects the document's usefulness (false: the "
        "control agent, whose reasoning style is drawn at random)",
    )
    control_p_useful_style: float = option(0.3, help="simulated control agent: chance of useful-looking reasoning")
    evidence_grade: int = option(1, help="simulated: minimum judgment grade of an evidence document")
    evidence_needed: int = option(1, help="simulated: evidence documents browsed before answering")
    p_correct_with_evidence: float = option(0.95, help="simulated: answer correctly after finding evidence")
    p_correct_without_evidence: float = option(0.05, help="simulated: answer correctly without evidence")
    seed: int = option(0, help="simulated: random seed (each task's stream is derived from it and the task id)")
    endpoint: str = option("http://127.0.0.1:8001/v1", help="llm: OpenAI-compatible base URL")
    model: str = option("", help="llm: model name at the endpoint")
    api_key_env: str = option("OPENAI_API_KEY", help="llm: environment variable holding the API key")
    timeout_s: float = option(120.0, help="timeout of one HTTP call")
    retries: int = option(3, help="llm: retries of a failed call (backoff; Retry-After honoured)")
    temperature: float = option(0.7, help="llm: sampling temperature")
    max_tokens: int = option(384, help="llm: tokens per turn (a bounded tool call needs ~100-300)")
    thought_chars: int = option(
        400,
        minimum=1,
        help="llm: the longest thought a tool call may carry (its JSON schema's maxLength): "
        "it bounds the tokens of every call, and is the reasoning LRAT weighs",
    )
    document_chars: int = option(2000, help="llm: characters of a document shown to the agent")
    task_prompt: str = option("{question}", help="llm: the user message; {question} is the task text")
    min_reads: int = option(
        1,
        help="llm: documents read before the answer tool is offered (a research agent "
        "reads before it answers; the last turn always answers)",
    )
    read_after_search: bool = option(
        True,
        help="llm: after a search the next call reads one of its results "
        "(small models otherwise search until the budget runs out)",
    )
    answer_with: str = option(
        "text",
        choices=("text", "docid"),
        help="gold answers: text (the task's answer) or docid (the ids of its evidence "
        "documents, for corpora whose tasks have no short answer, e.g. SciFact)",
    )
    grader: dict = option({}, help="GraderConfig fields: kind (none/exact/llm), contains, endpoint, model")

    def grader_config(self):
        from lrat_ray.agents.grading import GraderConfig

        return GraderConfig(**self.grader)
