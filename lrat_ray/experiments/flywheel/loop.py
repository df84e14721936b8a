"""The flywheel loop: iteration 0 measures the starting model; every later iteration rolls out,
mines, judges, trains, re-indexes, swaps the served index and evaluates, each sub-stage under
run_stage in its own directory."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import time
from dataclasses import dataclass

from lrat_ray.experiments.flywheel.config import FlywheelConfig
from lrat_ray.experiments.flywheel.results import intervals, write_results
from lrat_ray.infra import storage
from lrat_ray.infra.config import checked, option
from lrat_ray.infra.errors import LratError
from lrat_ray.registry import STAGES

log = logging.getLogger(__name__)


@dataclass
class FlywheelState:
    config: FlywheelConfig
    train_ids: list[str]
    heldout_ids: list[str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    answers: dict[str, str] = dataclasses.field(default_factory=dict)
    serve_settings: object = None
    agent_llm: tuple | None = None  # (endpoint, what was served) while the agents' LLM is deployed


@dataclass
@checked
class AgentStage:
    """What a flywheel rollout (or held-out evaluation) is, for its version key: the agents, the
    tasks and the index they search (a finished stage: its key chains into this one's)."""

    output: str = option(help="stage directory")
    index: str = option(help="index the served retriever searches", path=True)
    tasks: list[str] = option(help="task ids")
    agent: dict = option(help="AgentConfig fields")


def _run(state: FlywheelState, iteration: int, name: str, config, run) -> dict:
    """One sub-stage under :func:`lrat_ray.infra.stage_run.run_stage` (manifest, version key chained from
    its inputs, resume or skip), then the ``stop_after`` check."""
    from lrat_ray.infra.stage_run import run_stage

    started = time.time()
    staged = run_stage(name, config, run)
    done = "already done" if staged.skipped else f"{time.time() - started:.0f}s"
    summary = _heldout_summary if name == "eval" else STAGES[name].summary  # eval: held-out rollouts + IR
    log.info("iter-%d %-7s %s (%s)", iteration, name, summary(staged.result), done)
    _stop_here(state, iteration, name)
    return staged.result


def _heldout_summary(r: dict) -> str:
    return (
        f"held-out nDCG@10 {r.get('ndcg@10', 0):.4f}, evidence recall {r.get('evidence_recall') or 0:.4f}, "
        f"success {r.get('success_rate') or 0:.3f}"
    )


def _split(config: FlywheelConfig, queries: dict[str, str]) -> tuple[list[str], list[str], dict]:
    from lrat_ray.agents.tasks import split_task_ids
    from lrat_ray.core.datasets import load_qrels

    train_qrels = load_qrels(config.train_qrels)
    if config.heldout_qrels:
        heldout_qrels = load_qrels(config.heldout_qrels)
        train_ids = sorted(q for q in train_qrels if q in queries)
        heldout_ids = sorted(q for q in heldout_qrels if q in queries and q not in train_qrels)
        qrels = {**train_qrels, **heldout_qrels}
    else:
        ids = sorted(q for q in train_qrels if q in queries)
        train_ids, heldout_ids = split_task_ids(ids, config.heldout_fraction, config.seed)
        qrels = train_qrels
    if config.heldout_tasks:
        count = min(config.heldout_tasks, len(heldout_ids))
        heldout_ids = sorted(random.Random(config.seed).sample(heldout_ids, count))
    if set(train_ids) & set(heldout_ids):
        raise AssertionError("held-out tasks leaked into training")
    return train_ids, heldout_ids, qrels


def _stage(state: FlywheelState, iteration: int, name: str) -> str:
    return os.path.join(state.config.output, f"iter-{iteration}", name)


def _stop_here(state: FlywheelState, iteration: int, name: str) -> None:
    if state.config.stop_after == f"iter-{iteration}/{name}":
        raise SystemExit(f"stopping after iter-{iteration}/{name} (stop_after)")


def _model_of(state: FlywheelState, iteration: int) -> str:
    return state.config.model if iteration == 0 else _stage(state, iteration, "train")


def _index_dir(state: FlywheelState, iteration: int) -> str:
    return _stage(state, iteration, "index")


def _build_index(state: FlywheelState, iteration: int) -> None:
    from lrat_ray.stages.index import run_index

    _run(
        state,
        iteration,
        "index",
        state.config.stage_config("index", output=_index_dir(state, iteration), model=_model_of(state, iteration)),
        run_index,
    )


def _deploy(state: FlywheelState, iteration: int) -> str:
    from lrat_ray.infra.runtime import free_port
    from lrat_ray.serving.config import ServeConfig
    from lrat_ray.serving.retriever import deploy, swap_index

    index = _index_dir(state, iteration)
    if state.serve_settings is None:
        port = state.config.port or free_port()
        # The replica reserves no CPU: it shares the machine with the stages (rollouts use it; training
        # and indexing run while it is idle), and a reservation would starve a 2-CPU machine.
        state.serve_settings = ServeConfig(
            index=index,
            port=port,
            replica_cpus=0,
            resources=state.config.resources_of("serve"),
            proxy_location=state.config.serve_proxy_location,
        )
        url = deploy(state.serve_settings)
    else:
        state.serve_settings = swap_index(state.serve_settings, index)
        url = f"http://{state.serve_settings.host}:{state.serve_settings.port}"
    return url


def _agent_stage(state: FlywheelState, iteration: int, name: str, ids: list[str]) -> AgentStage:
    return AgentStage(
        output=_stage(state, iteration, name),
        index=_index_dir(state, iteration - (name == "rollout")),
        tasks=ids,
        agent={"seed": state.config.seed, **state.config.agent, "llm": state.config.agent_llm},
    )


def _rollout(state: FlywheelState, url: str, ids: list[str], path: str) -> dict:
    from lrat_ray.agents.rollout import ACTOR_CPUS, run_rollouts
    from lrat_ray.agents.tasks import load_tasks
    from lrat_ray.infra.runtime import actor_resources

    agent = state.config.stage_config("agent")
    tasks = load_tasks(state.queries, state.qrels, ids, state.answers, agent.answer_with, agent.evidence_grade)
    per_worker = actor_resources(ACTOR_CPUS, 0, state.config.resources_of("rollout"))
    agent, served = _agent_llm(state, agent)
    summary = run_rollouts(
        url, tasks, agent, os.path.join(path, "runs"), state.config.rollout_workers, per_worker=per_worker
    )
    if served:
        summary["agent_llm"] = served
    if summary["failed"]:
        log.warning("%d rollouts failed: %s", summary["failed"], summary["errors"][:3])
    return summary


def _agent_llm(state: FlywheelState, agent):
    """The agent config pointed at the agents' LLM, served on Ray Serve while agents run, and what
    was served (model, dtype, hardware). It stays deployed from one agent stage to the next (the
    held-out evaluation of iteration i, then the rollouts of i+1: one engine start, not two) and is
    released (:func:`_release_agent_llm`) before the stages that need the machine it holds (a vLLM
    judge, training, indexing)."""
    if not state.config.serves_agent_llm:
        return agent, None
    llm = state.config.stage_config("agent_llm")
    if state.agent_llm is None:
        from lrat_ray.infra.hardware import describe, engine_dtype
        from lrat_ray.infra.runtime import gpus_or_cpu
        from lrat_ray.serving.llm import deploy_llm

        endpoint = deploy_llm(llm, state.serve_settings.host, state.serve_settings.port)
        state.agent_llm = (
            endpoint,
            {
                "model": llm.model,
                "dtype": engine_dtype(llm.dtype, gpus_or_cpu(llm.gpus_per_replica)),
                "hardware": describe(),
            },
        )
    endpoint, served = state.agent_llm
    return dataclasses.replace(agent, endpoint=endpoint, model=llm.name), served


def _release_agent_llm(state: FlywheelState) -> None:
    if state.agent_llm is not None:
        from lrat_ray.serving.llm import undeploy_llm

        undeploy_llm()
        state.agent_llm = None


def _evaluate(state: FlywheelState, iteration: int, url: str) -> dict:

    return _run(
        state,
        iteration,
        "eval",
        _agent_stage(state, iteration, "eval", state.heldout_ids),
        lambda stage: _score_heldout(state, iteration, url, stage.output),
    )


def _score_heldout(state: FlywheelState, iteration: int, url: str, path: str) -> dict:
    from lrat_ray.core.adapters import read_trajectories
    from lrat_ray.core.metrics import score_run, score_trajectories
    from lrat_ray.stages.eval import retrieve

    summary = _rollout(state, url, state.heldout_ids, path)
    runs = [traj for uri in storage.expand_inputs([os.path.join(path, "runs")]) for _, traj in read_trajectories(uri)]
    bad = [t for t in runs if isinstance(t, Exception)]
    if bad:  # these files are our own rollouts: a bad one is a bug, never data to skip
        raise bad[0]
    evidence_grade = state.config.stage_config("agent").evidence_grade
    evidence = {q: {d: 1 for d, g in state.qrels.get(q, {}).items() if g >= evidence_grade} for q in state.heldout_ids}
    agent_metrics = score_trajectories(runs, evidence)
    run = retrieve(_index_dir(state, iteration), {q: state.queries[q] for q in state.heldout_ids}, 100)
    scored = score_run(run, {q: state.qrels[q] for q in state.heldout_ids}, [10, 100])
    ir = scored["metrics"]
    metrics = {
        "iteration": iteration,
        "model": _model_of(state, iteration),
        "success_rate": agent_metrics["success_rate"],
        "evidence_recall": agent_metrics["evidence_recall"],
        "avg_steps": agent_metrics["avg_steps"],
        "ndcg@10": ir["ndcg@10"],
        "recall@100": ir["recall@100"],
        **intervals(agent_metrics["per_task"], scored["per_query"]),
        "heldout_tasks": len(state.heldout_ids),
        "rollout": summary,
    }
    storage.write_json_atomic(os.path.join(path, "per_query.json"), scored["per_query"])
    base_path = os.path.join(_stage(state, 0, "eval"), "per_query.json")
    if iteration > 0 and os.path.isfile(base_path):
        from lrat_ray.core.metrics import paired_comparison

        with open(base_path) as fh:
            metrics["ndcg@10_p_vs_0"] = paired_comparison(json.load(fh), scored["per_query"], "ndcg@10")["t_test_p"]
    storage.write_json_atomic(os.path.join(path, "metrics.json"), metrics)
    return metrics


def _train_iteration(state: FlywheelState, iteration: int, url: str) -> dict:
    from lrat_ray.stages.judge import run_judge
    from lrat_ray.stages.mine import run_mine
    from lrat_ray.stages.train import run_train

    config = state.config
    info: dict = {}
    ids = state.train_ids
    if config.train_tasks:
        ids = sorted(random.Random(config.seed * 1000 + iteration).sample(ids, min(config.train_tasks, len(ids))))
    rollout = _agent_stage(state, iteration, "rollout", ids)
    _run(state, iteration, "rollout", rollout, lambda stage: _rollout(state, url, ids, stage.output))
    _release_agent_llm(state)  # the judge, training and indexing need the machine it holds
    mine_dir, judge_dir = _stage(state, iteration, "mine"), _stage(state, iteration, "judge")
    runs = [os.path.join(rollout.output, "runs")]
    judge = (
        config.stage_config("judge", output=judge_dir, pairs=None, events=runs)
        if config.judges_events
        else config.stage_config("judge", output=judge_dir, pairs=mine_dir)
    )
    mine = config.stage_config("mine", input=runs, output=mine_dir, labels=judge_dir if config.judges_events else None)
    order = [("judge", judge, run_judge), ("mine", mine, run_mine)]
    if not config.judges_events:  # mine first, then judge the mined pairs
        order.reverse()
    results = {name: _run(state, iteration, name, stage_config, run) for name, stage_config, run in order}
    pairs_dir = mine_dir if config.judges_events else judge_dir
    judged = results["mine" if config.judges_events else "judge"]  # the stage that wrote the pairs trained on
    info.update(train_pairs=judged["pairs"], judged_relevant=_relevant_pairs(pairs_dir))
    seed = config.train.get("seed", config.seed + iteration)  # a fresh shuffle per iteration unless pinned
    _run(
        state,
        iteration,
        "train",
        config.stage_config(
            "train",
            pairs=[pairs_dir],
            output=_stage(state, iteration, "train"),
            model=_model_of(state, iteration - 1),
            seed=seed,
        ),
        run_train,
    )
    _build_index(state, iteration)
    return info


def _relevant_pairs(pairs_dir: str) -> int:
    import pyarrow.dataset as pads

    column = pads.dataset(os.path.join(pairs_dir, "pairs"), format="parquet").to_table(columns=["relevant"])[0]
    return len(column) - column.to_pylist().count(False)


def run_flywheel(config: FlywheelConfig) -> list[dict]:
    """Run (or resume) the flywheel; returns one results row per iteration."""
    from lrat_ray.core.datasets import load_answers, load_queries
    from lrat_ray.infra.runtime import init_ray

    started = time.time()
    # Rollout actors, Train workers and Serve replicas do not share the driver's directory.
    config = dataclasses.replace(
        config,
        output=os.path.abspath(config.output),
        corpus=[c if storage.is_remote(c) else os.path.abspath(c) for c in config.corpus],
    )
    os.makedirs(config.output, exist_ok=True)
    queries = load_queries(config.queries)
    train_ids, heldout_ids, qrels = _split(config, queries)
    if not train_ids or not heldout_ids:
        raise LratError(f"need training and held-out tasks; got {len(train_ids)} and {len(heldout_ids)}")
    state = FlywheelState(config, train_ids, heldout_ids, queries, qrels, load_answers(config.queries))
    storage.write_json_atomic(
        os.path.join(config.output, "tasks.json"), {"train": train_ids, "heldout": heldout_ids, "seed": config.seed}
    )
    init_ray()
    rows = []
    _build_index(state, 0)
    url = _deploy(state, 0)
    rows.append({**_evaluate(state, 0, url), "train_pairs": None, "judged_relevant": None})
    write_results(config.output, rows)
    try:
        for iteration in range(1, config.iterations + 1):
            info = _train_iteration(state, iteration, url)
            url = _deploy(state, iteration)
            _stop_here(state, iteration, "deploy")
            rows.append({**_evaluate(state, iteration, url), **info})
            write_results(config.output, rows)
    finally:
        from ray import serve

        serve.shutdown()
    log.info("flywheel finished in %.0fs", time.time() - started)
    return rows
