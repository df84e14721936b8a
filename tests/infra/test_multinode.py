"""Multi-node operation on a real Ray cluster: a head and two worker nodes on this machine, each a
separate `ray start` process with its own resources, driven through the job submission client as
a platform team would (`ray job submit --working-dir . -- python jobs/<stage>.py ...`).

Worker nodes advertise the custom resource ``cpu_stage`` and the stages ask for it, so mining
actors and training workers land on worker nodes only (the head has a CPU for the drivers and
Ray Data's light tasks). Then a worker node is killed in the middle of mining and of training.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

import pyarrow.dataset as pads
import pytest
from conftest import REPO
from local_cluster import LocalCluster

sys.path.insert(0, str(REPO / "benchmarks"))
from synthetic import generate  # noqa: E402

pytestmark = pytest.mark.timeout(900)
STAGE = {"cpu_stage": 1}
FINAL = ("SUCCEEDED", "FAILED", "STOPPED")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = LocalCluster(tmp_path_factory.mktemp("cluster"))
    try:
        c.start_head()
        c.add_worker("worker-1", resources=STAGE)
        c.add_worker("worker-2", resources=STAGE)
        c.wait_for_nodes(3)
        yield c
    finally:
        c.stop()


def submit(cluster: LocalCluster, script: str, *args: str) -> str:
    return cluster.submit(
        f"python jobs/{script}.py " + shlex.join(args),
        runtime_env={
            "working_dir": str(REPO),
            "excludes": [".venv", ".git", "runs", "benchmarks", "tests", "*.egg-info", ".pytest_cache"],
        },
    )


def wait(cluster: LocalCluster, job_id: str, timeout_s: float = 400, until=None) -> str:
    """Wait until the job ends (returns its status) or ``until()`` is true (returns "RUNNING")."""
    client = cluster.jobs()
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        status = str(client.get_job_status(job_id)).split(".")[-1]
        if status in FINAL:
            return status
        if until is not None and until():
            return "RUNNING"
        time.sleep(0.3)
    client.stop_job(job_id)
    raise TimeoutError(f"job {job_id} still running after {timeout_s}s:\n{client.get_job_logs(job_id)[-3000:]}")


def logs(cluster: LocalCluster, job_id: str) -> str:
    return cluster.jobs().get_job_logs(job_id)


@pytest.fixture(scope="module")
def synthetic_runs(tmp_path_factory):
    """4,000 trajectories (400 copies of each real one) in 40 files: enough work to kill a node in."""
    directory = tmp_path_factory.mktemp("synthetic-runs")
    assert generate(4000, 40, directory) == 4000
    return directory


def test_mining_job_survives_losing_a_worker_node(cluster, synthetic_runs, tmp_path, real_trajectory_files):
    out = tmp_path / "mine"
    job = submit(
        cluster,
        "mine",
        "--input",
        str(synthetic_runs),
        "--output",
        str(out),
        "--resources",
        json.dumps(STAGE),
        "--files-per-task",
        "1",
    )
    staging = out / "_staging"
    status = wait(cluster, job, until=lambda: staging.exists() and len(list(staging.glob("*/*.json"))) >= 2)
    assert status == "RUNNING", logs(cluster, job)
    cluster.kill("worker-2")  # mid-run: groups are done, in flight and still queued
    try:
        assert wait(cluster, job) == "SUCCEEDED", logs(cluster, job)[-4000:]
        report = json.loads((out / "report.json").read_text())
        assert report["records_read"] == report["records_used"] == 4000 and not report["records_skipped"]
        pairs = pads.dataset(out / "pairs").to_table(columns=["trajectory_id", "browse_turn"]).to_pylist()
        keys = {(p["trajectory_id"], p["browse_turn"]) for p in pairs}
        # The 10 real trajectories give 28 pairs (test_mining pins them); each appears 400 times.
        assert len(pairs) == len(keys) == report["pairs"] == 400 * 28
        manifest = json.loads((out / "_lrat_stage.json").read_text())
        assert manifest["stage"] == "mine" and report["pairs"] == 400 * 28

        again = submit(
            cluster,
            "mine",
            "--input",
            str(synthetic_runs),
            "--output",
            str(out),
            "--resources",
            json.dumps(STAGE),
            "--files-per-task",
            "1",
            "--workers",
            "1",
        )
        assert wait(cluster, again) == "SUCCEEDED"
        assert "already holds this result" in logs(cluster, again)
        assert json.loads((out / "_lrat_stage.json").read_text())["finished"] == manifest["finished"]
    finally:
        cluster.add_worker("worker-2", resources=STAGE)  # as a cluster manager would replace it
        cluster.wait_for_nodes(3)


def mean_loss(model_dir, examples):
    """The weighted InfoNCE of a model on examples (1 positive + 1 negative each), weights 1."""
    import torch

    from lrat_ray.core.loss import weighted_info_nce
    from lrat_ray.models.encoder import Encoder, spec_for

    encoder = Encoder(spec_for(model_dir, document_max_length=128))
    q = torch.tensor(encoder.encode_queries([e["query"] for e in examples]))
    docs = [t for e in examples for t in [e["positive"], *e["negatives"][:1]]]
    d = torch.tensor(encoder.encode_documents(docs))
    return weighted_info_nce(q, d, torch.ones(len(examples)), 0.05, 2).item()


def test_training_job_resumes_from_its_checkpoint_after_losing_a_worker_node(cluster, tmp_path):
    """Real LRAT pairs, two DDP workers, one on each worker node (each asks for the node's one
    ``cpu_stage``); the node of one dies after the first checkpoint; a replacement node joins and
    the worker group restarts from the latest checkpoint. The model learned (lower loss on the
    pairs than the base model) and loads in lrat and sentence-transformers with equal vectors."""
    import numpy as np
    from conftest import SHARED_DATA
    from sentence_transformers import SentenceTransformer

    from lrat_ray.models.embedded import embedded_model_path
    from lrat_ray.models.encoder import Encoder, spec_for
    from lrat_ray.stages.train import TrainConfig, load_examples

    pairs = SHARED_DATA / "lrat" / "train_pairs_sample.jsonl"
    out = tmp_path / "model"
    args = (
        "--pairs",
        str(pairs),
        "--output",
        str(out),
        "--workers",
        "2",
        "--resources",
        json.dumps(STAGE),
        "--per-device-batch",
        "2",
        "--group-size",
        "2",
        "--epochs",
        "5",
        "--learning-rate",
        "1e-4",
        "--warmup-ratio",
        "0",
        "--document-max-length",
        "128",
        "--checkpoint-every",
        "1",
        "--max-failures",
        "3",
    )
    job = submit(cluster, "train", *args)
    checkpoints = Path(f"{out}.ray")
    # a checkpoint counts once Ray Train registered it (before that a restart would begin at step 0)
    status = wait(cluster, job, until=lambda: any(checkpoints.glob("*/checkpoint_manager_snapshot.json")))
    assert status == "RUNNING", logs(cluster, job)
    cluster.kill("worker-1")
    cluster.add_worker("worker-1b", resources=STAGE)
    assert wait(cluster, job) == "SUCCEEDED", logs(cluster, job)[-4000:]
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == report["total_steps"] == 10  # 8 usable pairs / (2 workers x 2) x 5 epochs
    # restarted at a checkpoint
    assert (report["final_metrics"]["resumed_from_step"] or 0) >= 1, logs(cluster, job)[-6000:]
    assert json.loads((out / "_lrat_stage.json").read_text())["stage"] == "train"
    examples = load_examples(TrainConfig(pairs=[str(pairs)], output="x"))
    assert report["examples"] == len(examples) == 10
    assert mean_loss(str(out), examples) < mean_loss(embedded_model_path(), examples)
    text = ["Bedřich Havlíček was a Czech historian."]
    ours = Encoder(spec_for(str(out))).encode_documents(text)
    np.testing.assert_allclose(ours, SentenceTransformer(str(out), device="cpu").encode(text), atol=2e-5)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_training_job_killed_with_its_driver_resumes_when_resubmitted(cluster, tmp_path):
    """`ray job stop` kills the driver (and with it the Train controller and workers) after the
    first checkpoint; the same command submitted again derives the same run name from the version
    key and resumes from that checkpoint instead of starting over."""
    from conftest import SHARED_DATA

    out = tmp_path / "model"
    args = (
        "--pairs",
        str(SHARED_DATA / "lrat" / "train_pairs_sample.jsonl"),
        "--output",
        str(out),
        "--workers",
        "1",
        "--resources",
        json.dumps(STAGE),
        "--per-device-batch",
        "2",
        "--group-size",
        "2",
        "--epochs",
        "3",
        "--document-max-length",
        "64",
        "--checkpoint-every",
        "1",
    )
    checkpoints = Path(f"{out}.ray")
    first = submit(cluster, "train", *args)
    status = wait(cluster, first, until=lambda: any(checkpoints.glob("*/checkpoint_manager_snapshot.json")))
    assert status == "RUNNING", logs(cluster, first)
    cluster.jobs().stop_job(first)
    assert wait(cluster, first) == "STOPPED"
    assert (out / "_lrat_stage.started.json").exists() and not (out / "_lrat_stage.json").exists()
    second = submit(cluster, "train", *args)
    assert wait(cluster, second) == "SUCCEEDED", logs(cluster, second)[-4000:]
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == report["total_steps"] == 15  # 10 pairs / 2 per step x 3 epochs
    assert report["final_metrics"]["resumed_from_step"] >= 1, logs(cluster, second)[-6000:]
    key = json.loads((out / "_lrat_stage.json").read_text())["key"]
    # one run, continued (beside it rank 0's progress report for the driver's console)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["progress.json", f"train-{key}"]


def test_index_job_stopped_and_resubmitted_keeps_its_finished_shards(cluster, scifact_slice, tmp_path):
    """`ray job stop` once the first shard is written; the resubmitted job keeps that shard (and
    any other finished one) and builds only the rest."""
    out = tmp_path / "index"
    args = (
        "--corpus",
        str(scifact_slice / "corpus.jsonl"),
        "--output",
        str(out),
        "--shards",
        "6",
        "--workers",
        "1",
        "--resources",
        json.dumps(STAGE),
        "--document-max-length",
        "128",
        "--batch-size",
        "8",
    )
    first = submit(cluster, "index", *args)
    status = wait(cluster, first, until=lambda: any(out.glob("shard-*/shard.json")))
    assert status == "RUNNING", logs(cluster, first)
    cluster.jobs().stop_job(first)
    assert wait(cluster, first) == "STOPPED"
    finished = len(list(out.glob("shard-*/shard.json")))
    assert 1 <= finished < 6 and not (out / "manifest.json").exists()
    second = submit(cluster, "index", *args)
    assert wait(cluster, second) == "SUCCEEDED", logs(cluster, second)[-4000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["shards"]) == 6 and finished <= manifest["embeddings_reused"] < 6
    assert manifest["count"] == len((scifact_slice / "corpus.jsonl").read_text().splitlines())


def test_flywheel_job_stopped_and_resubmitted_skips_finished_stages(cluster, scifact_slice, tmp_path):
    """One flywheel iteration as a Ray job; the first submission stops after mining (as a job killed
    mid-way would), the resubmission resumes at the judge, a third finds the output finished."""
    out = tmp_path / "flywheel"
    config = {
        "flywheel": {
            "corpus": [str(scifact_slice / "corpus.jsonl")],
            "queries": str(scifact_slice / "queries.jsonl"),
            "train_qrels": str(scifact_slice / "train.tsv"),
            "heldout_qrels": str(scifact_slice / "test.tsv"),
            "output": str(out),
            "iterations": 1,
            "train_tasks": 4,
            "heldout_tasks": 3,
            "document_max_length": 32,
            "index": {"workers": 1},
            "rollout_workers": 2,
            "port": 0,
            "serve_proxy_location": "HeadOnly",
            "agent": {"max_turns": 2},
            "train": {"per_device_batch": 4, "group_size": 2, "workers": 1, "checkpoint_every": 1000},
            "resources": {"index": STAGE, "mine": STAGE, "train": STAGE},
        }
    }
    config_file = tmp_path / "flywheel.yaml"
    config_file.write_text(json.dumps(config))  # JSON is YAML

    first = submit(cluster, "flywheel", "--config", str(config_file), "--stop-after", "iter-1/mine")
    assert wait(cluster, first) == "FAILED"
    assert "stopping after iter-1/mine" in logs(cluster, first)
    finished = {s: (out / "iter-1" / s / "_lrat_stage.json").stat().st_mtime for s in ("rollout", "mine")}
    assert not (out / "iter-1" / "judge").exists()

    second = submit(cluster, "flywheel", "--config", str(config_file))
    assert wait(cluster, second) == "SUCCEEDED", logs(cluster, second)[-4000:]
    assert {s: (out / "iter-1" / s / "_lrat_stage.json").stat().st_mtime for s in finished} == finished
    judge = json.loads((out / "iter-1" / "judge" / "_lrat_stage.json").read_text())
    mine = json.loads((out / "iter-1" / "mine" / "_lrat_stage.json").read_text())
    assert judge["inputs"]["pairs"] == f"stage:{mine['key']}"  # keys chain from stage to stage
    assert json.loads((out / "_lrat_stage.json").read_text())["report"] == "report.json"
    rows = json.loads((out / "report.json").read_text())
    assert [r["iteration"] for r in rows] == [0, 1]
    assert 0 < rows[1]["judged_relevant"] <= rows[1]["train_pairs"]
    for row in rows:
        assert 0 <= row["evidence_recall"] <= 1 and row["avg_steps"] > 0 and 0 < row["ndcg@10"] <= 1
        for metric in ("success_rate", "evidence_recall", "ndcg@10", "recall@100"):  # bootstrap intervals
            assert row[f"{metric}_lo"] <= row[metric] <= row[f"{metric}_hi"], (metric, row)
    assert 0 <= rows[1]["ndcg@10_p_vs_0"] <= 1 and "95% bootstrap interval" in (out / "results.md").read_text()

    def manifest(iteration, stage):  # every sub-stage's key chains from its inputs' keys
        return json.loads((out / f"iter-{iteration}" / stage / "_lrat_stage.json").read_text())

    assert manifest(1, "rollout")["inputs"]["index"] == f"stage:{manifest(0, 'index')['key']}"
    assert manifest(1, "train")["inputs"]["pairs"] == [f"stage:{manifest(1, 'judge')['key']}"]
    assert manifest(1, "index")["inputs"]["model"] == f"stage:{manifest(1, 'train')['key']}"
    assert manifest(1, "eval")["inputs"]["index"] == f"stage:{manifest(1, 'index')['key']}"
    assert json.loads((out / "iter-1" / "mine" / "report.json").read_text())["zero_length"] == "neutral"
    tasks = json.loads((out / "tasks.json").read_text())
    assert len(tasks["train"]) == 30 and len(tasks["heldout"]) == 3 and not set(tasks["train"]) & set(tasks["heldout"])
    heldout_runs = {p.stem for p in (out / "iter-1" / "eval" / "runs").iterdir()}
    trained_on = {p.stem for p in (out / "iter-1" / "rollout" / "runs").iterdir()}
    assert heldout_runs == set(tasks["heldout"]) and len(trained_on) == 4 and not heldout_runs & trained_on
    assert (out / "results.md").read_text().startswith("| iteration |")
    assert (out / "results.png").stat().st_size > 10_000
    manifest = json.loads((out / "iter-1" / "index" / "manifest.json").read_text())
    assert manifest["model"] == str(out / "iter-1" / "train")

    third = submit(cluster, "flywheel", "--config", str(config_file))
    assert wait(cluster, third) == "SUCCEEDED"
    assert "already holds this result" in logs(cluster, third)
