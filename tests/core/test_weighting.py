import math
import random
import statistics

import pytest

from lrat_ray.core.weighting import LengthHistogram, fit_weights, raw_weight


def test_weights_by_hand():
    # median 10; raw weights 0, 1/2, 1/2, 1 - 2**-3 = 0.875; mu_raw = 1.875 / 4
    params = fit_weights(LengthHistogram.of([0, 10, 10, 30]))
    assert (params.beta, params.mu_raw) == (10, 0.46875)
    assert [params.weight(l) for l in (0, 10, 30)] == pytest.approx([0.0, 0.5 / 0.46875, 0.875 / 0.46875])


def test_neutral_zero_length_matches_the_official_rule():
    params = fit_weights(LengthHistogram.of([0, 10, 10, 30]), zero_length="neutral")
    assert (params.beta, params.mu_raw) == (10, 0.625)
    assert [params.weight(l) for l in (0, 10, 30)] == pytest.approx([1.0, 0.8, 1.4])


def test_mean_weight_is_one_and_beta_override():
    lengths = [random.Random(0).randint(0, 900) for _ in range(1001)]
    params = fit_weights(LengthHistogram.of(lengths))
    assert params.beta == statistics.median(lengths)
    assert statistics.fmean(params.weight(l) for l in lengths) == pytest.approx(1.0, rel=1e-12)
    fixed = fit_weights(LengthHistogram.of(lengths), beta=50)
    assert fixed.beta == 50
    assert fixed.weight(50) == pytest.approx(0.5 / fixed.mu_raw)


@pytest.mark.parametrize("n", [1, 2, 7, 100, 101])
def test_histogram_median_equals_statistics_median(n):
    values = [random.Random(n).randint(0, 40) for _ in range(n)]
    assert LengthHistogram.of(values).median() == statistics.median(values)


def test_sharded_statistics_equal_single_process():
    rng = random.Random(3)
    lengths = [rng.randint(0, 2000) for _ in range(5000)]
    whole = fit_weights(LengthHistogram.of(lengths))
    shards = [lengths[i::13] for i in range(13)]
    merged = LengthHistogram()
    for shard in shards:
        merged = merged.merge(LengthHistogram.from_json(LengthHistogram.of(shard).to_json()))
    sharded = fit_weights(merged)
    assert sharded.beta == whole.beta
    assert sharded.mu_raw == pytest.approx(whole.mu_raw, rel=1e-12)
    # per-shard statistics would differ: the point of merging
    assert any(fit_weights(LengthHistogram.of(s)).beta != whole.beta for s in shards)


def test_degenerate_inputs_have_defined_weights():
    assert fit_weights(LengthHistogram()).weight(5) == 1.0
    assert fit_weights(LengthHistogram.of([0, 0, 0])).weight(0) == 1.0
    with pytest.raises(ValueError):
        fit_weights(LengthHistogram.of([1]), beta=0)
    assert raw_weight(10, 10) == pytest.approx(0.5)
    assert math.isclose(raw_weight(0, 3), 0.0)
