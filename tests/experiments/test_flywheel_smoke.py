"""One flywheel iteration end to end in the fast tier: a tiny real corpus, the simulated agent,
the keyword judge and a few training steps. It checks the wiring (every stage runs, hands its
output to the next, and records its result once), not retrieval quality."""

import json

from lrat_ray.experiments.flywheel import FlywheelConfig, run_flywheel
from lrat_ray.infra.stage_run import run_stage


def test_one_flywheel_iteration_runs_every_stage_and_trains_on_judged_pairs(ray_session, scifact_slice, tmp_path):
    out = tmp_path / "flywheel"
    config = FlywheelConfig(
        corpus=[str(scifact_slice / "corpus.jsonl")],
        queries=str(scifact_slice / "queries.jsonl"),
        train_qrels=str(scifact_slice / "train.tsv"),
        heldout_qrels=str(scifact_slice / "test.tsv"),
        output=str(out),
        iterations=1,
        train_tasks=6,
        heldout_tasks=4,
        document_max_length=32,
        rollout_workers=1,
        port=0,
        index={"workers": 1},
        agent={"max_turns": 2},
        train={"per_device_batch": 4, "group_size": 2, "workers": 1, "epochs": 1, "checkpoint_every": 1000},
    )
    rows = run_stage("flywheel", config, run_flywheel).result
    assert [r["iteration"] for r in rows] == [0, 1]
    assert json.loads((out / "report.json").read_text()) == rows  # the flywheel's record, written once
    trained = rows[1]
    assert 0 < trained["judged_relevant"] <= trained["train_pairs"]
    for row in rows:
        assert 0 <= row["evidence_recall"] <= 1 and row["avg_steps"] > 0 and 0 < row["ndcg@10"] <= 1
    stages = ("rollout", "mine", "judge", "train", "index", "eval")
    for stage in stages:  # each sub-stage finished, with its report beside its manifest
        manifest = json.loads((out / "iter-1" / stage / "_lrat_stage.json").read_text())
        assert manifest["stage"] == stage and (out / "iter-1" / stage / manifest["report"]).is_file()
    judged = json.loads((out / "iter-1" / "judge" / "report.json").read_text())
    assert judged["backend"] == "keyword" and judged["pairs"] == trained["train_pairs"]
    train = json.loads((out / "iter-1" / "train" / "report.json").read_text())
    assert train["steps"] >= 1 and train["examples"] == trained["judged_relevant"]
    index = json.loads((out / "iter-1" / "index" / "manifest.json").read_text())
    assert index["model"] == str(out / "iter-1" / "train")  # the next iteration searches the new model
