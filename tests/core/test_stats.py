import json

from conftest import HAND

from lrat_ray.core.adapters import parse_trajectory
from lrat_ray.core.stats import StatsAccumulator


def test_table1_on_real_trajectories_matches_their_tool_counts(real_trajectory_files):
    acc = StatsAccumulator()
    searches = browses = 0
    for path in real_trajectory_files:
        raw = json.loads(path.read_text())
        acc.add(parse_trajectory(raw))
        searches += raw["tool_call_counts"]["search"]
        browses += sum(v for k, v in raw["tool_call_counts"].items() if k != "search")
    table = acc.summary()
    assert table["all"]["trajectories"] == table["unjudged"]["trajectories"] == 10
    assert (table["all"]["searches"], table["all"]["browses"]) == (searches, browses) == (102, 28)
    assert table["all"]["avg_steps"] == (searches + browses) / 10
    assert table["all"]["browse_search_ratio"] == browses / searches
    assert sum(v["count"] for v in table["browsed_rank_distribution"].values()) == 28


def test_groups_by_correctness_and_exact_merge():
    a, b = StatsAccumulator(), StatsAccumulator()
    a.add(HAND)  # correct=False: 3 searches, 4 browses
    b.add(HAND)
    merged = StatsAccumulator.from_json(a.to_json()).merge(b).summary()
    assert merged["incorrect"] == {
        "trajectories": 2,
        "searches": 6,
        "browses": 8,
        "avg_searches": 3.0,
        "avg_browses": 4.0,
        "avg_steps": 7.0,
        "browse_search_ratio": 8 / 6,
    }
    assert merged["correct"]["trajectories"] == 0 and merged["correct"]["avg_steps"] is None
    # ranks: a@1 (q1), d@1 (q2), b@2 (q1), f@1 (q3), twice
    assert merged["browsed_rank_distribution"] == {"1": {"count": 6, "share": 0.75}, "2": {"count": 2, "share": 0.25}}
