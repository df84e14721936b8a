"""Behaviour statistics of agent trajectories (LRAT, Table 1 and the browsed-rank distribution).

Per group of trajectories (all / correct / incorrect / unjudged): how many trajectories, the mean
number of searches, browses and tool calls ("steps") per trajectory, and the browse-to-search
ratio B/S = total browses / total searches. The rank distribution counts, for every browse that
can be attributed to a search, the 1-based position of the browsed document in that search's
results: LRAT's evidence that agents are not position-biased.

:class:`StatsAccumulator` holds only sums and counts, so shard accumulators merge exactly.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from lrat_ray.core.mining import browsed_ranks
from lrat_ray.core.trajectory import BROWSE, SEARCH, Trajectory

GROUPS = ("all", "correct", "incorrect", "unjudged")
_SUMS = ("trajectories", "searches", "browses", "steps")


@dataclass
class StatsAccumulator:
    sums: dict[str, Counter] = field(default_factory=lambda: {g: Counter() for g in GROUPS})
    ranks: Counter = field(default_factory=Counter)

    def add(self, traj: Trajectory) -> None:
        searches, browses = traj.count(SEARCH), traj.count(BROWSE)
        group = {True: "correct", False: "incorrect", None: "unjudged"}[traj.correct]
        for name in ("all", group):
            self.sums[name].update(trajectories=1, searches=searches, browses=browses, steps=searches + browses)
        self.ranks.update(browsed_ranks(traj))

    def merge(self, other: StatsAccumulator) -> StatsAccumulator:
        return StatsAccumulator({g: self.sums[g] + other.sums[g] for g in GROUPS}, self.ranks + other.ranks)

    def to_json(self) -> dict:
        return {
            "sums": {g: {k: self.sums[g][k] for k in _SUMS} for g in GROUPS},
            "ranks": {str(k): v for k, v in sorted(self.ranks.items())},
        }

    @classmethod
    def from_json(cls, obj: dict) -> StatsAccumulator:
        return cls({g: Counter(obj["sums"][g]) for g in GROUPS}, Counter({int(k): v for k, v in obj["ranks"].items()}))

    def summary(self) -> dict:
        """The report's ``stats``: Table-1 figures per group plus the browsed-rank distribution."""
        table = {}
        for group in GROUPS:
            s = self.sums[group]
            n = s["trajectories"]
            table[group] = {
                "trajectories": n,
                "searches": s["searches"],
                "browses": s["browses"],
                "avg_searches": s["searches"] / n if n else None,
                "avg_browses": s["browses"] / n if n else None,
                "avg_steps": s["steps"] / n if n else None,
                "browse_search_ratio": s["browses"] / s["searches"] if s["searches"] else None,
            }
        total_ranked = sum(self.ranks.values())
        table["browsed_rank_distribution"] = {
            str(rank): {"count": count, "share": count / total_ranked} for rank, count in sorted(self.ranks.items())
        }
        return table
