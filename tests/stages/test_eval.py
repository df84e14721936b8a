import json

import pytest
from conftest import SHARED_DATA

from lrat_ray.core.adapters import parse_trajectory
from lrat_ray.core.datasets import load_qrels
from lrat_ray.core.metrics import paired_comparison, score_run, score_trajectories
from lrat_ray.core.trajectory import SearchHit, Step, Trajectory
from lrat_ray.infra.errors import RecordError
from lrat_ray.infra.stage_run import run_stage
from lrat_ray.stages.eval import EvalConfig, run_eval


def _ranx(run, qrels, threshold):
    from ranx import Qrels, Run, evaluate

    graded = Qrels({q: {d: g for d, g in docs.items() if g > 0} for q, docs in qrels.items()})
    binary = Qrels({q: {d: 1 for d, g in docs.items() if g >= threshold} for q, docs in qrels.items()})
    ours = Run({q: dict(docs) for q, docs in run.items()})
    out = evaluate(graded, ours, ["ndcg@10"], make_comparable=True)
    out = {"ndcg@10": out} if not isinstance(out, dict) else out
    binary_metrics = evaluate(binary, ours, ["recall@5", "recall@20", "mrr@10"], make_comparable=True)
    return {**out, **binary_metrics}


@pytest.mark.parametrize("threshold", [1, 2])
def test_metrics_equal_an_independent_library(msmarco_index, msmarco_slice, tmp_path, threshold):
    result = run_stage(
        "eval",
        EvalConfig(
            index=str(msmarco_index),
            queries=str(msmarco_slice / "queries.jsonl"),
            qrels=str(msmarco_slice / "qrels.tsv"),
            k="5,20",
            rel_threshold=threshold,
            output=str(tmp_path / "eval"),
        ),
        run_eval,
    ).result
    tmp_path = tmp_path / "eval"
    qrels = load_qrels(str(msmarco_slice / "qrels.tsv"))
    run = {}
    for line in (tmp_path / "run.trec").read_text().split("\n"):
        if line:
            qid, q0, doc, rank, score, tag = line.split()
            assert q0 == "Q0" and tag == "lrat"
            run.setdefault(qid, {})[doc] = float(score)
    assert result["queries"] == 4 and all(len(docs) == 20 for docs in run.values())
    reference = _ranx(run, qrels, threshold)
    for metric, value in reference.items():
        assert result["metrics"][metric] == pytest.approx(value, abs=1e-6), metric
    written = json.loads((tmp_path / "report.json").read_text())
    assert written["metrics"] == result["metrics"] and set(written["per_query"]) == set(run)
    assert result["metrics"]["ndcg@10"] > 0.3  # the base model does retrieve the judged passages


def test_score_run_by_hand_with_evidence():
    qrels = {"q1": {"a": 2, "b": 1, "c": 0}, "q2": {"x": 1}}
    run = {"q1": {"b": 3.0, "z": 2.0, "a": 1.0}, "q2": {"y": 1.0}}
    scored = score_run(run, qrels, [1, 3], rel_threshold=1, evidence={"q1": {"a": 1}})
    q1 = scored["per_query"]["q1"]
    assert q1["recall@1"] == 0.5 and q1["recall@3"] == 1.0 and q1["mrr@10"] == 1.0
    assert q1["evidence_recall@1"] == 0.0 and q1["evidence_recall@3"] == 1.0
    assert scored["per_query"]["q2"]["recall@3"] == 0.0
    strict = score_run(run, qrels, [1], rel_threshold=2)
    assert strict["queries"] == 1 and strict["per_query"]["q1"]["mrr@10"] == pytest.approx(1 / 3)


def test_compare_reports_wins_losses_and_tests(msmarco_index, msmarco_slice):
    result = run_eval(
        EvalConfig(
            index=str(msmarco_index),
            queries=str(msmarco_slice / "queries.jsonl"),
            qrels=str(msmarco_slice / "qrels.tsv"),
            k="10",
            compare=str(msmarco_index),
        )
    )
    test = result["compare"]["tests"]["ndcg@10"]
    assert (test["wins_b"], test["losses_b"], test["ties"]) == (0, 0, 4) and test["permutation_p"] == 1.0
    a = {"q1": {"m": 0.1}, "q2": {"m": 0.2}, "q3": {"m": 0.3}, "q4": {"m": 0.0}}
    b = {"q1": {"m": 0.5}, "q2": {"m": 0.6}, "q3": {"m": 0.2}, "q4": {"m": 0.4}}
    paired = paired_comparison(a, b, "m", permutations=2000)
    assert (paired["wins_b"], paired["losses_b"], paired["ties"]) == (3, 1, 0)
    assert 0 < paired["t_test_p"] < 1 and paired["permutation_p"] >= 2 / 16  # 16 sign patterns


