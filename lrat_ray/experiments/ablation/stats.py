"""Statistics for an experiment whose unit of replication is the seed: the ablation's tests.

An arm's score on a held-out claim depends on the claim and on the trained model, and the trained
model on the seed (rollouts, batch order, dropout). A test that averages the seeds away and pairs
by claim (``lrat_ray.core.metrics.paired_comparison``) ignores the training noise: it answers "do these
particular models differ?", not "does the method differ?". So the primary tests here are over
seeds, paired (both arms of a seed share its rollouts and, under common random numbers, its batch
stream), with a two-way (seed x claim) bootstrap for an interval that also carries the claim
sample. Pure functions on arrays; :mod:`lrat_ray.experiments.ablation` feeds them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def paired_seed_test(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict:
    """``b - a`` over seeds: mean, its t-interval, the paired t-test's two-sided p, and the
    differences' standard deviation (what a power calculation needs)."""
    from scipy import stats

    diffs = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    n = len(diffs)
    mean = float(diffs.mean()) if n else float("nan")
    if n < 2:
        return {"mean": mean, "n": n, "sd": None, "low": None, "high": None, "t": None, "p": None}
    sd = float(diffs.std(ddof=1))
    se = sd / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * se
    if se == 0:
        t, p = (0.0, 1.0) if mean == 0 else (math.copysign(math.inf, mean), 0.0)
    else:
        t = mean / se
        p = float(2 * stats.t.sf(abs(t), n - 1))
    return {"mean": mean, "n": n, "sd": sd, "low": mean - half, "high": mean + half, "t": float(t), "p": p}


def bootstrap_interval(diffs, reps: int = 2000, confidence: float = 0.95, seed: int = 0, denominator=None) -> dict:
    """Percentile interval of the mean of ``diffs`` (``[seeds, claims]``), resampling seeds and
    claims independently (a two-way bootstrap: both are samples). With ``denominator`` (same
    shape), the interval of ``mean(diffs) / mean(denominator)`` under the same resamples (the
    share of the oracle's gain); its bounds are ``None`` when more than the interval's tail of the
    resamples have a denominator of the other sign or zero (the ratio is then unbounded)."""
    rng = np.random.default_rng(seed)
    diffs = np.asarray(diffs, dtype=float)
    den = None if denominator is None else np.asarray(denominator, dtype=float)
    seeds, claims = diffs.shape
    nums, dens = np.empty(reps), np.empty(reps)
    for i in range(reps):
        s, c = rng.integers(0, seeds, seeds), rng.integers(0, claims, claims)
        nums[i] = diffs[np.ix_(s, c)].mean()
        dens[i] = 1.0 if den is None else den[np.ix_(s, c)].mean()
    tail = (1 - confidence) / 2
    point = float(diffs.mean() if den is None else diffs.mean() / den.mean())
    if den is not None and (den.mean() == 0 or np.mean(np.sign(dens) != np.sign(den.mean())) > tail):
        return {"mean": point, "low": None, "high": None, "reps": reps}
    values = nums / dens
    return {
        "mean": point,
        "low": float(np.quantile(values, tail)),
        "high": float(np.quantile(values, 1 - tail)),
        "reps": reps,
    }


def holm(pvalues: dict[str, float | None]) -> dict[str, float | None]:
    """Holm-Bonferroni adjusted p-values (family-wise error over the given comparisons)."""
    known = sorted(((p, k) for k, p in pvalues.items() if p is not None), key=lambda item: item[0])
    m = len(known)
    adjusted, running = {}, 0.0
    for rank, (p, key) in enumerate(known):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[key] = running
    return {k: adjusted.get(k) for k in pvalues}


def equivalence_test(diffs: Sequence[float], margin: float) -> dict:
    """Two one-sided t-tests (TOST) over seeds: is the mean difference inside ``(-margin, margin)``?
    ``p`` is the larger one-sided p; below alpha, equivalence is shown."""
    from scipy import stats

    diffs = np.asarray(diffs, dtype=float)
    n = len(diffs)
    if n < 2:
        return {"margin": margin, "p": None, "p_lower": None, "p_upper": None}
    mean, se = float(diffs.mean()), float(diffs.std(ddof=1)) / math.sqrt(n)
    if se == 0:
        inside = -margin < mean < margin
        return {"margin": margin, "p": 0.0 if inside else 1.0, "p_lower": None, "p_upper": None}
    p_lower = float(stats.t.sf((mean + margin) / se, n - 1))  # H0: mean <= -margin
    p_upper = float(stats.t.cdf((mean - margin) / se, n - 1))  # H0: mean >= +margin
    return {"margin": margin, "p": max(p_lower, p_upper), "p_lower": p_lower, "p_upper": p_upper}


def power(effect: float, sd: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test over ``n`` seeds to detect a true mean difference
    ``effect`` when the seed-level differences have standard deviation ``sd``."""
    from scipy import stats

    if n < 2 or sd <= 0:
        return float("nan")
    df = n - 1
    ncp = effect / (sd / math.sqrt(n))
    crit = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(crit, df, ncp) + stats.nct.cdf(-crit, df, ncp))


def seeds_needed(effect: float, sd: float, target: float = 0.8, alpha: float = 0.05, most: int = 10_000) -> int | None:
    """The fewest seeds at which :func:`power` reaches ``target`` (None beyond ``most``)."""
    if sd <= 0:
        return 2
    for n in range(2, most + 1):
        if power(effect, sd, n, alpha) >= target:
            return n
    return None


def min_detectable_effect(sd: float, n: int, target: float = 0.8, alpha: float = 0.05) -> float | None:
    """The smallest true difference the test over ``n`` seeds detects with probability ``target``."""
    if n < 2 or sd is None or sd <= 0:
        return None
    low, high = 0.0, sd * 100
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if power(mid, sd, n, alpha) < target else (low, mid)
    return high
