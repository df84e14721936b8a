import json
import zlib

import pytest
from conftest import FIXTURES, HAND, browse, search, think

from lrat_ray.core.adapters import parse_trajectory
from lrat_ray.core.mining import MiningOptions, browsed_ranks, mine_trajectories, mine_trajectory
from lrat_ray.core.trajectory import Step, Trajectory
from lrat_ray.core.weighting import LengthHistogram, fit_weights
from lrat_ray.stages.mine import length_measure


def judge_useless(event):
    return "useless" not in event.reasoning


def summary(pairs):
    return [(p.query, p.turn, p.browse_turn, p.positive_id, p.negative_ids, p.rank, p.relevant) for p in pairs]


def test_attributed_mode_by_hand():
    result = mine_trajectory(HAND)
    assert summary(result.pairs) == [
        ("q1", 0, 1, "a", ["c"], 1, None),  # b is excluded: it was browsed later
        ("q2", 3, 4, "d", ["e"], 1, None),  # a is excluded: browsed earlier
        ("q1", 0, 6, "b", ["c"], 2, None),  # b came from q1, the latest search that returned it
        ("q3", 8, 9, "f", ["g"], 1, None),
    ]
    first = result.pairs[0]
    assert (first.reasoning, first.reasoning_length, first.correct) == ("useless page", 12, False)
    assert first.positive_text == "full text of a" and first.negative_texts == ["snippet c"]
    assert result.unattributed_browses == 0


def test_attributed_mode_without_excluding_browsed():
    pairs = mine_trajectory(HAND, MiningOptions(exclude_browsed=False)).pairs
    assert [p.negative_ids for p in pairs] == [["b", "c"], ["a", "e"], ["a", "c"], ["g"]]


def test_unattributed_and_duplicate_browses():
    traj = Trajectory(
        id="x",
        steps=(
            browse("z"),
            think("opened before any search"),
            search("q", "a", "b"),
            browse("a"),
            think("first look"),
            browse("a"),
            think("again"),
            browse("nowhere"),
        ),
    )
    result = mine_trajectory(traj)
    assert summary(result.pairs) == [("q", 2, 3, "a", ["b"], 1, None)]
    assert (result.unattributed_browses, result.duplicate_browses) == (2, 1)
    assert browsed_ranks(traj) == [1, 1]


@pytest.mark.parametrize("negatives", ["attributed", "since-last-positive"])
def test_failed_browses_never_become_positives(negatives):
    """A browse that returned nothing ("Document not found", an error, an empty page) gives no pair
    in either mode and is counted; a browse whose output was not logged still counts as a read."""
    traj = Trajectory(
        id="f",
        steps=(
            search("q", "a", "b", "c", "d"),
            Step("browse", doc_id="a", text="[Document not found] docid=a"),
            think("nothing there"),
            Step("browse", doc_id="b", text="   "),
            think("empty"),
            Step("browse", doc_id="c", text="Error: fetch failed"),
            think("error"),
            Step("browse", doc_id="d"),
            think("read, output not logged"),
        ),
    )
    result = mine_trajectory(traj, MiningOptions(negatives))
    assert [p.positive_id for p in result.pairs] == ["d"]
    assert result.failed_browses == 3


def test_since_last_positive_without_judge_by_hand():
    result = mine_trajectory(HAND, MiningOptions("since-last-positive"))
    assert summary(result.pairs) == [
        ("q1", 0, 1, "a", ["b", "c"], 1, None),  # a counts as relevant: window closes
        ("q2", 3, 4, "d", ["a", "e"], 1, None),  # b is in d's run, so not a negative
        ("q3", 8, 9, "f", ["g"], 1, None),
    ]
    assert result.unattributed_browses == 1  # b: no search since the last positive returned it