def test_qrels_formats_and_bad_lines(tmp_path):
    trec = tmp_path / "q.trec"
    trec.write_text("1 Q0 d1 1\n1 Q0 d2 0\n2 Q0 d9 3\n")
    assert load_qrels(str(trec)) == {"1": {"d1": 1, "d2": 0}, "2": {"d9": 3}}
    real = load_qrels(str(SHARED_DATA / "browsecomp-plus-qrels" / "qrel_evidence.txt"))
    assert len(real) == 830 and sum(len(d) for d in real.values()) == 5064
    bad = tmp_path / "bad.tsv"
    bad.write_text("query-id\tcorpus-id\tscore\n1\td1\thigh\n")
    with pytest.raises(RecordError, match="bad.tsv:line 2: field 'score'"):
        load_qrels(str(bad))


def test_agent_run_metrics_by_hand(real_trajectory_files):
    hand = Trajectory(
        id="t",
        correct=True,
        steps=(
            Step("search", query="q", results=(SearchHit("e1"), SearchHit("n1"))),
            Step("browse", doc_id="e2"),
            Step("search", query="q2", results=(SearchHit("n2"),)),
            Step("answer", text="x"),
        ),
    )
    other = Trajectory(id="u", correct=False, steps=(Step("search", query="q", results=(SearchHit("n1"),)),))
    evidence = {"t": {"e1": 1, "e2": 1, "e3": 1, "e4": 1}, "u": {"e1": 1}}
    scored = score_trajectories([hand, other], evidence, gold={"t": {"e2": 1}})
    assert scored["per_task"]["t"]["evidence_recall"] == 0.5  # e1 in a search result, e2 browsed
    assert scored["evidence_recall"] == 0.25 and scored["gold_recall"] == 1.0
    assert (scored["avg_steps"], scored["avg_searches"], scored["avg_browses"]) == (2.0, 1.5, 0.5)
    assert scored["success_rate"] == 0.5
    # the real runs: tool-call counts agree with the files' own counts (102 searches + 28 browses)
    runs = [parse_trajectory(json.loads(p.read_text())) for p in real_trajectory_files]
    real = score_trajectories(runs, {})
    assert real["avg_steps"] == 13.0 and real["evidence_recall"] is None and real["success_rate"] is None


def test_eval_warns_about_judgments_it_cannot_use(
    msmarco_index, msmarco_slice, real_trajectory_files, tmp_path, caplog
):
    """Scores over what matches are still computed, but never silently: judged queries without
    text, and runs whose ids no judgment names, are reported on the console."""
    from lrat_ray.stages.eval import EvalRunsConfig, run_eval_runs

    qrels = tmp_path / "qrels.tsv"
    qrels.write_text((msmarco_slice / "qrels.tsv").read_text() + "no-such-query\tD1\t1\n")
    with caplog.at_level("WARNING", logger="lrat_ray.stages.eval"):
        result = run_eval(
            EvalConfig(index=str(msmarco_index), queries=str(msmarco_slice / "queries.jsonl"), qrels=str(qrels), k="10")
        )
    assert result["judged_queries_without_text"] == 1 and result["queries"] == 4
    assert "1 of the 5 judged queries" in caplog.text and "no-such-query" in caplog.text

    caplog.clear()
    evidence = str(SHARED_DATA / "browsecomp-plus-qrels" / "qrel_evidence.txt")
    runs = [str(p) for p in real_trajectory_files]
    with caplog.at_level("WARNING", logger="lrat_ray.stages.eval"):
        matched = run_eval_runs(EvalRunsConfig(runs=runs, evidence=evidence))
    # 4 of the 10 real runs (ids 0, 4, 14, 17) are not among BrowseComp-Plus's 830 judged queries
    assert matched["tasks_without_evidence_judgments"] == 4 and matched["tasks_with_evidence"] == 6
    assert "4 of the 10 runs have ids with no evidence judgments" in caplog.text
    caplog.clear()
    other = tmp_path / "other.trec"
    other.write_text("q-elsewhere Q0 d1 1\n")
    with caplog.at_level("WARNING", logger="lrat_ray.stages.eval"):
        unmatched = run_eval_runs(EvalRunsConfig(runs=runs, evidence=str(other)))
    assert unmatched["evidence_recall"] is None and unmatched["tasks_without_evidence_judgments"] == 10
    assert "10 of the 10 runs have ids with no evidence judgments" in caplog.text and "q-elsewhere" in caplog.text
