"""Agent rollouts against the served retriever: the trajectories that feed the flywheel.

Agents talk to the retriever only through its HTTP API (``POST /search``, ``GET /documents/{id}``,
see :mod:`lrat_ray.serving.retriever`), as deployed agents do, and every rollout is written as a
BrowseComp-Plus run file (one JSON per task: ``query_id``, ``query``, ``result`` = reasoning /
tool_call / output_text items, ``tool_call_counts``, ``retrieved_docids``, ``status``,
``correct``), the format of the official LRAT trajectories, so ``lrat mine`` reads them unchanged.
Rollouts run in Ray actors (``workers`` of them, each a pool of agents working through its share
of the tasks).

Three agent kinds:

``llm``: a ReAct agent driven by any OpenAI-compatible chat endpoint (a vLLM or SGLang server, Ray
    Serve LLM, a hosted API) with function calling: tools ``search(query)``, ``get_document(docid)``
    and ``answer(answer)``, each with a ``thought``; the model's reasoning (``reasoning_content``) is
    kept, ``max_turns`` tool calls at most, and the final answer is graded (:mod:`lrat_ray.agents.grading`).

``simulated``: for machines without an LLM and for fleet-scale simulation. It works on a corpus
    with relevance judgments (qrels) and models what LRAT measured about real agents:

    * it searches with the task text first, then with reformulations (the task's words with a
      random subset dropped, plus a distinctive word from the best snippet seen so far);
    * it examines each of the top-``k`` candidates with probability ``rank ** -position_bias``
      (``position_bias`` 0.3 by default: weak, as the paper found agents' browsing to be);
    * it decides to browse an examined result **from what it can see**, its title and snippet: the
      chance rises logistically with the share of the task's content words they contain
      (``browse_midpoint`` 0.4, ``browse_slope`` 12). The judgments play no part, so it reads many
      documents that merely look relevant (on SciFact about three browses in four are of documents
      not judged relevant), as an agent choosing from snippets does;
    * after a browse it writes reasoning that reflects what the document holds (the judgments stand
      in for reading comprehension): a useful document gets a long note (``reasoning_words_relevant``,
      120 words on average) quoting its most task-like sentences; another a short one
      (``reasoning_words_irrelevant``, 30) that dismisses it, in varied words, with probability
      ``p_state_irrelevant`` (0.7). So the notes carry the usefulness signal LRAT's judge and
      weights read: in this simulation that is an assumption (an input), not something it finds;
    * with ``reasoning_signal: false`` (the **control agent**) the same browsing, but the note's
      style is drawn at random (useful-looking with probability ``control_p_useful_style``),
      whatever the document holds: the judge and the weights then carry no information;
    * it answers once it has browsed ``evidence_needed`` (1) evidence documents (judged grade >=
      ``evidence_grade``), correctly with probability ``p_correct_with_evidence`` (0.95), else
      after ``max_turns`` searches, correctly with probability ``p_correct_without_evidence``
      (0.05).

``simulated-judged``: the earlier agent, kept for comparison: it browses an examined document
    judged relevant with probability ``p_browse_relevant`` (0.85) and any other with
    ``p_browse_irrelevant`` (0.08), and its note's length follows the judgment.

    What it does not capture: real query writing (its reformulations are lexical), reading
    comprehension (relevance comes from the judgments, not from the text), multi-hop planning,
    and the way an LLM's interest drifts over a long trajectory. It is a stand-in that produces
    trajectories with the statistics of real ones, so the pipeline can be exercised end to end
    and the flywheel's effect on retrieval can be measured on real judgments.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import re
import time
from dataclasses import dataclass
from typing import Any

from lrat_ray.infra import storage
from lrat_ray.infra.chat_client import usage_rate
from lrat_ray.infra.config import ActorPool, checked, option

log = logging.getLogger(__name__)
AGENTS = ("simulated", "simulated-judged", "llm")
ACTOR_CPUS = 0.25  # an agent mostly waits on HTTP (retriever, LLM endpoint)
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9-]{3,}")
_STOP = frozenset("this that with from have were been their which there these those than into also more most "
                  "such only other some when what where while about after before between during over under "
                  "does doesn shows show study studies patients".split())


@dataclass
@checked
class AgentConfig:
    """How the agents behave (see the module docstring for the simulated agent's model)."""

    kind: str = option("simulated", choices=AGENTS,
                       help="simulated (browses from snippets; needs qrels), simulated-judged (browses from the "
                            "judgments; the earlier agent, for comparison) or llm (needs an endpoint)")
    k: int = option(10, help="results per search")
    max_turns: int = option(6, help="simulated: searches per task; llm: tool calls per task")
    position_bias: float = option(0.3, help="simulated: examine rank r with probability r ** -position_bias")
    browse_midpoint: float = option(0.4, help="simulated: share of the task's content words in a result's title "
                                              "and snippet at which an examined result is browsed with "
                                              "probability 0.5")
    browse_slope: float = option(12.0, help="simulated: slope of the logistic browse probability in that share")
    p_browse_relevant: float = option(0.85, help="simulated-judged: browse an examined relevant document")
    p_browse_irrelevant: float = option(0.08, help="simulated-judged: browse an examined non-relevant document")
    reasoning_words_relevant: int = option(120, help="simulated: mean reasoning words after reading a useful document")
    reasoning_words_irrelevant: int = option(30, help="simulated: mean reasoning words after reading another one")
    p_state_irrelevant: float = option(0.7, help="simulated: dismiss a useless document explicitly in the reasoning")
    reasoning_signal: bool = option(True, help="simulated: reasoning reflects the document's usefulness (false: the "
                                               "control agent, whose reasoning style is drawn at random)")
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
    thought_chars: int = option(400, minimum=1,
                                help="llm: the longest thought a tool call may carry (its JSON schema's maxLength): "
                                     "it bounds the tokens of every call, and is the reasoning LRAT weighs")
    document_chars: int = option(2000, help="llm: characters of a document shown to the agent")
    task_prompt: str = option("{question}", help="llm: the user message; {question} is the task text")
    min_reads: int = option(1, help="llm: documents read before the answer tool is offered (a research agent "
                                    "reads before it answers; the last turn always answers)")
    read_after_search: bool = option(True, help="llm: after a search the next call reads one of its results "
                                                "(small models otherwise search until the budget runs out)")
    answer_with: str = option("text", choices=("text", "docid"),
                              help="gold answers: text (the task's answer) or docid (the ids of its evidence "
                                   "documents, for corpora whose tasks have no short answer, e.g. SciFact)")
    grader: dict = option({}, help="GraderConfig fields: kind (none/exact/llm), contains, endpoint, model")

    def grader_config(self):
        from lrat_ray.agents.grading import GraderConfig

        return GraderConfig(**self.grader)


@dataclass(kw_only=True)
@checked
class RolloutConfig(ActorPool):
    """Options of ``lrat rollout`` (agent behaviour: the ``agent:`` YAML mapping, AgentConfig fields)."""

    url: str = option(help="base URL of the served retriever (lrat serve)", runtime=True)
    queries: str = option(help="task questions: BEIR queries.jsonl or TSV", path=True)
    output: str = option(help="directory for the run files, one JSON per task (local or URI; '{version}' is "
                              "replaced by the version key)")
    qrels: str | None = option(None, help="judgments (the simulated agent needs them)", path=True)
    limit: int | None = option(None, help="roll out only the first N tasks (by id)")
    cpus_per_worker: float = option(ACTOR_CPUS, minimum=0, runtime=True,
                                    help="CPUs each rollout actor reserves (agents mostly wait on HTTP)")
    token: str | None = option(None, help="bearer token of the retriever", runtime=True)
    agent_kind: str = option("simulated", choices=AGENTS, help="simulated or llm")
    agent_endpoint: str | None = option(None, help="llm: OpenAI-compatible base URL", runtime=True)
    agent_model: str | None = option(None, help="llm: model name")
    seed: int = option(0, help="simulated: random seed")
    agent: dict = option({}, help="AgentConfig fields (a YAML mapping, or JSON on the command line)")

    def agent_config(self) -> AgentConfig:
        flat = {"kind": self.agent_kind, "seed": self.seed, "endpoint": self.agent_endpoint, "model": self.agent_model}
        return AgentConfig(**{**{k: v for k, v in flat.items() if v is not None}, **self.agent})


@dataclass
class Task:
    id: str
    question: str
    answer: str | None = None
    judgments: dict[str, int] = dataclasses.field(default_factory=dict)


class RetrieverClient:
    """The two tools over the retriever's HTTP API. A busy retriever answers 503 (or 429) with
    ``Retry-After``; the client waits that long (with jitter) and asks again, up to ``retries``
    times, and counts the turn-aways in ``retried``."""

    def __init__(self, url: str, token: str | None = None, timeout_s: float = 120.0, retries: int = 20):
        import httpx

        from lrat_ray.infra.chat_client import bearer_headers

        self.http = httpx.Client(base_url=url, headers=bearer_headers(token), timeout=timeout_s)
        self.retries = retries
        self.retried = 0

    def _send(self, method: str, path: str, **kwargs):
        from lrat_ray.infra.chat_client import retry_delay

        for attempt in range(self.retries + 1):
            response = self.http.request(method, path, **kwargs)
            if response.status_code not in (429, 503) or attempt == self.retries:
                return response
            self.retried += 1
            time.sleep(retry_delay(attempt, response.headers.get("retry-after")))
        raise AssertionError("unreachable")

    def search(self, query: str, k: int) -> list[dict]:
        response = self._send("POST", "/search", json={"query": query[:2000] or "?", "k": k})
        response.raise_for_status()
        return response.json()["results"]

    def document(self, doc_id: str) -> dict | None:
        response = self._send("GET", f"/documents/{doc_id}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.json()

    def close(self) -> None:
        self.http.close()


class LocalRetriever:
    """The same two tools over a FAISS index and encoder in this process (no HTTP, no Serve), with
    the served API's result shape: for experiments that roll out many agents on one index
    (``lrat ablation``)."""

    def __init__(self, index, encoder, snippet_chars: int = 300):
        self.index, self.encoder, self.snippet_chars = index, encoder, snippet_chars

    def search(self, query: str, k: int) -> list[dict]:
        hits = self.index.search(self.encoder.encode_queries([query[:2000] or "?"]), k)[0]
        results = []
        for doc_id, score in hits:
            document = self.index.document(doc_id)
            results.append({"docid": doc_id, "score": score, "title": document.get("title"),
                            "snippet": (document.get("text") or "")[:self.snippet_chars]})
        return results

    def document(self, doc_id: str) -> dict | None:
        document = self.index.document(doc_id)
        return None if document is None else {"docid": doc_id, "title": document.get("title"),
                                              "text": document.get("text")}


# ---------------------------------------------------------------------------------------------
# The run file being written
# ---------------------------------------------------------------------------------------------

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
        output = json.dumps([{"docid": h["docid"], "score": h["score"], "snippet": h["snippet"]} for h in hits],
                            ensure_ascii=False)
        self.items.append({"type": "tool_call", "tool_name": "search",
                           "arguments": json.dumps({"query": query}, ensure_ascii=False), "output": output})

    def browse(self, doc_id: str, document: dict | None) -> None:
        self.counts["get_document"] += 1
        self.retrieved.add(doc_id)
        text = json.dumps({"docid": doc_id, "text": _doc_text(document)}, ensure_ascii=False) if document \
            else f"[Document not found] docid={doc_id}"
        self.items.append({"type": "tool_call", "tool_name": "get_document",
                           "arguments": json.dumps({"docid": doc_id}), "output": text})

    def answer(self, text: str, correct: bool | None) -> dict:
        self.items.append({"type": "output_text", "tool_name": None, "arguments": None, "output": text})
        return {"query_id": self.task.id, "query": self.task.question, "answer": self.task.answer,
                "status": "completed", "correct": correct, "tool_call_counts": self.counts,
                "retrieved_docids": sorted(self.retrieved), "metadata": self.metadata, "result": self.items}


def _doc_text(document: dict | None) -> str:
    from lrat_ray.core.corpus import document_text

    return document_text(document) if document else ""


# ---------------------------------------------------------------------------------------------
# The simulated agents
# ---------------------------------------------------------------------------------------------

def task_rng(seed: int, task_id: str) -> random.Random:
    return random.Random(f"{seed}:{task_id}")


def content_terms(text: str | None) -> set[str]:
    """Lower-cased content words (4+ letters, not stop words, a plural 's' dropped): what a reader
    matches between a task and a snippet."""
    return {w.lower().removesuffix("s") for w in _WORD.findall(text or "") if w.lower() not in _STOP}


def claim_overlap(question: str, snippet: str | None) -> float:
    """Share of the task's content words that the snippet contains (0..1)."""
    wanted = content_terms(question)
    return len(wanted & content_terms(snippet)) / len(wanted) if wanted else 0.0


def reformulate(question: str, snippet: str | None, rng: random.Random) -> str:
    words = question.split()
    kept = [w for w in words if rng.random() > 0.3] or words
    extra = [w for w in _WORD.findall(snippet or "") if w.lower() not in _STOP and w.lower() not in question.lower()]
    if extra:
        kept.append(rng.choice(extra[:12]))
    return " ".join(kept)


# Ways a reader sets a useless document aside. Only some use the words a keyword judge looks for
# (lrat_ray.stages.judge.NEGATIVE_PHRASES): a judge has to read, and a simple one misses the rest.
DISMISSALS = (
    "This document is not relevant to the claim.",
    "Irrelevant: the abstract is about a different topic.",
    "This does not help with the claim; moving on.",
    "Not useful here, the study answers another question.",
    "The abstract is unrelated to what the claim asserts.",
    "Nothing useful for the claim in this one.",
    "The population and outcome here differ from the claim's, so it cannot settle it.",
    "This reports a different mechanism; I still need direct evidence.",
    "Interesting, but it measures something else entirely.",
    "The paper concerns another condition, so I will look further.",
)
NEUTRAL_OPENINGS = ("The abstract describes:", "Reading the full text:", "Notes on this document:")
USEFUL_OPENINGS = ("This document addresses the claim directly. Key details:",
                   "The abstract bears on the claim; the relevant findings:",
                   "This is evidence for deciding the claim. It reports:")


def _length(mean: int, rng: random.Random) -> int:
    return max(3, int(rng.gauss(mean, mean * 0.25)))


def _quote(doc_text: str, question: str, words: int, rng: random.Random) -> list[str]:
    """About ``words`` words of the document, the sentences sharing most terms with the task first."""
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", doc_text) if s.strip()]
    wanted = content_terms(question)
    ranked = sorted(sentences, key=lambda s: (-len(wanted & content_terms(s)), rng.random()))
    out: list[str] = []
    for sentence in ranked:
        if len(out) >= words:
            break
        out.extend(sentence.split())
    return out[:words]


def _reasoning_judged(doc_text: str, relevant: bool, config: AgentConfig, rng: random.Random) -> str:
    """The ``simulated-judged`` agent's reasoning: fixed wording, length set by the judgment."""
    mean = config.reasoning_words_relevant if relevant else config.reasoning_words_irrelevant
    target = _length(mean, rng)
    doc_words = doc_text.split()
    if relevant:
        opening = "This document addresses the claim directly. Key details:"
    elif rng.random() < config.p_state_irrelevant:
        opening = "This document is not relevant to the claim; it is about a different topic."
    else:
        opening = "Skimming this document for anything that bears on the claim:"
    words = opening.split()
    start = rng.randrange(max(1, len(doc_words) - target)) if doc_words else 0
    words += doc_words[start:start + max(0, target - len(words))]
    return " ".join(words[:max(target, len(opening.split()))])


def _reasoning_read(question: str, doc_text: str, useful: bool, config: AgentConfig, rng: random.Random) -> str:
    """The ``simulated`` agent's reasoning after reading a document it chose from its snippet.

    With ``reasoning_signal`` the reasoning reflects what the document holds: a useful one gets a
    long note quoting its most claim-like sentences, a useless one a short note that dismisses it
    (in varied words) with probability ``p_state_irrelevant``. Without it (the control agent) the
    style is drawn at random, useful-looking with probability ``control_p_useful_style``, whatever
    the document holds."""
    looks_useful = useful if config.reasoning_signal else rng.random() < config.control_p_useful_style
    if looks_useful:
        target = _length(config.reasoning_words_relevant, rng)
        opening = rng.choice(USEFUL_OPENINGS).split()
    else:
        target = _length(config.reasoning_words_irrelevant, rng)
        dismiss = rng.random() < config.p_state_irrelevant
        opening = (rng.choice(DISMISSALS) if dismiss else rng.choice(NEUTRAL_OPENINGS)).split()
    return " ".join(opening + _quote(doc_text, question, max(0, target - len(opening)), rng))


def run_simulated(task: Task, client: RetrieverClient, config: AgentConfig) -> dict:
    """One task with a simulated agent (``simulated`` or ``simulated-judged``, see the module doc)."""
    rng = task_rng(config.seed, task.id)
    recorder = RunRecorder(task, {"agent": config.kind, **dataclasses.asdict(config)})
    evidence = {d for d, g in task.judgments.items() if g >= config.evidence_grade}
    useful = {d for d, g in task.judgments.items() if g > 0}
    reads_snippets = config.kind == "simulated"
    browsed: set[str] = set()
    found = 0
    best_snippet = None
    recorder.think(f"I need evidence about: {task.question}. I will search for it.")
    for turn in range(config.max_turns):
        query = task.question if turn == 0 else reformulate(task.question, best_snippet, rng)
        hits = client.search(query, config.k)
        recorder.search(query, hits)
        best_snippet = hits[0]["snippet"] if hits else best_snippet
        recorder.think(f"The search returned {len(hits)} results; looking at the promising ones.")
        for rank, hit in enumerate(hits, start=1):
            if hit["docid"] in browsed or rng.random() > rank ** -config.position_bias:
                continue
            is_useful = hit["docid"] in useful
            if rng.random() > _browse_probability(task.question, hit, is_useful, reads_snippets, config):
                continue
            document = client.document(hit["docid"])
            recorder.browse(hit["docid"], document)
            browsed.add(hit["docid"])
            text = _doc_text(document)
            recorder.think(_reasoning_read(task.question, text, is_useful, config, rng) if reads_snippets
                           else _reasoning_judged(text, is_useful, config, rng))
            found += hit["docid"] in evidence
            if found >= config.evidence_needed:
                correct = rng.random() < config.p_correct_with_evidence
                return recorder.answer("Answer supported by the documents read.", correct)
    correct = rng.random() < config.p_correct_without_evidence
    return recorder.answer("Best guess without supporting evidence.", correct)


def _browse_probability(question: str, hit: dict, is_useful: bool, reads_snippets: bool,
                        config: AgentConfig) -> float:
    if not reads_snippets:  # simulated-judged: the judgments decide
        return config.p_browse_relevant if is_useful else config.p_browse_irrelevant
    overlap = claim_overlap(question, f"{hit.get('title') or ''} {hit.get('snippet') or ''}")
    return 1.0 / (1.0 + math.exp(-config.browse_slope * (overlap - config.browse_midpoint)))


# ---------------------------------------------------------------------------------------------
# The LLM ReAct agent
# ---------------------------------------------------------------------------------------------

def _tool(name: str, description: str, argument: str, argument_help: str, max_length: int,
          choices: list[str] | None = None, thought_chars: int = 400) -> dict:
    # Every tool also takes the agent's thought, so the reasoning written after reading a document
    # (what LRAT weighs and judges) exists even for models that write no free text around a call.
    # maxLength bounds each string: small models otherwise loop inside an argument until max_tokens.
    value = {"type": "string", "enum": choices} if choices else {"type": "string", "maxLength": max_length}
    return {"type": "function", "function": {
        "name": name, "description": description, "strict": True,
        "parameters": {"type": "object", "additionalProperties": False, "required": ["thought", argument],
                       "properties": {
                           "thought": {"type": "string", "maxLength": thought_chars,
                                       "description": "what you learned so far and why you take this step"},
                           argument: {**value, "description": argument_help}}}}}


def search_tool(thought_chars: int = 400) -> dict:
    return _tool("search", "Search the corpus; returns the top results with docid and snippet.", "query",
                 "the search query", 300, thought_chars=thought_chars)


def answer_tool(thought_chars: int = 400) -> dict:
    return _tool("answer", "Give the final answer and stop.", "answer", "the final answer, short", 300,
                 thought_chars=thought_chars)


BROWSABLE = 20  # docids get_document accepts: those of the latest search results


def tools_for(shown: list[str], may_answer: bool, must_read: bool, thought_chars: int = 400) -> list[dict]:
    """The tools of one turn. get_document takes only docids the agent has been shown (an enum,
    enforced by servers that decode tool calls against their schema): an agent opens documents it
    found, as in the logs LRAT mines, and a small model cannot invent ids. ``answer`` is offered
    once the agent has read enough (``min_reads``); with ``must_read`` (right after a search, when
    ``read_after_search``) reading one of the results is the only move."""
    browse = [_tool("get_document", "Read one document in full by its docid.", "docid",
                    "a docid from the search results", 64, list(dict.fromkeys(reversed(shown)))[:BROWSABLE],
                    thought_chars)]
    if must_read and shown:
        return browse
    return [search_tool(thought_chars)] + (browse if shown else []) + ([answer_tool(thought_chars)] if may_answer
                                                                         else [])
SYSTEM_PROMPT = ("You are a deep-research agent. Use search to find documents and get_document to read the "
                 "promising ones in full. In every call, write your thought: what the last result told you. "
                 "When you are confident, call answer.")


def run_llm(task: Task, client: RetrieverClient, config: AgentConfig) -> dict:
    """The ReAct loop: one tool call per turn (tool choice required), ``max_turns`` searches and
    reads, then a forced ``answer``; the final answer is graded against the task's gold answer."""
    from lrat_ray.agents.grading import Grader
    from lrat_ray.infra.chat_client import ChatClient, ChatEndpoint

    llm = ChatClient(ChatEndpoint(config.endpoint, config.model, config.api_key_env, config.timeout_s, config.retries))
    recorder = RunRecorder(task, {"agent": "llm", "model": config.model, "endpoint": config.endpoint})
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM_PROMPT},
                                      {"role": "user", "content": config.task_prompt.format(question=task.question)}]
    params = {"temperature": config.temperature, "max_tokens": config.max_tokens}
    final = None
    shown: list[str] = []
    previous = None
    with llm.session() as http:
        for turn in range(config.max_turns + 1):
            last = turn == config.max_turns
            must_read = config.read_after_search and previous == "search"
            tools = [answer_tool(config.thought_chars)] if last else tools_for(
                shown, recorder.counts["get_document"] >= config.min_reads, must_read, config.thought_chars)
            choice = {"type": "function", "function": {"name": "answer"}} if last else "required"
            message = llm.chat_sync(messages, http, tools=tools, tool_choice=choice, **params)
            calls = message.get("tool_calls") or []
            if not calls:  # a model that answers in plain text has answered
                final = message.get("content") or ""
                break
            call = calls[0]  # one call per turn keeps the trajectory linear
            name, args = call["function"]["name"], _arguments(call["function"].get("arguments"))
            thought = "\n".join(t for t in (message.get("reasoning_content"), message.get("content"),
                                            args.get("thought")) if t)
            if thought:
                recorder.think(thought)
            if name == "answer":
                final = str(args.get("answer") or "")
                break
            messages.append({"role": "assistant", "content": message.get("content") or "",
                             "tool_calls": [{"id": call.get("id") or f"call-{turn}", "type": "function",
                                             "function": {"name": name, "arguments": json.dumps(args)}}]})
            messages.append({"role": "tool", "tool_call_id": call.get("id") or f"call-{turn}",
                             "content": _run_tool(name, args, client, recorder, config)})
            if name == "search" and recorder.last_hits is not None:
                shown.extend(recorder.last_hits)
            previous = name
    recorder.metadata["llm_usage"] = dict(llm.usage)
    grader = Grader(config.grader_config(), config.endpoint, config.model)
    return recorder.answer(final or "", grader.grade(task.question, final, task.answer))


