"""Versioned, immutable stage outputs (lrat_ray/infra/stage_run.py), on the real trajectory files; no Ray."""

import dataclasses
import json
import os
import shutil

import pytest

from lrat_ray.infra.errors import LratError
from lrat_ray.infra.stage_run import run_stage, stage_key
from lrat_ray.stages.mine import MineConfig


@pytest.fixture
def inputs(tmp_path, real_trajectory_files):
    directory = tmp_path / "runs"
    directory.mkdir()
    for path in real_trajectory_files[:3]:
        shutil.copy(path, directory / path.name)
    return directory


class Recorder:
    """A stand-in stage: writes one file into the output and returns a result."""

    def __init__(self, fail_with=None):
        self.calls = 0
        self.fail_with = fail_with

    def __call__(self, config):
        self.calls += 1
        os.makedirs(config.output, exist_ok=True)
        with open(os.path.join(config.output, "part.txt"), "w") as fh:
            fh.write(config.negative_mode)
        if self.fail_with:
            raise self.fail_with
        return {"negatives": config.negative_mode, "calls": self.calls}


def test_version_key_follows_content_not_runtime_options(inputs):
    base = MineConfig(input=[str(inputs)], output="o")
    key = stage_key("mine", base)
    assert (
        stage_key(
            "mine",
            dataclasses.replace(
                base, workers=7, resources={"cpu_stage": 1}, address="x:1", files_per_task=3, output="elsewhere"
            ),
        )
        == key
    )
    assert stage_key("mine", dataclasses.replace(base, negative_mode="since-last-positive")) != key
    assert stage_key("judge", base) != key
    first = sorted(inputs.iterdir())[0]
    first.write_text(first.read_text() + "\n")  # the input changed: a new version
    assert stage_key("mine", base) != key


def test_finished_output_is_reused_and_other_versions_refused(inputs, tmp_path):
    stage = Recorder()
    config = MineConfig(input=[str(inputs)], output=str(tmp_path / "mine" / "{version}"))
    done = run_stage("mine", config, stage)
    assert not done.skipped and done.output == str(tmp_path / "mine" / stage_key("mine", config))
    manifest = json.loads((tmp_path / "mine" / done.key / "_lrat_stage.json").read_text())
    assert manifest["key"] == done.key and manifest["report"] == "report.json"  # the result is recorded once:
    assert json.loads((tmp_path / "mine" / done.key / "report.json").read_text()) == {
        "negatives": "attributed",
        "calls": 1,
    }
    assert manifest["inputs"]["input"][0].startswith("dir:") and manifest["versions"]["lrat_ray"]

    again = run_stage("mine", dataclasses.replace(config, workers=1), stage)  # runtime options differ only
    assert again.skipped and again.result == done.result and stage.calls == 1
    # An output finished by an earlier version (the result inside the manifest, no report file) still reads.
    finished = tmp_path / "mine" / done.key
    (finished / "report.json").unlink()
    old = {k: v for k, v in manifest.items() if k != "report"}
    (finished / "_lrat_stage.json").write_text(json.dumps({**old, "result": {"calls": 1, "from": "manifest"}}))
    assert run_stage("mine", config, stage).result == {"calls": 1, "from": "manifest"} and stage.calls == 1

    other = dataclasses.replace(config, output=done.output, negative_mode="since-last-positive")
    with pytest.raises(LratError, match="immutable"):
        run_stage("mine", other, stage)
    placed = run_stage("mine", dataclasses.replace(other, output=config.output), stage)  # {version}: a new dir
    assert placed.output != done.output and stage.calls == 2


def test_failed_run_is_resumed_or_cleared_and_bad_starts_leave_nothing(inputs, tmp_path):
    config = MineConfig(input=[str(inputs)], output=str(tmp_path / "out"))
    with pytest.raises(RuntimeError):
        run_stage("mine", config, Recorder(fail_with=RuntimeError("node lost")))
    claim = json.loads((tmp_path / "out" / "_lrat_stage.started.json").read_text())
    assert claim["state"] == "failed" and claim["error"] == "RuntimeError: node lost" and claim["pid"] == os.getpid()
    resumed = Recorder()  # the same command again: goes on in the same directory, its file still there
    assert not run_stage("mine", config, resumed).skipped and resumed.calls == 1

    # A strict stop (an LratError after writing) releases the directory to the corrected command,
    # whose other options clear what the failed run left.
    failing = dataclasses.replace(config, output=str(tmp_path / "strict"), strict=True)
    with pytest.raises(LratError, match="bad record"):
        run_stage("mine", failing, Recorder(fail_with=LratError("bad record")))
    corrected = Recorder()
    done = run_stage("mine", dataclasses.replace(failing, strict=False, negative_mode="since-last-positive"), corrected)
    assert corrected.calls == 1 and done.result["negatives"] == "since-last-positive"
    assert (tmp_path / "strict" / "part.txt").read_text() == "since-last-positive"

    fresh = dataclasses.replace(config, output=str(tmp_path / "fresh"))
    with pytest.raises(LratError, match="bad input"):
        run_stage("mine", fresh, lambda c: (_ for _ in ()).throw(LratError("bad input")))
    assert not (tmp_path / "fresh").exists()  # the claim is withdrawn: the corrected command may run


def test_directory_with_foreign_files_is_refused(inputs, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(LratError, match="no lrat mine run wrote"):
        run_stage("mine", MineConfig(input=[str(inputs)], output=str(tmp_path / "taken")), Recorder())
