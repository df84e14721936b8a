"""Reasoning-length weights (LRAT, Eq. 3).

The longer an agent reasons after reading a document, the more that document shaped its thinking.
LRAT turns the length ``l`` of the post-browse reasoning into a saturating weight::

    w_raw(l) = 1 - exp(-ln2 * l / beta)          # half of the maximum at l = beta
    w(l)     = w_raw(l) / mu_raw                 # mu_raw = mean of w_raw over the data, so E[w] = 1

with ``beta`` the median ``l`` over the whole data set. Both ``beta`` and ``mu_raw`` are *global*
statistics: when pairs are mined in shards, each shard builds a :class:`LengthHistogram` (lengths
are whole numbers: tokens or characters), the histograms are merged, and the exact global values
come out of the merged histogram, equal to what one process would compute on all pairs.

``zero_length`` says what to do with pairs whose reasoning is empty (the agent browsed and moved
on without writing anything): ``"neutral"`` (``lrat mine``'s default) leaves them out of both and
gives them weight 1, as the official LRAT builder does; ``"formula"`` applies the formula, giving
weight 0, and counts them in ``beta`` and ``mu_raw`` (the mining report counts those pairs).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

ZERO_LENGTH_POLICIES = ("formula", "neutral")


@dataclass
class LengthHistogram:
    """Counts of reasoning lengths; mergeable across shards."""

    counts: Counter = field(default_factory=Counter)

    @classmethod
    def of(cls, lengths: Iterable[int]) -> LengthHistogram:
        return cls(Counter(int(l) for l in lengths))

    def merge(self, other: LengthHistogram) -> LengthHistogram:
        return LengthHistogram(self.counts + other.counts)

    def to_json(self) -> dict[str, int]:
        return {str(k): v for k, v in sorted(self.counts.items())}

    @classmethod
    def from_json(cls, obj: dict[str, int]) -> LengthHistogram:
        return cls(Counter({int(k): int(v) for k, v in obj.items()}))

    def without_zero(self) -> LengthHistogram:
        return LengthHistogram(Counter({k: v for k, v in self.counts.items() if k > 0}))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def median(self) -> float:
        """The median as ``statistics.median`` defines it (mean of the two middle values)."""
        n = self.total
        if n == 0:
            raise ValueError("median of no lengths")
        lower, upper = (n - 1) // 2, n // 2
        values = []
        seen = 0
        for length in sorted(self.counts):
            count = self.counts[length]
            for position in (lower, upper):
                if seen <= position < seen + count:
                    values.append(length)
            seen += count
            if len(values) == 2:
                break
        return (values[0] + values[1]) / 2


@dataclass(frozen=True)
class WeightParams:
    """The global constants of Eq. 3; with them every pair's weight is a pure function of ``l``."""

    beta: float
    mu_raw: float
    zero_length: str = "formula"
    uniform: bool = False  # degenerate data (no positive length): every weight is 1

    def weight(self, length: int) -> float:
        if self.uniform or (length <= 0 and self.zero_length == "neutral"):
            return 1.0
        return raw_weight(length, self.beta) / self.mu_raw


def raw_weight(length: float, beta: float) -> float:
    return 1.0 - math.exp(-math.log(2.0) * length / beta)


def fit_weights(histogram: LengthHistogram, beta: float | None = None, zero_length: str = "formula") -> WeightParams:
    """``beta`` (median length, unless given) and ``mu_raw`` from the global length histogram.

    Degenerate data still gets defined weights: with no pairs (or no positive lengths) ``beta``
    falls back to 1 and every weight is 1.
    """
    if zero_length not in ZERO_LENGTH_POLICIES:
        raise ValueError(f"zero_length must be one of {ZERO_LENGTH_POLICIES}, got {zero_length!r}")
    if beta is not None and beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    counted = histogram.without_zero() if zero_length == "neutral" else histogram
    if counted.total == 0:
        return WeightParams(beta=beta or 1.0, mu_raw=1.0, zero_length=zero_length, uniform=True)
    if beta is None:
        beta = counted.median()
        if beta <= 0:  # more than half the reasoning is empty: fall back to the positive lengths
            positive = histogram.without_zero()
            beta = positive.median() if positive.total else 1.0
    mu_raw = sum(raw_weight(length, beta) * count for length, count in counted.counts.items()) / counted.total
    if mu_raw <= 0:
        return WeightParams(beta=beta, mu_raw=1.0, zero_length=zero_length, uniform=True)
    return WeightParams(beta=beta, mu_raw=mu_raw, zero_length=zero_length)
