"""Mining: turn one agent trajectory into retriever training pairs (LRAT, Sec. 3).

The agent's own actions are the supervision. When it searches with query ``q_t``, sees the ranked
candidates ``D_t`` and then *browses* (opens in full) document ``d`` from ``D_t``, the pair
``(q_t, d)`` is a positive; the candidates of ``D_t`` it did not open are negatives. LRAT found that
agents show little position bias when choosing what to open, so no click-model debiasing is applied.
The reasoning the agent writes right after reading ``d`` is kept: its length ``l`` later becomes the
pair's weight (:mod:`lrat_ray.core.weighting`) and an LLM judge reads it to drop browses that turned out
useless (:mod:`lrat_ray.stages.judge`).

Two ways of choosing the query and the negatives (``MiningOptions.negative_mode``):

``attributed`` (default; the paper's description)
    A browse of ``d`` is attributed to the latest earlier search whose results contain ``d``; the
    pair's query is that search's query and its negatives are that search's other candidates, in
    rank order. With ``exclude_browsed`` (default on) a document the agent browsed anywhere in the
    trajectory is never a negative: the agent judged it worth opening, so calling it irrelevant
    would contradict the positive signal. A repeat browse of the same document from the same search
    gives no second pair (it is counted as ``duplicate_browses``).

``since-last-positive`` (the official LRAT data builder, ``src/data_builder.py`` in Yuqi-Zhou/LRAT)
    Browses separated only by the reasoning after each form a *run*. Every positive of a run is
    paired with the query of the latest search, and shares its negatives: the unbrowsed candidates
    of every search since the last run that kept a positive, most recent search first, each search's
    candidates in rank order, de-duplicated. A run that keeps a positive closes the window; a browse
    of a document no search in the window returned gives no pair (``unattributed_browses``).
    Judge labels change the pairs (pass ``judge``): a browse judged irrelevant does not close the
    window, becomes a negative for the relevant browses of its run and of later runs in the window
    (nearest first, ahead of the unbrowsed candidates), and still yields a pair of its own marked
    ``relevant=False`` whose negatives exclude the run's relevant documents. Without a judge every
    browse counts as relevant, which reproduces the official builder with a judge that always says
    RELEVANT.

Everything here is pure Python on :class:`~lrat_ray.core.trajectory.Trajectory` objects; Ray only wraps
it (:mod:`lrat_ray.stages.mine`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from lrat_ray.core.trajectory import BROWSE, SEARCH, THINK, Step, Trajectory

NEGATIVE_MODES = ("attributed", "since-last-positive")


@dataclass(frozen=True)
class MiningOptions:
    """How pairs are mined; see the module docstring for the two ``negative_mode`` values."""

    negative_mode: str = "attributed"
    exclude_browsed: bool = True

    def __post_init__(self):
        if self.negative_mode not in NEGATIVE_MODES:
            raise ValueError(f"negative_mode must be one of {NEGATIVE_MODES}, got {self.negative_mode!r}")


@dataclass(frozen=True)
class BrowseEvent:
    """What a judge sees about one browse: the task, the document and the reasoning written after it."""

    trajectory_id: str
    browse_turn: int
    doc_id: str
    reasoning: str
    document_text: str | None
    query: str | None = None  # the latest search's query before the browse (None: no search yet)


@dataclass
class MinedPair:
    """One training pair. ``turn`` and ``browse_turn`` index ``Trajectory.steps``; ``rank`` is the
    1-based position of the positive in the results of the search it was attributed to."""

    trajectory_id: str
    turn: int
    browse_turn: int
    query: str
    positive_id: str
    negative_ids: list[str]
    reasoning: str
    rank: int | None
    correct: bool | None
    relevant: bool | None = None
    positive_text: str | None = None
    negative_texts: list[str | None] = field(default_factory=list)
    reasoning_length: int = 0


@dataclass
class MiningResult:
    """Pairs of one or many trajectories plus the counts the report needs."""

    pairs: list[MinedPair] = field(default_factory=list)
    unattributed_browses: int = 0
    duplicate_browses: int = 0
    failed_browses: int = 0


Judge = Callable[[BrowseEvent], bool]
LengthMeasure = Callable[[Sequence[str]], list[int]]


def character_lengths(texts: Sequence[str]) -> list[int]:
    """Reasoning length in characters: the fallback when no tokenizer is configured."""
    return [len(t) for t in texts]


def mine_trajectory(
    traj: Trajectory,
    options: MiningOptions = MiningOptions(),
    measure: LengthMeasure = character_lengths,
    judge: Judge | None = None,
) -> MiningResult:
    """Mine one trajectory; ``measure`` gives reasoning lengths (tokens or characters)."""
    return mine_trajectories([traj], options, measure, judge)


def mine_trajectories(
    trajectories: Iterable[Trajectory],
    options: MiningOptions = MiningOptions(),
    measure: LengthMeasure = character_lengths,
    judge: Judge | None = None,
) -> MiningResult:
    """Mine many trajectories, measuring all reasoning lengths in one call (tokenizers batch well)."""
    result = MiningResult()
    miner = _mine_since_last_positive if options.negative_mode == "since-last-positive" else _mine_attributed
    for traj in trajectories:
        miner(traj, options, judge, result)
    lengths = measure([p.reasoning for p in result.pairs])
    for pair, length in zip(result.pairs, lengths):
        pair.reasoning_length = int(length)
    return result


_FAILED_BROWSE = re.compile(
    r"\s*\[?\s*(document not found|not found|error\b|failed to (fetch|load|retrieve))", re.IGNORECASE
)


def failed_browse(step: Step) -> bool:
    """A browse that returned nothing to read: an empty output or a "Document not found" / error
    message. The agent saw no document, so it never yields a positive (counted as
    ``failed_browses``). A browse whose output was not logged (``text`` None) is not failed."""
    return step.text is not None and (not step.text.strip() or bool(_FAILED_BROWSE.match(step.text[:80])))


def post_browse_reasoning(steps: Sequence[Step], browse_turn: int) -> str:
    """The reasoning written right after a browse: the next step if it is a think step, else ``""``."""
    nxt = browse_turn + 1
    if nxt < len(steps) and steps[nxt].kind == THINK:
        return steps[nxt].text or ""
    return ""


def browse_events(traj: Trajectory) -> list[BrowseEvent]:
    """Every browse of ``traj`` as a judge sees it, whether or not it becomes a pair: what
    ``lrat judge --events`` labels and ``lrat mine --labels`` looks up by (trajectory, browse turn)."""
    events, query = [], None
    for turn, step in enumerate(traj.steps):
        if step.kind == SEARCH:
            query = step.query
        elif step.kind == BROWSE:
            events.append(
                BrowseEvent(traj.id, turn, step.doc_id, post_browse_reasoning(traj.steps, turn), step.text, query)
            )
    return events


def attribute(searches: Sequence[tuple[int, Step]], doc_id: str) -> tuple[int, Step, int] | None:
    """The latest search that returned ``doc_id``: ``(turn, search step, 1-based rank)``, or None."""
    for turn, search in reversed(searches):
        ids = search.result_ids
        if doc_id in ids:
            return turn, search, ids.index(doc_id) + 1
    return None


def browsed_ranks(traj: Trajectory) -> list[int]:
    """Rank of each attributable browse in the search it came from (for the rank distribution)."""
    searches: list[tuple[int, Step]] = []
    ranks = []
    for turn, step in enumerate(traj.steps):
        if step.kind == SEARCH:
            searches.append((turn, step))
        elif step.kind == BROWSE:
            source = attribute(searches, step.doc_id)
            if source is not None:
                ranks.append(source[2])
    return ranks


def _label(judge: Judge | None, traj: Trajectory, turn: int, step: Step, reasoning: str) -> bool | None:
    if judge is None:
        return None
    return bool(judge(BrowseEvent(traj.id, turn, step.doc_id, reasoning, step.text)))


def _snippets(searches: Iterable[Step]) -> dict[str, str | None]:
    texts: dict[str, str | None] = {}
    for search in searches:
        for hit in search.results:
            if texts.get(hit.doc_id) is None:
                texts[hit.doc_id] = hit.snippet
    return texts


def _mine_attributed(traj: Trajectory, options: MiningOptions, judge: Judge | None, result: MiningResult) -> None:
    steps = traj.steps
    browsed_anywhere = {s.doc_id for s in steps if s.kind == BROWSE} if options.exclude_browsed else set()
    searches: list[tuple[int, Step]] = []
    emitted: set[tuple[int, str]] = set()
    for turn, step in enumerate(steps):
        if step.kind == SEARCH:
            searches.append((turn, step))
            continue
        if step.kind != BROWSE:
            continue
        if failed_browse(step):
            result.failed_browses += 1
            continue
        source = attribute(searches, step.doc_id)
        if source is None:
            result.unattributed_browses += 1
            continue
        search_turn, search, rank = source
        if (search_turn, step.doc_id) in emitted:
            result.duplicate_browses += 1
            continue
        emitted.add((search_turn, step.doc_id))
        excluded = browsed_anywhere | {step.doc_id}
        negatives = _unique(d for d in search.result_ids if d not in excluded)
        snippets = _snippets([search])
        reasoning = post_browse_reasoning(steps, turn)
        result.pairs.append(
            MinedPair(
                trajectory_id=traj.id,
                turn=search_turn,
                browse_turn=turn,
                query=search.query or "",
                positive_id=step.doc_id,
                negative_ids=negatives,
                reasoning=reasoning,
                rank=rank,
                correct=traj.correct,
                relevant=_label(judge, traj, turn, step, reasoning),
                positive_text=step.text,
                negative_texts=[snippets.get(d) for d in negatives],
            )
        )


def _mine_since_last_positive(
    traj: Trajectory, options: MiningOptions, judge: Judge | None, result: MiningResult
) -> None:
    steps = traj.steps
    window: list[tuple[int, Step]] = []  # searches since the last run that kept a positive
    irrelevant_before: list[str] = []  # docs browsed and judged irrelevant in the window
    turn = 0
    while turn < len(steps):
        step = steps[turn]
        if step.kind == SEARCH:
            window.append((turn, step))
        if step.kind != BROWSE:
            turn += 1
            continue
        run, turn = _collect_run(traj, turn, judge)
        result.failed_browses += sum(b["failed"] for b in run)
        run = [b for b in run if not b["failed"]]
        relevant = [b for b in run if b["relevant"] is not False]
        irrelevant = [b["doc_id"] for b in run if b["relevant"] is False]
        kept = {b["doc_id"] for b in relevant}
        opened = set(irrelevant_before) | {b["doc_id"] for b in run}
        unbrowsed = [d for _, s in reversed(window) for d in s.result_ids if d not in opened]
        earlier_irrelevant = list(reversed(irrelevant_before))
        searched = {d for _, s in window for d in s.result_ids}
        snippets = _snippets(s for _, s in window)
        query_turn, query_step = window[-1] if window else (None, None)
        for browse in run:
            doc = browse["doc_id"]
            if doc not in searched:
                result.unattributed_browses += 1
                continue
            nearest_irrelevant = [d for d in reversed(irrelevant) if d != doc]
            negatives = [
                d for d in _unique(nearest_irrelevant + earlier_irrelevant + unbrowsed) if d not in kept and d != doc
            ]
            result.pairs.append(
                MinedPair(
                    trajectory_id=traj.id,
                    turn=query_turn,
                    browse_turn=browse["turn"],
                    query=query_step.query or "",
                    positive_id=doc,
                    negative_ids=negatives,
                    reasoning=browse["reasoning"],
                    rank=attribute(window, doc)[2],
                    correct=traj.correct,
                    relevant=browse["relevant"],
                    positive_text=browse["text"],
                    negative_texts=[snippets.get(d) for d in negatives],
                )
            )
        irrelevant_before.extend(irrelevant)
        if kept:
            window, irrelevant_before = [], []


def _collect_run(traj: Trajectory, start: int, judge: Judge | None) -> tuple[list[dict], int]:
    """Consecutive browses (each optionally followed by its reasoning) from ``start``; returns the
    run and the index of the first step after it."""
    steps = traj.steps
    run = []
    turn = start
    while turn < len(steps) and steps[turn].kind == BROWSE:
        step = steps[turn]
        reasoning = post_browse_reasoning(steps, turn)
        failed = failed_browse(step)
        run.append(
            {
                "turn": turn,
                "doc_id": step.doc_id,
                "reasoning": reasoning,
                "text": step.text,
                "failed": failed,
                "relevant": None if failed else _label(judge, traj, turn, step, reasoning),
            }
        )
        turn += 2 if turn + 1 < len(steps) and steps[turn + 1].kind == THINK else 1
    return run, turn


def _unique(ids: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(ids))
