"""One writer per stage output (lrat_ray/infra/claims.py): a live writer keeps others out, a killed one
does not lock the directory for good. Real processes and a real SIGKILL; no Ray."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from lrat_ray.infra import claims
from lrat_ray.infra.errors import LratError
from lrat_ray.infra.stage_run import run_stage
from lrat_ray.stages.mine import MineConfig

WRITER = textwrap.dedent("""
    import os, sys, time
    from lrat_ray.stages.mine import MineConfig
    from lrat_ray.infra.stage_run import run_stage

    def stage(config):
        os.makedirs(config.output, exist_ok=True)
        open(os.path.join(config.output, "part.txt"), "w").write("written by the first run")
        print("READY", flush=True)
        time.sleep(120)

    run_stage("mine", MineConfig(input=[sys.argv[1]], output=sys.argv[2]), stage)
""")


def _write(config):
    os.makedirs(config.output, exist_ok=True)
    with open(os.path.join(config.output, "part.txt"), "a") as fh:
        fh.write(f"\n{config.negative_mode}")
    return {"negatives": config.negative_mode}


@pytest.fixture
def running_writer(real_trajectory_files, tmp_path):
    """A run of `mine` in another process, stopped inside its stage with the output claimed."""
    out = tmp_path / "out"
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(real_trajectory_files[0]), str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "READY"
        yield child, MineConfig(input=[str(real_trajectory_files[0])], output=str(out))
    finally:
        child.kill()
        child.wait()


def test_a_second_writer_is_refused_while_the_first_lives_then_a_killed_run_resumes(running_writer, monkeypatch):
    child, config = running_writer
    monkeypatch.setattr(claims, "LOCK_WAIT_SECONDS", 1.0)
    started = time.monotonic()
    with pytest.raises(LratError, match=rf"being written by lrat mine version \w+ \(pid {child.pid} on "):
        run_stage("mine", config, _write)
    assert time.monotonic() - started >= 1.0  # it waited for the lock before refusing
    with pytest.raises(LratError, match=rf"pid {child.pid}"):  # another version is refused the same way
        run_stage("mine", dataclasses.replace(config, negative_mode="since-last-positive"), _write)
    assert open(os.path.join(config.output, "part.txt")).read() == "written by the first run"  # untouched

    child.send_signal(signal.SIGKILL)  # a crash: no exception handler runs, the claim still says running
    child.wait()
    assert json.loads(open(os.path.join(config.output, claims.CLAIM)).read())["state"] == "running"
    done = run_stage("mine", config, _write)  # same command: the dead run is recognised and resumed
    assert not done.skipped
    assert open(os.path.join(config.output, "part.txt")).read() == "written by the first run\nattributed"


def test_a_killed_run_is_cleared_by_a_run_of_another_version(running_writer):
    child, config = running_writer
    child.send_signal(signal.SIGKILL)
    child.wait()
    other = dataclasses.replace(config, negative_mode="since-last-positive")
    done = run_stage("mine", other, _write)
    assert done.result == {"negatives": "since-last-positive"}
    assert open(os.path.join(config.output, "part.txt")).read() == "\nsince-last-positive"  # the old file went
    recorded = json.loads(open(os.path.join(config.output, claims.CLAIM)).read())
    assert recorded["state"] == "finished" and recorded["key"] == done.key


def test_object_storage_claims_are_leases_renewed_by_a_heartbeat(tmp_path, monkeypatch):
    """No locks on object storage: a claim whose heartbeat is fresh is a live writer, one past the
    lease is dead; a holder renews its heartbeat."""
    monkeypatch.setattr(claims.storage, "is_remote", lambda uri: True)
    monkeypatch.setattr(claims, "LEASE_SECONDS", 0.8)
    out = str(tmp_path / "bucket-prefix")
    first = claims.Claim(out, "index", "k1")
    assert first.acquire() is None
    with pytest.raises(LratError, match=f"pid {os.getpid()} .*lease"):
        claims.Claim(out, "index", "k1").acquire()
    beat = json.loads(open(os.path.join(out, claims.CLAIM)).read())["heartbeat"]
    time.sleep(1.0)  # longer than the lease: only the heartbeat keeps the claim alive
    assert json.loads(open(os.path.join(out, claims.CLAIM)).read())["heartbeat"] > beat
    with pytest.raises(LratError, match="being written by"):
        claims.Claim(out, "index", "k2").acquire()
    first._stop_heartbeat()  # the holder stops renewing (as if it was killed) ...
    time.sleep(1.0)
    second = claims.Claim(out, "index", "k2")
    previous = second.acquire()  # ... and once the lease ran out, the next run takes over
    assert previous.why == "dead" and previous.claim["key"] == "k1" and not previous.same("index", "k2")
    second.finish()
    assert json.loads(open(os.path.join(out, claims.CLAIM)).read())["state"] == "finished"


def test_a_run_waits_for_a_writer_that_is_ending(running_writer, monkeypatch):
    """A stopped job's driver can outlive Ray's STOPPED by a few seconds: its resubmission waits
    for the lock instead of being refused, then resumes."""
    child, config = running_writer
    monkeypatch.setattr(claims, "LOCK_WAIT_SECONDS", 20.0)
    import threading

    threading.Timer(1.5, child.kill).start()
    started = time.monotonic()
    assert not run_stage("mine", config, _write).skipped
    assert 1.0 < time.monotonic() - started < 20.0
