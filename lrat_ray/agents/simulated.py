"""The simulated agents, for machines without an LLM and for fleet-scale simulation.

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
import math
import random
import re
from typing import TYPE_CHECKING

from lrat_ray.agents.recorder import RunRecorder, doc_text

if TYPE_CHECKING:
    from lrat_ray.agents.config import AgentConfig
    from lrat_ray.agents.retrievers import Retriever
    from lrat_ray.agents.tasks import Task

_WORD = re.compile(r"[A-Za-z][A-Za-z0-9-]{3,}")
_STOP = frozenset(
    "this that with from have were been their which there these those than into also more most "
    "such only other some when what where while about after before between during over under "
    "does doesn shows show study studies patients".split()
)


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
# (lrat_ray.stages.judge.prompts.NEGATIVE_PHRASES): a judge has to read, and a simple one misses the rest.
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
USEFUL_OPENINGS = (
    "This document addresses the claim directly. Key details:",
    "The abstract bears on the claim; the relevant findings:",
    "This is evidence for deciding the claim. It reports:",
)


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
    words += doc_words[start : start + max(0, target - len(words))]
    return " ".join(words[: max(target, len(opening.split()))])


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


def run_simulated_judged(task: Task, client: Retriever, config: AgentConfig) -> dict:
    """One task with the ``simulated-judged`` agent: it browses from the judgments."""
    return run_simulated(task, client, config, reads_snippets=False)


def run_simulated(task: Task, client: Retriever, config: AgentConfig, reads_snippets: bool = True) -> dict:
    """One task with the ``simulated`` agent (``reads_snippets``: it chooses what to read from the
    titles and snippets; False: from the judgments, the ``simulated-judged`` agent)."""
    rng = task_rng(config.seed, task.id)
    recorder = RunRecorder(task, {"agent": config.kind, **dataclasses.asdict(config)})
    evidence = {d for d, g in task.judgments.items() if g >= config.evidence_grade}
    useful = {d for d, g in task.judgments.items() if g > 0}
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
            if hit["docid"] in browsed or rng.random() > rank**-config.position_bias:
                continue
            is_useful = hit["docid"] in useful
            if rng.random() > _browse_probability(task.question, hit, is_useful, reads_snippets, config):
                continue
            document = client.document(hit["docid"])
            recorder.browse(hit["docid"], document)
            browsed.add(hit["docid"])
            text = doc_text(document)
            recorder.think(
                _reasoning_read(task.question, text, is_useful, config, rng)
                if reads_snippets
                else _reasoning_judged(text, is_useful, config, rng)
            )
            found += hit["docid"] in evidence
            if found >= config.evidence_needed:
                correct = rng.random() < config.p_correct_with_evidence
                return recorder.answer("Answer supported by the documents read.", correct)
    correct = rng.random() < config.p_correct_without_evidence
    return recorder.answer("Best guess without supporting evidence.", correct)


def _browse_probability(question: str, hit: dict, is_useful: bool, reads_snippets: bool, config: AgentConfig) -> float:
    if not reads_snippets:  # simulated-judged: the judgments decide
        return config.p_browse_relevant if is_useful else config.p_browse_irrelevant
    overlap = claim_overlap(question, f"{hit.get('title') or ''} {hit.get('snippet') or ''}")
    return 1.0 / (1.0 + math.exp(-config.browse_slope * (overlap - config.browse_midpoint)))
