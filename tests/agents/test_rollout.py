import json
import math
import random
import statistics

import pytest
from openai_stub import ScriptedOpenAI

from lrat_ray.agents.config import AgentConfig
from lrat_ray.agents.kinds import AGENT_KINDS
from lrat_ray.agents.react import run_llm
from lrat_ray.agents.retrievers import Retriever, RetrieverClient
from lrat_ray.agents.simulated import claim_overlap, run_simulated
from lrat_ray.agents.tasks import Task, split_task_ids
from lrat_ray.core.adapters import parse_trajectory
from lrat_ray.core.mining import mine_trajectory
from lrat_ray.stages.judge.prompts import keyword_label


class StubRetriever:
    """In-process stand-in for the HTTP client: a fixed shuffled ranking per query."""

    def __init__(self, docs: int = 200, seed: int = 0):
        self.rng = random.Random(seed)
        self.ids = [f"d{i}" for i in range(docs)]

    def search(self, query, k):
        ranked = self.rng.sample(self.ids, k)
        return [
            {"docid": d, "score": 1.0 / (r + 1), "title": "", "snippet": f"snippet of {d} about {query}"}
            for r, d in enumerate(ranked)
        ]

    def document(self, doc_id):
        return {"docid": doc_id, "title": f"T{doc_id}", "text": " ".join(f"w{doc_id}x{i}" for i in range(400))}


def test_judgment_driven_agent_statistics_match_its_parameters():
    config = AgentConfig(
        kind="simulated-judged",
        max_turns=1,
        evidence_needed=10**6,
        position_bias=0.5,
        p_browse_relevant=0.8,
        p_browse_irrelevant=0.1,
        reasoning_words_relevant=100,
        reasoning_words_irrelevant=20,
    )
    client = StubRetriever()
    relevant_docs = {f"d{i}" for i in range(0, 200, 2)}  # half the corpus is judged relevant
    shown = {True: {}, False: {}}
    browsed = {True: {}, False: {}}
    lengths = {True: [], False: []}
    for t in range(3000):
        task = Task(id=f"t{t}", question="claim words here", judgments={d: 1 for d in relevant_docs})
        run = AGENT_KINDS[config.kind](task, client, config)  # the registered kind: browses from the judgments
        traj = parse_trajectory(run)
        hits = traj.steps[1].result_ids
        opened = [s.doc_id for s in traj.steps if s.kind == "browse"]
        for rank, doc in enumerate(hits, start=1):
            shown[doc in relevant_docs][rank] = shown[doc in relevant_docs].get(rank, 0) + 1
            if doc in opened:
                browsed[doc in relevant_docs][rank] = browsed[doc in relevant_docs].get(rank, 0) + 1
        for pair in mine_trajectory(traj).pairs:
            lengths[pair.positive_id in relevant_docs].append(len(pair.reasoning.split()))
    for is_relevant, p in ((True, 0.8), (False, 0.1)):
        for rank in (1, 3, 10):
            rate = browsed[is_relevant].get(rank, 0) / shown[is_relevant][rank]
            assert rate == pytest.approx(p * rank**-0.5, abs=0.06), (is_relevant, rank, rate)
    assert statistics.mean(lengths[True]) == pytest.approx(100, rel=0.1)
    assert statistics.mean(lengths[False]) == pytest.approx(20, rel=0.2)


