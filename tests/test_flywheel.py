import csv
import json
import os

import pytest

from lrat_ray.flywheel import FlywheelConfig, run_flywheel


def _config(root, out, port, **extra):
    return FlywheelConfig(
        corpus=[str(root / "corpus.jsonl")], queries=str(root / "queries.jsonl"),
        train_qrels=str(root / "train.tsv"), heldout_qrels=str(root / "test.tsv"), output=str(out),
        iterations=2, train_tasks=20, document_max_length=64, index_workers=1, rollout_workers=2, port=port,
        agent={"max_turns": 3},
        train={"per_device_batch": 4, "group_size": 2, "workers": 2, "checkpoint_every": 1000,
               "learning_rate": 5e-5}, **extra)


def test_two_iteration_flywheel_resumes_after_being_stopped(ray_session, scifact_slice, tmp_path, monkeypatch,
                                                           serve_port):
    monkeypatch.chdir(tmp_path)  # a relative output directory, as users give it: workers must still find models
    out = tmp_path / "fw"
    with pytest.raises(SystemExit, match="iter-1/judge"):
        run_flywheel(_config(scifact_slice, "fw", serve_port, stop_after="iter-1/judge"))
    finished = {stage: os.path.getmtime(out / "iter-1" / stage / "_SUCCESS") for stage in ("rollout", "mine", "judge")}
    assert not (out / "iter-1" / "train").exists()

    rows = run_flywheel(_config(scifact_slice, "fw", serve_port))
    for stage, mtime in finished.items():  # resumed: finished stages were not run again
        assert os.path.getmtime(out / "iter-1" / stage / "_SUCCESS") == mtime
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    tasks = json.loads((out / "tasks.json").read_text())
    assert len(tasks["train"]) == 30 and len(tasks["heldout"]) == 12 and not set(tasks["train"]) & set(tasks["heldout"])
    heldout_runs = {p.stem for p in (out / "iter-2" / "eval" / "runs").iterdir()}
    trained_on = {p.stem for i in (1, 2) for p in (out / f"iter-{i}" / "rollout" / "runs").iterdir()}
    assert heldout_runs == set(tasks["heldout"]) and not heldout_runs & trained_on
    for row in rows:
        assert 0 <= row["evidence_recall"] <= 1 and row["avg_steps"] > 0 and 0 < row["ndcg@10"] <= 1
    assert rows[1]["train_pairs"] > 0 and rows[1]["judged_relevant"] <= rows[1]["train_pairs"]
    with open(out / "results.csv") as fh:
        assert [r["iteration"] for r in csv.DictReader(fh)] == ["0", "1", "2"]
    assert (out / "results.md").read_text().startswith("| iteration |")
    assert (out / "results.png").stat().st_size > 10_000
    manifest = json.loads((out / "iter-2" / "index" / "manifest.json").read_text())
    assert manifest["model"].endswith(os.path.join("iter-2", "train"))
    assert json.loads((out / "iter-2" / "train" / "train_report.json").read_text())["base_model"].endswith(
        os.path.join("fw", "iter-1", "train"))