def test_since_last_positive_with_judge_by_hand():
    result = mine_trajectory(HAND, MiningOptions("since-last-positive"), judge=judge_useless)
    assert summary(result.pairs) == [
        ("q1", 0, 1, "a", ["b", "c"], 1, False),  # irrelevant: window stays open
        ("q2", 3, 4, "d", ["b", "a", "e", "c"], 1, True),  # run's irrelevant b, earlier a, then
        ("q2", 3, 6, "b", ["a", "e", "c"], 2, False),  # unbrowsed, latest search first
        ("q3", 8, 9, "f", ["g"], 1, True),
    ]


@pytest.mark.parametrize("judge_name", ["always_relevant", "crc_judge"])
def test_since_last_positive_equals_the_official_builder(real_trajectory_files, judge_name):
    """Golden pairs: the official LRAT builder (src/data_builder.py, Yuqi-Zhou/LRAT at 68259350)
    run on these ten trajectories with the embedded tokenizer, a corpus holding every doc id, and
    two judges: always RELEVANT, and RELEVANT unless crc32(reasoning) % 3 == 0. See
    tests/fixtures/README.md."""
    gold = json.loads((FIXTURES / "official_builder_pairs.json").read_text())[judge_name]
    judge = None if judge_name == "always_relevant" else (lambda e: zlib.crc32(e.reasoning.encode("utf-8")) % 3 != 0)
    measure = length_measure("embedded")
    ours = []
    for path in real_trajectory_files:
        traj = parse_trajectory(json.loads(path.read_text()))
        for pair in mine_trajectories([traj], MiningOptions("since-last-positive"), measure, judge).pairs:
            ours.append(
                {
                    "file": path.name,
                    "query": pair.query,
                    "pos_id": [pair.positive_id],
                    "neg_id": pair.negative_ids,
                    "reasoning_len": pair.reasoning_length,
                    "satisfied": pair.relevant is not False,
                }
            )
    expected = [{k: v for k, v in p.items() if k != "reweight_rate"} for p in gold["pairs"]]
    assert ours == expected
    params = fit_weights(LengthHistogram.of(p["reasoning_len"] for p in ours), zero_length="neutral")
    assert params.beta == gold["half_life"]
    assert params.mu_raw == pytest.approx(gold["mean_raw"], rel=1e-12)
    assert [params.weight(p["reasoning_len"]) for p in ours] == pytest.approx(
        [p["reweight_rate"] for p in gold["pairs"]], rel=1e-12
    )


def test_real_trajectories_attributed_pairs_checked_by_hand(real_trajectory_files):
    """1.json: one search, then get_document of its first hit, then reasoning, then the answer."""
    raw = json.loads(real_trajectory_files[1].read_text())
    traj = parse_trajectory(raw)
    (pair,) = mine_trajectory(traj).pairs
    search_ids = [h.doc_id for h in traj.steps[1].results]
    assert pair.positive_id == "9358159" and pair.rank == 1 and pair.turn == 1 and pair.browse_turn == 3
    assert pair.negative_ids == search_ids[1:]
    assert pair.reasoning == raw["result"][4]["output"]
    # 6.json visits 5059367 then 5059370, both returned by its third search (step 5)
    six = next(p for p in real_trajectory_files if p.name == "6.json")
    traj6 = parse_trajectory(json.loads(six.read_text()))
    first_two = mine_trajectory(traj6).pairs[:2]
    assert [(p.positive_id, p.turn, p.rank) for p in first_two] == [("5059367", 5, 1), ("5059370", 5, 2)]
    assert "5059370" not in first_two[0].negative_ids  # browsed, hence excluded
    assert len(first_two[0].negative_ids) == 8


def test_json_output_fixture_pairs():
    traj = parse_trajectory(json.loads((FIXTURES / "browsecomp_json_output.json").read_text()))
    assert summary(mine_trajectory(traj).pairs) == [
        ("1936 Winter Olympics host town", 1, 3, "d-101", ["d-103"], 1, None),
        ("1936 Winter Olympics host town", 1, 6, "102", ["d-103"], 2, None),
    ]
