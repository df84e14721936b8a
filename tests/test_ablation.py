"""``lrat ablation`` on a real SciFact slice (small: two seeds, a few steps), and its statistics."""

import json

import numpy as np
import pytest
from scipy import stats

from lrat_ray.ablation import AblationConfig, arm_examples, mean_interval, run_ablation, summarize
from lrat_ray.errors import LratError


def test_mean_interval_is_the_student_t_interval():
    values = [0.50, 0.54, 0.49]
    cell = mean_interval(values)
    expected = stats.t.interval(0.95, 2, loc=np.mean(values), scale=stats.sem(values))
    assert cell["mean"] == pytest.approx(np.mean(values))
    assert cell["mean"] - cell["half_width"] == pytest.approx(expected[0])
    assert mean_interval([0.5])["half_width"] is None


def test_arms_filter_and_weight_the_same_pairs():
    pairs = [{"query": "q", "positive_id": "a", "negative_ids": ["b", "zz"], "relevant": True, "useful": False,
              "weight": 1.5},
             {"query": "q", "positive_id": "b", "negative_ids": [], "relevant": False, "useful": True, "weight": 0.3},
             {"query": "r", "positive_id": "c", "negative_ids": ["a"], "relevant": True, "useful": True, "weight": 0.5}]
    texts = {"a": "A", "b": "B", "c": "C"}
    assert [e["positive"] for e in arm_examples(pairs, "oracle", texts)] == ["B", "C"]
    assert [(e["positive"], e["weight"]) for e in arm_examples(pairs, "naive", texts)] == [("A", 1), ("B", 1), ("C", 1)]
    assert [e["positive"] for e in arm_examples(pairs, "filter", texts)] == ["A", "C"]
    lrat = arm_examples(pairs, "reweight", texts)
    assert [e["weight"] for e in lrat] == pytest.approx([1.5, 0.5])  # mean 1 over the kept pairs
    assert lrat[0]["negatives"] == ["B"]  # a negative missing from the corpus is left out
    assert [e["weight"] for e in arm_examples(pairs, "reweight-unfiltered", texts)] == pytest.approx(
        [1.5 / (2.3 / 3), 0.3 / (2.3 / 3), 0.5 / (2.3 / 3)])


def test_paired_tests_compare_the_same_queries():
    base = {f"q{i}": {"ndcg@10": 0.5, "recall@10": 0.5, "recall@100": 0.9} for i in range(6)}
    better = {s: {q: {**m, "ndcg@10": 0.6} for q, m in base.items()} for s in (0, 1, 2)}
    same = {s: {q: dict(m) for q, m in base.items()} for s in (0, 1, 2)}
    report = summarize({("informative", "naive"): same, ("informative", "reweight"): better}, base, ["q0", "q1"],
                       [0, 1, 2])
    row = next(r for r in report["rows"] if r["arm"] == "reweight" and r["subset"] == "all")
    assert row["ndcg@10"]["mean"] == pytest.approx(0.6) and row["ndcg@10"]["half_width"] == pytest.approx(0)
    assert row["ndcg@10_vs_naive"]["wins_b"] == 6 and row["ndcg@10_vs_base"]["mean_a"] == pytest.approx(0.5)
    assert next(r for r in report["rows"] if r["arm"] == "reweight" and r["subset"] == "disjoint")["queries"] == 2


def test_ablation_end_to_end_on_a_scifact_slice_resumes_and_guards_its_output(scifact_slice, tmp_path):
    config = AblationConfig(corpus=[str(scifact_slice / "corpus.jsonl")], queries=str(scifact_slice / "queries.jsonl"),
                            train_qrels=str(scifact_slice / "train.tsv"), heldout_qrels=str(scifact_slice / "test.tsv"),
                            output=str(tmp_path / "ablation"), seeds=[0, 1], train_tasks=20,
                            arms=["oracle", "naive", "reweight"], control_arms=["naive", "reweight"], steps=2,
                            batch=4, document_max_length=32, agent={"max_turns": 2})
    report = run_ablation(config)
    rows = {(r["agent"], r["arm"], r["subset"]): r for r in report["rows"]}
    assert set(rows) == {(a, arm, s) for a, arms in (("informative", ("oracle", "naive", "reweight")),
                                                     ("control", ("naive", "reweight")))
                         for arm in arms for s in ("all", "disjoint")}
    lrat = rows[("informative", "reweight", "all")]
    assert lrat["seeds"] == [0, 1] and lrat["queries"] == 12 and lrat["ndcg@10"]["half_width"] is not None
    assert 0 < lrat["ndcg@10_vs_naive"]["permutation_p"] <= 1
    pairs = report["pairs"]["seed-0/informative"]
    assert pairs["pairs"] > 0 and 0 <= pairs["useful_share"] <= 1
    out = tmp_path / "ablation"
    assert "± " in (out / "results.md").read_text() and (out / "results.png").stat().st_size > 0
    arm_file = out / "seed-1" / "control" / "reweight" / "per_query.json"
    before = arm_file.stat().st_mtime_ns
    again = run_ablation(config)  # every arm is reused, the report is the same
    assert arm_file.stat().st_mtime_ns == before
    assert json.dumps(again["rows"], sort_keys=True) == json.dumps(report["rows"], sort_keys=True)
    with pytest.raises(LratError, match="other settings.*steps"):
        run_ablation(AblationConfig(**{**config.__dict__, "steps": 3}))
