import json

import pytest

from lrat_ray.core.trajectory import (
    TRAJECTORY_SCHEMA,
    SearchHit,
    Step,
    Trajectory,
    iter_arrow_table,
    to_arrow_table,
    trajectory_from_dict,
    trajectory_to_dict,
)
from lrat_ray.infra.errors import RecordError


def _example() -> Trajectory:
    return Trajectory(
        id="t1",
        question="Who wrote Dracula?",
        gold_answer="Bram Stoker",
        final_answer="Bram Stoker",
        correct=True,
        metadata={"model": "hand-built"},
        steps=(
            Step("think", text="A Gothic novel from 1897; search for its author."),
            Step(
                "search",
                query="Dracula novel author",
                results=(
                    SearchHit("d1", "Dracula", "Dracula is an 1897 Gothic horror novel by Bram Stoker.", 12.5),
                    SearchHit("d2", None, None, None),
                ),
            ),
            Step("browse", doc_id="d1", text="Dracula is an 1897 Gothic horror novel by Irish author Bram Stoker."),
            Step("think", text="The document names Bram Stoker as the author."),
            Step("answer", text="Bram Stoker"),
        ),
    )


def test_dict_round_trip_keeps_every_field():
    traj = _example()
    assert trajectory_from_dict(json.loads(json.dumps(trajectory_to_dict(traj)))) == traj


def test_arrow_round_trip_through_parquet(tmp_path):
    import pyarrow.parquet as pq

    table = to_arrow_table([_example()])
    assert table.schema.equals(TRAJECTORY_SCHEMA)
    pq.write_table(table, tmp_path / "t.parquet")
    rows = list(iter_arrow_table(pq.read_table(tmp_path / "t.parquet")))
    assert [trajectory_from_dict(r) for r in rows] == [_example()]


@pytest.mark.parametrize(
    "mutate, reason, field",
    [
        (lambda d: d.pop("id"), "missing_field", "id"),
        (lambda d: d.update(steps=[]), "empty_trajectory", "steps"),
        (lambda d: d["steps"][1].update(kind="calculator"), "unknown_step_kind", "steps[1].kind"),
        (lambda d: d["steps"][1].pop("query"), "missing_field", "steps[1].query"),
        (lambda d: d["steps"][1]["results"][0].update(score="high"), "wrong_type", "steps[1].results[0].score"),
        (lambda d: d.update(correct="yes"), "wrong_type", "correct"),
        (lambda d: d["steps"][2].update(doc_id=True), "wrong_type", "steps[2].doc_id"),
    ],
)
def test_validation_names_reason_and_field(mutate, reason, field):
    record = trajectory_to_dict(_example())
    mutate(record)
    with pytest.raises(RecordError) as info:
        trajectory_from_dict(record)
    assert (info.value.reason, info.value.field) == (reason, field)


def test_int_doc_ids_become_strings():
    record = trajectory_to_dict(_example())
    record["steps"][2]["doc_id"] = 7
    record["steps"][1]["results"][0]["doc_id"] = 7
    traj = trajectory_from_dict(record)
    assert traj.steps[2].doc_id == "7" and traj.steps[1].result_ids[0] == "7"
