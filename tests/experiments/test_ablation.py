"""``lrat ablation`` on a real SciFact slice (small: two seeds, a few steps), and its statistics."""

import dataclasses
import json

import numpy as np
import pytest
from scipy import stats

from lrat_ray.experiments.ablation import AblationConfig, render_markdown, run_ablation
from lrat_ray.experiments.ablation.arms import arm_examples, arm_train_config, arm_weights
from lrat_ray.experiments.ablation.config import METRICS
from lrat_ray.experiments.ablation.report import mean_interval, summarize
from lrat_ray.infra.errors import LratError


def test_mean_interval_is_the_student_t_interval():
    values = [0.50, 0.54, 0.49]
    cell = mean_interval(values)
    expected = stats.t.interval(0.95, 2, loc=np.mean(values), scale=stats.sem(values))
    assert cell["mean"] == pytest.approx(np.mean(values))
    assert cell["mean"] - cell["half_width"] == pytest.approx(expected[0])
    assert mean_interval([0.5])["half_width"] is None


PAIRS = [
    {"query": "q", "positive_id": "a", "negative_ids": ["b", "zz"], "relevant": True, "useful": False, "weight": 1.5},
    {"query": "q", "positive_id": "b", "negative_ids": [], "relevant": False, "useful": True, "weight": 0.3},
    {"query": "r", "positive_id": "c", "negative_ids": ["a"], "relevant": True, "useful": True, "weight": 0.5},
]
TEXTS = {"a": "A", "b": "B", "c": "C"}


def test_arms_weight_one_common_stream_and_filtering_is_weight_zero():
    assert arm_weights(PAIRS, "oracle") == [0.0, 1.0, 1.0]
    assert arm_weights(PAIRS, "naive") == [1.0, 1.0, 1.0]
    assert arm_weights(PAIRS, "filter") == [1.0, 0.0, 1.0]
    assert arm_weights(PAIRS, "reweight") == pytest.approx([1.5, 0.0, 0.5])  # mean 1 over the kept pairs
    mean = 2.3 / 3
    assert arm_weights(PAIRS, "reweight-unfiltered") == pytest.approx([1.5 / mean, 0.3 / mean, 0.5 / mean])
    common = arm_examples(PAIRS, "reweight", TEXTS)
    assert [e["positive"] for e in common] == ["A", "B", "C"]  # every arm: the same pairs, in the same order
    assert common[0]["negatives"] == ["B"]  # a negative missing from the corpus is left out
    assert [e["positive"] for e in arm_examples(PAIRS, "reweight", TEXTS, "independent")] == ["A", "C"]
    with pytest.raises(LratError, match="no pairs left"):
        arm_weights([dict(PAIRS[1])], "filter")


def test_a_pair_at_weight_zero_adds_nothing_to_the_loss_but_its_documents_stay_negatives():
    import torch

    from lrat_ray.core.loss import weighted_info_nce

    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1).requires_grad_(True)
    d = torch.nn.functional.normalize(torch.randn(8, 8), dim=-1).requires_grad_(True)
    w = torch.tensor([1.0, 0.0, 2.0, 1.0])
    loss = weighted_info_nce(q, d, w, 0.05, 2, normalization="weight_sum")
    loss.backward()
    assert q.grad[1].abs().max() == 0  # its query term is gone
    assert d.grad[2:4].abs().max() > 0  # its positive and negative still push the other queries away
    kept = [0, 2, 3]  # the same loss as the three kept pairs with every document of the batch
    logits = q.detach()[kept] @ d.detach().T / 0.05
    per_pair = torch.nn.functional.cross_entropy(logits, torch.tensor(kept) * 2, reduction="none")
    assert float(loss.detach()) == pytest.approx(float((w[kept] * per_pair).sum() / w.sum()), rel=1e-5)
    nothing = weighted_info_nce(q, d, torch.zeros(4), 0.05, 2, normalization="weight_sum")
    assert float(nothing) == 0.0  # an all-filtered batch adds nothing (not 0/0)


def test_common_random_numbers_arms_with_equal_weights_train_to_identical_parameters():
    """Under common random numbers two arms differ only in their weights: equal weights give
    bit-identical models (same batches, negatives and dropout masks); other weights do not."""
    import torch

    from lrat_ray.stages.train import fit_in_process

    pairs = [
        {
            "query": f"claim {i} about protein {i % 5}",
            "positive_id": f"d{i}",
            "negative_ids": [f"d{(i + 3) % 12}"],
            "relevant": True,
            "useful": i % 2 == 0,
            "weight": 1.0 + (i % 3),
        }
        for i in range(12)
    ]
    texts = {f"d{i}": f"abstract {i}: protein {i % 5} binds receptor {i % 4} in cells" for i in range(12)}
    config = AblationConfig(
        corpus=["-"],
        queries="-",
        train_qrels="-",
        heldout_qrels="-",
        steps=3,
        batch=4,
        document_max_length=32,
        bf16=False,
    )

    def train(arm, items):
        fitted = fit_in_process(arm_train_config(config, order_seed=7), arm_examples(items, arm, texts), 3)
        return {n: p.detach().clone() for n, p in fitted["model"].named_parameters()}

    naive = train("naive", pairs)
    flat = [{**p, "weight": 1.0} for p in pairs]  # the judge keeps all and the weights are flat: LRAT = naive
    same = train("reweight", flat)
    assert all(torch.equal(naive[n], same[n]) for n in naive)
    weighted = train("reweight", pairs)
    assert any(not torch.equal(naive[n], weighted[n]) for n in naive)


