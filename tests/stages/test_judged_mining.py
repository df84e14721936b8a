"""Mining with judge labels equals the official LRAT builder with the same judge.

The fixture holds the pairs the official builder (src/data_builder.py, Yuqi-Zhou/LRAT, run outside
this repository) produced on 3,000 generated trajectories (tests/generated_runs.py) with the
keyword judge, which says NOT_RELEVANT to about a quarter of the browses; see tests/fixtures/README.md.
"""

import gzip
import json

import pyarrow.dataset as pads
import pytest
from conftest import FIXTURES
from generated_runs import generate_run, write_runs

from lrat_ray.core.adapters import parse_trajectory
from lrat_ray.core.mining import MiningOptions, mine_trajectories
from lrat_ray.core.weighting import LengthHistogram, fit_weights
from lrat_ray.stages.judge.prompts import keyword_label
from lrat_ray.stages.mine import length_measure


@pytest.fixture(scope="module")
def official():
    with gzip.open(FIXTURES / "official_builder_generated.json.gz", "rt") as fh:
        return json.load(fh)


def _gold(official):
    return [
        {k: p[k] for k in ("file", "query", "pos_id", "neg_id", "reasoning_len", "satisfied")}
        for p in official["pairs"]
    ]


def test_pure_miner_with_the_judge_equals_the_official_builder(official):
    assert sum(not p["satisfied"] for p in official["pairs"]) > 1000  # the judge really says NOT_RELEVANT
    measure = length_measure("embedded")
    ours = []
    for index in range(official["trajectories"]):
        traj = parse_trajectory(generate_run(index, official["generator_seed"]))
        result = mine_trajectories(
            [traj], MiningOptions("since-last-positive"), measure, lambda event: keyword_label(event.reasoning)
        )
        ours += [
            {
                "file": f"{index}.json",
                "query": p.query,
                "pos_id": [p.positive_id],
                "neg_id": p.negative_ids,
                "reasoning_len": p.reasoning_length,
                "satisfied": p.relevant is not False,
            }
            for p in result.pairs
        ]
    assert ours == _gold(official)


def test_judge_events_then_mine_with_labels_equals_the_official_builder(ray_session, official, tmp_path):
    """The command-line path: lrat judge --events, then lrat mine --labels (weights included)."""
    from lrat_ray.stages.judge import JudgeConfig, run_judge
    from lrat_ray.stages.mine import MineConfig, run_mine

    runs = tmp_path / "runs"
    runs.mkdir()
    write_runs(runs, official["trajectories"], official["generator_seed"], shards=4)
    report = run_judge(JudgeConfig(events=[str(runs)], output=str(tmp_path / "judged"), backend="keyword"))
    assert report["labels"] == report["ok"] == report["relevant"] + report["irrelevant"]
    run_mine(
        MineConfig(
            input=[str(runs)],
            output=str(tmp_path / "mined"),
            negative_mode="since-last-positive",
            labels=str(tmp_path / "judged"),
            zero_length="neutral",
            workers=2,
        )
    )
    rows = pads.dataset(str(tmp_path / "mined" / "pairs"), format="parquet").to_table().to_pylist()
    rows.sort(key=lambda r: (int(r["trajectory_id"].rsplit("-", 1)[1]), r["browse_turn"]))
    ours = [
        {
            "file": f"{r['trajectory_id'].rsplit('-', 1)[1]}.json",
            "query": r["query"],
            "pos_id": [r["positive_id"]],
            "neg_id": r["negative_ids"],
            "reasoning_len": r["reasoning_length"],
            "satisfied": r["relevant"] is not False,
        }
        for r in rows
    ]
    assert ours == _gold(official)
    assert [r["weight"] for r in rows] == pytest.approx([p["reweight_rate"] for p in official["pairs"]], rel=1e-9)
    params = fit_weights(LengthHistogram.of(r["reasoning_length"] for r in rows), zero_length="neutral")
    assert params.beta == official["half_life"]


def test_mine_refuses_labels_of_other_trajectories(ray_session, tmp_path):
    from lrat_ray.infra.errors import LratError
    from lrat_ray.stages.judge import JudgeConfig, run_judge
    from lrat_ray.stages.mine import MineConfig, run_mine

    judged_runs, other_runs = tmp_path / "a", tmp_path / "b"
    judged_runs.mkdir(), other_runs.mkdir()
    write_runs(judged_runs, 3, seed=1)
    write_runs(other_runs, 3, seed=2)
    run_judge(JudgeConfig(events=[str(judged_runs)], output=str(tmp_path / "judged"), backend="keyword"))
    with pytest.raises(LratError, match="no judge label for trajectory 'gen-2-"):
        run_mine(
            MineConfig(
                input=[str(other_runs)],
                output=str(tmp_path / "mined"),
                negative_mode="since-last-positive",
                labels=str(tmp_path / "judged"),
            )
        )