class TextRetriever:
    """Results whose snippets share a chosen share of the task's words; usefulness (the judgments)
    is assigned independently of the text, so the agent can only go by what it reads."""

    WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)
        self.shown: dict[str, float] = {}

    def search(self, query, k):
        hits = []
        for rank in range(k):
            share = self.rng.choice([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
            doc = f"d{len(self.shown)}"
            self.shown[doc] = share
            words = self.WORDS[: int(share * 10)] + ["other"] * (10 - int(share * 10))
            hits.append({"docid": doc, "score": 1.0 / (rank + 1), "title": "", "snippet": " ".join(words)})
        return hits

    def document(self, doc_id):
        return {"docid": doc_id, "title": "", "text": "Sentence one is here. " * 80}


def test_snippet_reading_agent_browses_by_overlap_not_by_judgment_and_its_notes_follow_usefulness():
    question = " ".join(TextRetriever.WORDS)
    assert claim_overlap(question, "alpha bravo other") == pytest.approx(0.2)
    results = {}
    for signal in (True, False):
        config = AgentConfig(
            kind="simulated",
            max_turns=1,
            evidence_needed=10**6,
            position_bias=0.0,
            reasoning_signal=signal,
            reasoning_words_relevant=100,
            reasoning_words_irrelevant=20,
        )
        client = TextRetriever()
        examined, opened, lengths, dismissals = {}, {}, {True: [], False: []}, {True: 0, False: 0}
        for t in range(600):
            shown = range(len(client.shown), len(client.shown) + 10)
            useful = {f"d{i}" for i in shown if random.Random(i).random() < 0.3}
            run = run_simulated(Task(id=f"t{t}", question=question, judgments={d: 1 for d in useful}), client, config)
            traj = parse_trajectory(run)
            hits = traj.steps[1].results
            browsed = {s.doc_id for s in traj.steps if s.kind == "browse"}
            for hit in hits:
                key = (client.shown[hit.doc_id], hit.doc_id in useful)
                examined[key] = examined.get(key, 0) + 1
                opened[key] = opened.get(key, 0) + (hit.doc_id in browsed)
            for pair in mine_trajectory(traj).pairs:
                is_useful = pair.positive_id in useful
                lengths[is_useful].append(len(pair.reasoning.split()))
                dismissals[is_useful] += not keyword_label(pair.reasoning)
        results[signal] = lengths, dismissals
        for share in (0.2, 0.4, 0.6):
            expected = 1 / (1 + math.exp(-config.browse_slope * (share - config.browse_midpoint)))
            for is_useful in (True, False):  # the judgments do not move the browse rate
                rate = opened[(share, is_useful)] / examined[(share, is_useful)]
                assert rate == pytest.approx(expected, abs=0.08), (share, is_useful, rate)
    (lengths, dismissals), (control_lengths, control_dismissals) = results[True], results[False]
    assert statistics.mean(lengths[True]) == pytest.approx(100, rel=0.1)
    assert statistics.mean(lengths[False]) == pytest.approx(20, rel=0.25)
    assert dismissals[True] == 0 and dismissals[False] / len(lengths[False]) > 0.3
    # The control agent's notes do not depend on what it read.
    assert statistics.mean(control_lengths[True]) == pytest.approx(statistics.mean(control_lengths[False]), rel=0.15)
    control_rate = {u: control_dismissals[u] / len(control_lengths[u]) for u in (True, False)}
    assert control_rate[True] == pytest.approx(control_rate[False], abs=0.07)


def test_simulated_agent_answers_after_evidence_and_is_seeded():
    client = StubRetriever(docs=12)
    config = AgentConfig(
        kind="simulated-judged", max_turns=5, position_bias=0.0, p_browse_relevant=1.0, p_correct_with_evidence=1.0
    )
    task = Task(id="t", question="what is it", judgments={"d3": 1})
    assert isinstance(client, Retriever) and isinstance(RetrieverClient("http://127.0.0.1:9"), Retriever)
    run = AGENT_KINDS[config.kind](task, client, config)
    assert run["correct"] is True and run["result"][-1]["type"] == "output_text"
    assert "d3" in run["retrieved_docids"] and run["tool_call_counts"]["get_document"] >= 1
    again = AGENT_KINDS[config.kind](task, StubRetriever(docs=12), config)
    assert again["result"] == run["result"]  # same seed, same retriever: same trajectory


@pytest.mark.parametrize("grader", [{"kind": "exact"}, {"kind": "llm"}])
def test_llm_agent_against_a_scripted_openai_server(grader):
    first_hit = StubRetriever().search("Which document?", 10)[0]["docid"]
    with ScriptedOpenAI() as server:
        config = AgentConfig(kind="llm", endpoint=server.url, model="scripted", max_turns=4, grader=grader)
        run = run_llm(Task(id="q1", question="Which document?", answer=f"zz | {first_hit}"), StubRetriever(), config)
        wrong = run_llm(Task(id="q2", question="Which document?", answer="d999"), StubRetriever(), config)
    traj = parse_trajectory(run)
    assert [s.kind for s in traj.steps] == ["think", "search", "think", "browse", "think", "answer"]
    assert traj.steps[1].query == "Which document?" and len(traj.steps[1].results) == 10
    assert traj.steps[3].doc_id == traj.steps[1].result_ids[0] == first_hit
    (pair,) = mine_trajectory(traj).pairs
    assert pair.reasoning == "The document answers it." and pair.rank == 1
    assert json.loads(json.dumps(run))["tool_call_counts"] == {"search": 1, "get_document": 1}
    assert traj.final_answer == f"docid {first_hit}" and run["correct"] is True and wrong["correct"] is False


def test_exact_match_grader():
    from lrat_ray.agents.grading import exact_match, parse_verdict

    assert exact_match("The Eiffel Tower!", "eiffel tower") and exact_match("It is docid 4983.", "12 | 4983")
    assert not exact_match("docid 49830", "4983") and not exact_match("", "x")
    assert not exact_match("It is docid 4983.", "4983", contains=False) and exact_match("4983", "4983", contains=False)
    assert parse_verdict('{"correct": "yes"}') is True and parse_verdict("correct: no") is False
    assert parse_verdict("maybe") is None


def test_task_split_is_deterministic_and_disjoint():
    ids = [str(i) for i in range(100)]
    train, held = split_task_ids(ids, 0.2, seed=7)
    assert (len(train), len(held)) == (80, 20) and not set(train) & set(held)
    assert split_task_ids(list(reversed(ids)), 0.2, seed=7) == (train, held)
