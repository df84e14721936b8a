"""The ablation's seed-level statistics on inputs whose answers are known."""

import numpy as np
import pytest
from scipy import stats

from lrat_ray.experiments.ablation import stats as st


def test_paired_seed_test_is_scipys_paired_t_with_its_interval():
    a, b = [0.50, 0.52, 0.49, 0.51, 0.50], [0.51, 0.54, 0.49, 0.53, 0.52]
    got = st.paired_seed_test(a, b)
    expected = stats.ttest_rel(b, a)
    diffs = np.subtract(b, a)
    low, high = stats.t.interval(0.95, 4, loc=diffs.mean(), scale=stats.sem(diffs))
    assert got["p"] == pytest.approx(expected.pvalue) and got["t"] == pytest.approx(expected.statistic)
    assert (got["low"], got["high"]) == (pytest.approx(low), pytest.approx(high))
    assert got["sd"] == pytest.approx(diffs.std(ddof=1))
    assert st.paired_seed_test([0.5], [0.6])["p"] is None


def test_holm_adjusts_in_order_and_keeps_monotone():
    # sorted p: 0.01 (x3), 0.02 (x2) = 0.04, 0.04 (x1) = 0.04 (monotone: max with the previous)
    assert st.holm({"a": 0.04, "b": 0.01, "c": 0.02}) == pytest.approx({"a": 0.04, "b": 0.03, "c": 0.04})
    assert st.holm({"a": 0.5, "b": 0.4}) == pytest.approx({"a": 0.8, "b": 0.8})
    assert st.holm({"a": None, "b": 0.02}) == {"a": None, "b": pytest.approx(0.02)}


def test_equivalence_test_shows_a_tight_null_and_refuses_a_wide_or_shifted_one():
    tight = [0.001, -0.001, 0.0005, -0.0005, 0.0]
    assert st.equivalence_test(tight, 0.005)["p"] < 0.001
    assert st.equivalence_test([0.02, -0.02, 0.015, -0.018, 0.01], 0.005)["p"] > 0.05  # too noisy to tell
    assert st.equivalence_test([0.006, 0.007, 0.0065, 0.0062, 0.0068], 0.005)["p"] > 0.5  # outside the margin
    # TOST's one-sided p by hand: mean 0, se 0.001, margin 0.005 -> t = 5 on 4 df
    diffs = [0.001, -0.001, 0.002, -0.002, 0.0]
    se = np.std(diffs, ddof=1) / np.sqrt(5)
    assert st.equivalence_test(diffs, 0.005)["p"] == pytest.approx(stats.t.sf(0.005 / se, 4))


def test_power_and_seeds_needed_match_the_textbook_table():
    # paired t-test, two-sided alpha 0.05: d = 1 needs 10 pairs and d = 0.5 needs 34 for 80% power
    assert st.seeds_needed(1.0, 1.0) == 10 and st.seeds_needed(0.5, 1.0) == 34
    assert st.power(1.0, 1.0, 10) == pytest.approx(0.803, abs=0.002)
    mde = st.min_detectable_effect(1.0, 10)
    assert st.power(mde, 1.0, 10) == pytest.approx(0.8, abs=1e-6) and 0.95 < mde < 1.0
    assert st.min_detectable_effect(0.004, 5) == pytest.approx(st.min_detectable_effect(1.0, 5) * 0.004)


def test_bootstrap_resamples_seeds_and_claims_and_bounds_ratios():
    constant = np.full((5, 40), 0.01)
    assert st.bootstrap_interval(constant) == {
        "mean": pytest.approx(0.01),
        "low": pytest.approx(0.01),
        "high": pytest.approx(0.01),
        "reps": 2000,
    }
    rng = np.random.default_rng(1)
    seed_effects = rng.normal(0.0, 0.01, size=(5, 1))  # seed-level noise the claims cannot average away
    diffs = seed_effects + rng.normal(0.0, 0.001, size=(5, 300))
    boot = st.bootstrap_interval(diffs)
    assert boot["low"] < diffs.mean() < boot["high"]
    assert boot["high"] - boot["low"] > 0.005  # the seed spread shows; a claim-only bootstrap would be ~0.0003
    share = st.bootstrap_interval(
        np.full((5, 40), 0.004) + rng.normal(0, 1e-4, (5, 40)),
        denominator=np.full((5, 40), 0.01) + rng.normal(0, 1e-4, (5, 40)),
    )
    assert share["low"] < 0.4 < share["high"] and share["high"] - share["low"] < 0.05
    around_zero = st.bootstrap_interval(np.full((5, 40), 0.004), denominator=rng.normal(0.0, 0.01, (5, 40)))
    assert around_zero["low"] is None and around_zero["high"] is None