def _arguments(raw) -> dict:
    if isinstance(raw, dict):
        return raw
    try:
        decoded = json.loads(raw or "{}")
        return decoded if isinstance(decoded, dict) else {}
    except json.JSONDecodeError:
        return {}


def _run_tool(name: str, args: dict, client: RetrieverClient, recorder: RunRecorder, config: AgentConfig) -> str:
    if name == "search" and isinstance(args.get("query"), str) and args["query"].strip():
        hits = client.search(args["query"], config.k)
        recorder.search(args["query"], hits)
        return json.dumps([{"docid": h["docid"], "snippet": h["snippet"]} for h in hits], ensure_ascii=False)
    if name == "get_document" and str(args.get("docid") or "").strip():
        document = client.document(str(args["docid"]).strip())
        recorder.browse(str(args["docid"]).strip(), document)
        return _doc_text(document)[:config.document_chars] or "document not found"
    return f"invalid tool call {name}({json.dumps(args)[:200]}): use search(query), get_document(docid) or answer"


# ---------------------------------------------------------------------------------------------
# Ray actors
# ---------------------------------------------------------------------------------------------

class RolloutWorker:
    """One Ray actor: runs its share of tasks and writes one run file per task."""

    def __init__(self, url: str, config: dict, token: str | None = None):
        self.config = AgentConfig(**config)
        self.client = RetrieverClient(url, token, self.config.timeout_s)

    def run(self, tasks: list[dict], output: str) -> list[dict]:
        agent = run_llm if self.config.kind == "llm" else run_simulated
        summaries = []
        for task_dict in tasks:
            task = Task(**task_dict)
            started = time.time()
            try:
                run = agent(task, self.client, self.config)
            except Exception as exc:  # a task that fails is recorded, not lost
                summaries.append({"task": task.id, "status": "failed", "error": repr(exc)})
                continue
            storage.write_json_atomic(storage.join(output, f"{_safe(task.id)}.json"), run)
            summaries.append({"task": task.id, "status": "completed", "seconds": round(time.time() - started, 3),
                              "correct": run["correct"], "steps": sum(run["tool_call_counts"].values()),
                              "llm_usage": run["metadata"].get("llm_usage")})
        return summaries


