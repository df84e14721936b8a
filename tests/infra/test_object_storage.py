"""The pipeline on object storage: mine -> judge -> train -> index -> eval, every input and output an
``s3://`` URI with ``{version}`` directories, against a local S3 server (moto) speaking the S3 API.

The stages run in one child process with its own local Ray, because Ray workers take their
environment (here: the S3 endpoint and credentials) from the process that started Ray, as they
take it from the node on a cluster.
"""

import json
import logging
import os
import re
import subprocess
import sys
import textwrap

import pytest
from conftest import REAL_TRAJECTORIES

BUCKET = "lrat"


@pytest.fixture(scope="module")
def s3():
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per S3 request otherwise

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
    }
    client = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=BUCKET)
    yield env, client
    server.stop()


def _versions(stdout: str) -> dict[str, str]:
    return dict(re.findall(r"^lrat ([a-z-]+): .* -> (s3://\S+) \(version [0-9a-f]+\)$", stdout, re.M))


def _run(env: dict, script: str, tmp_path) -> subprocess.CompletedProcess:
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    child_env.update(
        env, HF_HUB_OFFLINE="1", LRAT_CACHE=str(tmp_path / "cache"), LRAT_SCRATCH=str(tmp_path / "scratch")
    )
    return subprocess.run(
        [sys.executable, "-c", script], env=child_env, capture_output=True, text=True, timeout=600, cwd=tmp_path
    )


def test_stages_read_and_write_s3_with_versioned_outputs(s3, scifact_slice, tmp_path):
    env, client = s3
    for path in sorted(REAL_TRAJECTORIES.glob("*.json")):
        client.upload_file(str(path), BUCKET, f"runs/{path.name}")
    for name in ("corpus.jsonl", "queries.jsonl", "test.tsv"):
        client.upload_file(str(scifact_slice / name), BUCKET, f"scifact/{name}")

    # One process, stage after stage; each stage's output URI comes from the previous stage's line.
    script = textwrap.dedent("""
        import contextlib, io, re, sys
        from lrat_ray.cli import main

        def run(*args):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                code = main(list(args))
            sys.stdout.write(out.getvalue())
            if code:
                sys.exit(code)
            return re.search(r"-> (s3://\\S+) \\(version [0-9a-f]+\\)", out.getvalue()).group(1)

        s3 = "s3://lrat"
        mine = run("mine", "--input", s3 + "/runs", "--output", s3 + "/mine/{version}", "--workers", "1")
        judge = run("judge", "--pairs", mine, "--output", s3 + "/judge/{version}")
        model = run("train", "--pairs", judge + "/pairs", "--output", s3 + "/model/{version}", "--workers", "1",
                    "--max-steps", "2", "--per-device-batch", "4", "--group-size", "2",
                    "--document-max-length", "64", "--checkpoint-every", "1")
        index = run("index", "--corpus", s3 + "/scifact/corpus.jsonl", "--model", model,
                    "--output", s3 + "/index/{version}", "--workers", "1", "--document-max-length", "64")
        run("eval", "--index", index, "--queries", s3 + "/scifact/queries.jsonl", "--qrels",
            s3 + "/scifact/test.tsv", "--output", s3 + "/eval/{version}")
        main(["mine", "--input", s3 + "/runs", "--output", s3 + "/mine/{version}", "--workers", "2"])
    """)
    reply = _run(env, script, tmp_path)
    assert reply.returncode == 0, reply.stdout[-3000:] + reply.stderr[-5000:]
    outputs = _versions(reply.stdout)
    assert set(outputs) == {"mine", "judge", "train", "index", "eval"}
    assert "already holds this result" in reply.stdout.rsplit("lrat mine", 1)[-1]  # the resubmitted mine

    keys = {
        o["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
        for o in page.get("Contents", [])
    }

    def manifest(stage):
        prefix = outputs[stage][len("s3://lrat/") :]
        assert f"{prefix}/_lrat_stage.json" in keys
        return json.loads(client.get_object(Bucket=BUCKET, Key=f"{prefix}/_lrat_stage.json")["Body"].read())

    def report(stage):  # the stage's result, recorded once (the manifest names it)
        prefix = outputs[stage][len("s3://lrat/") :]
        assert manifest(stage)["report"] == "report.json"
        return json.loads(client.get_object(Bucket=BUCKET, Key=f"{prefix}/report.json")["Body"].read())

    mined = manifest("mine")
    assert report("mine")["records_read"] == 10 and report("mine")["pairs"] == 28
    # lineage: each stage's input fingerprint is the version key of the stage before it
    assert manifest("judge")["inputs"]["pairs"] == f"stage:{mined['key']}"
    assert manifest("index")["inputs"]["model"] == f"stage:{manifest('train')['key']}"
    trained = outputs["train"][len("s3://lrat/") :]
    assert {f"{trained}/model.safetensors", f"{trained}/report.json"} <= keys
    assert any(k.startswith(f"{trained}.ray/") and "checkpoint_" in k for k in keys)  # Ray Train wrote to S3
    index = outputs["index"][len("s3://lrat/") :]
    assert f"{index}/manifest.json" in keys
    assert {f"{index}/shard-00000/{name}" for name in ("index.faiss", "documents.arrow", "shard.json")} <= keys
    metrics = report("eval")["metrics"]
    assert 0 < metrics["ndcg@10"] <= 1 and report("eval")["queries"] == 12