def test_paired_tests_are_over_seeds_with_holm_equivalence_and_the_oracle_share():
    rng = np.random.default_rng(0)
    qids = [f"q{i}" for i in range(30)]
    base = {q: {m: 0.5 for m in METRICS} for q in qids}

    def arm(shift, noise=0.0):
        return {s: {q: {m: 0.5 + shift + rng.normal(0, noise) for m in METRICS} for q in qids} for s in range(5)}

    cells = {
        ("informative", "naive"): arm(0.0, 0.001),
        ("informative", "reweight"): arm(0.01, 0.001),
        ("informative", "oracle"): arm(0.02, 0.001),
        ("control", "naive"): arm(0.0, 0.001),
        ("control", "reweight"): arm(0.0, 0.001),
    }
    report = summarize(cells, base, qids[:10], list(range(5)), margin=0.005)
    by_label = {c["label"]: c for c in report["comparisons"]}
    lrat = by_label["LRAT - naive"]
    assert lrat["primary"] and lrat["ndcg@10"]["mean"] == pytest.approx(0.01, abs=0.001)
    assert lrat["ndcg@10"]["n"] == 5 and lrat["detected"] and lrat["holm_p"] >= lrat["ndcg@10"]["p"]
    assert lrat["ndcg@10"]["bootstrap"]["low"] < 0.01 < lrat["ndcg@10"]["bootstrap"]["high"]
    assert not by_label["control: LRAT - naive"]["detected"]
    assert report["control_equivalence"]["p"] < 0.05
    assert report["oracle_share"]["mean"] == pytest.approx(0.5, abs=0.1)
    assert abs(report["aa"]["mean"]) < 0.002
    row = next(
        r
        for r in report["rows"]
        if r["arm"] == "reweight" and r["agent"] == "informative" and r["subset"] == "disjoint"
    )
    assert row["queries"] == 10
    text = render_markdown({**report, "pairs": {}})
    assert "Holm p" in text and "conditional on the trained models" in text and "equivalent" in text


def test_ablation_end_to_end_on_a_scifact_slice_resumes_and_guards_its_output(scifact_slice, tmp_path):
    config = AblationConfig(
        corpus=[str(scifact_slice / "corpus.jsonl")],
        queries=str(scifact_slice / "queries.jsonl"),
        train_qrels=str(scifact_slice / "train.tsv"),
        heldout_qrels=str(scifact_slice / "test.tsv"),
        output=str(tmp_path / "ablation"),
        seeds=[0, 1],
        train_tasks=20,
        arms=["oracle", "naive", "reweight"],
        control_arms=["naive", "reweight"],
        steps=2,
        batch=4,
        document_max_length=32,
        bf16=False,
        agent={"max_turns": 2},
    )
    pilot = run_ablation(dataclasses.replace(config, pilot=True))
    assert set(pilot["scores"]) == {
        "oracle/order-0",
        "naive/order-0",
        "reweight/order-0",
        "naive/order-1000",
        "reweight/order-1000",
    }
    assert pilot["sd_of_difference"] >= 0 and pilot["seeds_needed_80"]
    out = tmp_path / "ablation"
    assert "seeds for 80% power" in (out / "pilot" / "results.md").read_text()
    pilot_cell = out / "seed-0" / "informative" / "naive" / "per_query.json"
    before = pilot_cell.stat().st_mtime_ns  # the pilot's order-seed-0 cells are the full run's seed-0 cells

    report = run_ablation(config)
    assert pilot_cell.stat().st_mtime_ns == before
    rows = {(r["agent"], r["arm"], r["subset"]): r for r in report["rows"]}
    assert set(rows) == {
        (a, arm, s)
        for a, arms in (("informative", ("oracle", "naive", "reweight")), ("control", ("naive", "reweight")))
        for arm in arms
        for s in ("all", "disjoint")
    }
    lrat = rows[("informative", "reweight", "all")]
    assert lrat["seeds"] == [0, 1] and lrat["queries"] == 12 and lrat["ndcg@10"]["half_width"] is not None
    assert 0 <= lrat["evidence_recall"]["mean"] <= 1 and 0 < lrat["mrr@100"]["mean"] <= 1
    comparisons = {c["label"]: c for c in report["comparisons"]}
    assert [c for c in comparisons if comparisons[c]["primary"]] == [
        "LRAT - naive",
        "oracle - naive",
        "control: LRAT - naive",
    ]
    assert all(0 < comparisons[c]["holm_p"] <= 1 for c in comparisons if comparisons[c]["primary"])
    assert "aa" in report and "control_equivalence" in report and "oracle_share" in report
    pairs = report["pairs"]["seed-0/informative"]
    assert pairs["pairs"] > 0 and 0 <= pairs["useful_share"] <= 1
    assert "Holm p" in (out / "results.md").read_text() and (out / "results.png").stat().st_size > 0
    arm_file = out / "seed-1" / "control" / "reweight" / "per_query.json"
    before = arm_file.stat().st_mtime_ns
    again = run_ablation(config)  # every arm is reused, the report is the same
    assert arm_file.stat().st_mtime_ns == before
    assert json.dumps(again["rows"], sort_keys=True) == json.dumps(report["rows"], sort_keys=True)
    with pytest.raises(LratError, match="other settings.*steps"):
        run_ablation(dataclasses.replace(config, steps=3))