def _safe(task_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", task_id)


def run_rollouts(url: str, tasks: list[Task], config: AgentConfig, output: str, workers: int | None = 2,
                 token: str | None = None, per_worker: dict | None = None) -> dict:
    """Roll out ``tasks`` against the retriever at ``url`` with ``workers`` Ray actors (default: as
    many as fit), each reserving ``per_worker`` (default ``ACTOR_CPUS``)."""
    import ray

    from lrat_ray.infra.runtime import fit_workers, init_ray, remote_args

    init_ray()
    per_worker = per_worker or {"CPU": ACTOR_CPUS}
    workers = fit_workers(workers, per_worker, "rollout")
    output = output if storage.is_remote(output) else os.path.abspath(output)  # actors have their own cwd
    actor = ray.remote(**remote_args(per_worker))(RolloutWorker)
    pool = [actor.remote(url, dataclasses.asdict(config), token) for _ in range(max(1, min(workers, len(tasks))))]
    shares = [[dataclasses.asdict(t) for t in tasks[i::len(pool)]] for i in range(len(pool))]
    results = [s for batch in ray.get([w.run.remote(share, output) for w, share in zip(pool, shares)]) for s in batch]
    for worker in pool:
        ray.kill(worker)
    completed = [r for r in results if r["status"] == "completed"]
    summary = {"tasks": len(tasks), "completed": len(completed), "failed": len(results) - len(completed),
               "errors": [r for r in results if r["status"] != "completed"][:10],
               "success_rate": sum(bool(r["correct"]) for r in completed) / len(completed) if completed else None,
               "avg_steps": sum(r["steps"] for r in completed) / len(completed) if completed else None}
    usages = [r["llm_usage"] for r in completed if r.get("llm_usage")]
    if usages:  # LLM agents: what their calls cost, and the rate the endpoint served them at
        total = {k: sum(u[k] for u in usages) for k in ("calls", "completion_tokens", "seconds")}
        summary["llm"] = {**total, "seconds": round(total["seconds"], 2), "tokens_per_s": usage_rate(total)}
    return summary


def run_rollout_config(config: RolloutConfig) -> dict:
    """``lrat rollout``: the tasks of ``config.queries`` (those with judgments when qrels are given)."""
    from lrat_ray.core.datasets import load_answers, load_qrels, load_queries
    from lrat_ray.infra.runtime import actor_resources, init_ray

    init_ray(config.address)
    queries = load_queries(config.queries)
    qrels = load_qrels(config.qrels) if config.qrels else {}
    ids = sorted(q for q in queries if not qrels or q in qrels)[:config.limit]
    per_worker = actor_resources(config.cpus_per_worker, 0, config.resources)
    agent = config.agent_config()
    tasks = load_tasks(queries, qrels, ids, load_answers(config.queries), agent.answer_with, agent.evidence_grade)
    return run_rollouts(config.url, tasks, agent, config.output, config.workers, config.token, per_worker)


def load_tasks(queries: dict[str, str], qrels: dict[str, dict[str, int]], ids: list[str],
               answers: dict[str, str] | None = None, answer_with: str = "text", evidence_grade: int = 1) -> list[Task]:
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
