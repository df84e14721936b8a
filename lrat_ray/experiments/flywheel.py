"""``lrat flywheel``: the closed loop of LRAT — serve, roll out, mine, judge, train, re-index, redeploy.

Iteration 0 indexes the corpus with the starting model, serves it and measures the held-out tasks.
Each later iteration ``i``:

1. ``rollout``: agents solve ``train_tasks`` training tasks against the served retriever (HTTP);
2. ``mine``: trajectories -> weighted pairs (:mod:`lrat_ray.stages.mine`);
3. ``judge``: label the pairs from the post-browse reasoning (:mod:`lrat_ray.stages.judge`);
4. ``train``: warm-start from the previous model, weighted InfoNCE on Ray Train;
5. ``index``: re-encode the corpus with the new model;
6. ``deploy``: swap the served index in place (no request dropped);
7. ``eval``: held-out tasks rolled out against the new retriever (success rate, evidence recall
   = share of a task's evidence documents that appeared in any of its search results, steps per
   task) plus the index's IR metrics on the held-out queries.

Tasks are split by query id into training and held-out sets with a fixed seed (or taken from
separate judgment files); held-out tasks never feed training. Every sub-stage runs under
:func:`lrat_ray.infra.stage_run.run_stage` in its own directory ``output/iter-<i>/<stage>/``, like a stage
run from the command line: a ``_lrat_stage.json`` manifest whose version key chains from its
inputs' keys (rollouts and evaluations from the index their agents searched), so a restarted
flywheel skips finished stages, resumes the unfinished one, and refuses to mix in a stage
finished with other options. Results accumulate in
``output/results.csv``, ``output/results.md`` and ``output/results.png``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
import random
import time
from dataclasses import dataclass

from lrat_ray.infra import storage
from lrat_ray.infra.config import build_section, checked, option, section
from lrat_ray.infra.errors import LratError
from lrat_ray.registry import STAGES

log = logging.getLogger(__name__)
RESOURCE_STAGES = ("index", "rollout", "mine", "train", "serve")
SECTIONS = ("index", "mine", "judge", "train", "agent", "agent_llm")
INTERVAL_METRICS = ("success_rate", "evidence_recall", "avg_steps", "ndcg@10", "recall@100")
RESULT_COLUMNS = (
    "iteration",
    "model",
    *INTERVAL_METRICS,
    *(f"{m}_{end}" for m in INTERVAL_METRICS for end in ("lo", "hi")),
    "ndcg@10_p_vs_0",
    "train_pairs",
    "judged_relevant",
)


def _agent_config():
    from lrat_ray.agents.config import AgentConfig

    return AgentConfig


def _llm_serve_config():
    from lrat_ray.serving.llm import LLMServeConfig

    return LLMServeConfig


@dataclass
@checked
class FlywheelConfig:
    """Options of ``lrat flywheel`` (YAML: a ``flywheel:`` section). The sub-stages' own options
    are nested sections (``index``, ``mine``, ``judge``, ``train``, ``agent``, ``agent_llm``),
    each the options of that stage's config except the inputs and outputs the flywheel sets; every
    section is built into its typed config when this config is built, so a wrong option anywhere
    fails before any work, with the section and option named."""

    corpus: list[str] = option(help="corpus files (BEIR JSONL or Parquet)", path=True)
    queries: str = option(help="task questions: BEIR queries.jsonl", path=True)
    train_qrels: str = option(help="judgments of the training tasks", path=True)
    heldout_qrels: str | None = option(None, help="judgments of held-out tasks (else split train_qrels)", path=True)
    heldout_fraction: float = option(0.2, minimum=0, help="share of train_qrels held out when heldout_qrels is unset")
    output: str = option(
        "runs/flywheel",
        help="flywheel directory (local, or a URI: then the flywheel runs in a "
        "local scratch directory and uploads the finished one)",
    )
    iterations: int = option(2, minimum=0, help="training iterations after the baseline")
    train_tasks: int | None = option(
        None, minimum=1, help="training tasks rolled out per iteration (sampled; default all)"
    )
    heldout_tasks: int | None = option(None, minimum=1, help="held-out tasks evaluated (sampled once; default all)")
    model: str = option("embedded", help="starting retriever", path=True)
    document_max_length: int = option(256, minimum=1, help="document tokens for indexing and training")
    rollout_workers: int = option(2, minimum=1, help="rollout actors", runtime=True)
    port: int = option(8000, help="port of the served retriever (0: pick a free one)", runtime=True)
    serve_proxy_location: str = option(
        "EveryNode",
        choices=("EveryNode", "HeadOnly"),
        help="Ray Serve HTTP proxies: EveryNode lets rollout actors on any node "
        "reach the retriever at 127.0.0.1:PORT; HeadOnly when all nodes share "
        "one host (a simulated cluster), whose proxies would fight for the port",
        runtime=True,
    )
    seed: int = option(0, help="seed of the task split and sampling")
    index: dict = section(
        STAGES["index"].config_class,
        set_by=("corpus", "output", "model", "document_max_length"),
        help="IndexConfig options of every index built (workers: 2 unless set; index_type, batch_size, bf16, ...)",
    )
    mine: dict = section(
        STAGES["mine"].config_class,
        set_by=("input", "output", "labels"),
        help="MineConfig options (negative_mode, tokenizer, zero_length, workers: 1 unless set, "
        "...); with negative_mode since-last-positive the browse events are judged first "
        "and mined with the labels",
    )
    judge: dict = section(
        STAGES["judge"].config_class,
        set_by=("pairs", "events", "output"),
        help="JudgeConfig options (backend: keyword unless set, model, prompt, guided, "
        "on_failure, concurrency, endpoint, ...)",
    )
    train: dict = section(
        STAGES["train"].config_class,
        set_by=("pairs", "output", "model", "corpus"),
        help="TrainConfig options (workers, per_device_batch, learning_rate, backend, ...)",
    )
    agent: dict = section(_agent_config, help="AgentConfig options of the agents (kind, max_turns, k, ...)")
    agent_llm: dict = section(
        _llm_serve_config,
        help="LLMServeConfig options of the agents' LLM, served on Ray Serve beside the "
        "retriever while agents run (agent kind llm without an agent endpoint)",
    )
    resources: dict = option(
        {},
        help="custom resources per worker of each stage: a mapping from index, rollout, "
        "mine, train or serve to e.g. {\"cpu_stage\": 1} (a section's own "
        "resources option wins)",
        runtime=True,
    )
    stop_after: str | None = option(
        None, help="testing: stop the process after this stage, e.g. iter-1/judge", runtime=True
    )

    def __post_init__(self):
        unknown = sorted(set(self.resources) - set(RESOURCE_STAGES))
        if unknown:
            raise ValueError(f"resources: unknown stage(s) {unknown}; known: {list(RESOURCE_STAGES)}")
        self._sections = {name: self._build_section(name) for name in SECTIONS}
        self._sections["agent"].grader_config()

    def _build_section(self, name: str):
        try:
            return build_section(self, name, self._section_defaults(name))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"flywheel section {name}: {exc}") from None

    def _section_defaults(self, name: str) -> dict:
        """What the flywheel sets in a section's config (inputs, outputs) or defaults there."""
        return {
            "index": {
                "corpus": self.corpus,
                "output": self.output,
                "model": self.model,
                "workers": 2,
                "document_max_length": self.document_max_length,
                "resources": self.resources_of("index"),
            },
            "mine": {
                "input": [self.output],
                "output": self.output,
                "workers": 1,
                "resources": self.resources_of("mine"),
            },
            "judge": {"pairs": self.output, "output": self.output, "cache": os.path.join(self.output, "judge-cache")},
            "train": {
                "pairs": [self.output],
                "output": self.output,
                "corpus": self.corpus,
                "document_max_length": self.document_max_length,
                "resources": self.resources_of("train"),
            },
            "agent": {"seed": self.seed},
            "agent_llm": {},
        }[name]

    def resources_of(self, stage: str) -> dict:
        return dict(self.resources.get(stage) or {})

    def stage_config(self, name: str, **settings):
        """The typed config of sub-stage ``name`` (its section over the flywheel's defaults), with the
        inputs and output the flywheel sets for this run."""
        return dataclasses.replace(self._sections[name], **settings)

    @property
    def judges_events(self) -> bool:
        """The official builder's mode judges browses while mining: judge events, then mine with labels."""
        return (
            self._sections["mine"].negative_mode == "since-last-positive" and self._sections["judge"].backend != "none"
        )

    @property
    def serves_agent_llm(self) -> bool:
        """LLM agents with no endpoint of their own (the section sets none: AgentConfig's default
        endpoint is a placeholder) use the LLM the flywheel serves beside the retriever."""
        return self._sections["agent"].kind == "llm" and not self.agent.get("endpoint")


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
        **_intervals(agent_metrics["per_task"], scored["per_query"]),
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


def _intervals(per_task: dict, per_query: dict) -> dict:
    """95% bootstrap intervals over the held-out tasks of every reported metric."""
    from lrat_ray.core.metrics import bootstrap_interval

    values = {
        "success_rate": [None if r["correct"] is None else float(r["correct"]) for r in per_task.values()],
        "evidence_recall": [r.get("evidence_recall") for r in per_task.values()],
        "avg_steps": [r["steps"] for r in per_task.values()],
        "ndcg@10": [m["ndcg@10"] for m in per_query.values()],
        "recall@100": [m["recall@100"] for m in per_query.values()],
    }
    out = {}
    for name, series in values.items():
        interval = bootstrap_interval(series)
        out[f"{name}_lo"], out[f"{name}_hi"] = interval if interval else (None, None)
    return out


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


def write_results(output: str, rows: list[dict]) -> None:
    """results.csv, results.md and results.png (metrics per iteration)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RESULT_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    storage.write_bytes_atomic(os.path.join(output, "results.csv"), buffer.getvalue().encode())
    storage.write_bytes_atomic(os.path.join(output, "results.md"), results_table(rows).encode())
    _plot(output, rows)


def results_table(rows: list[dict]) -> str:
    def fmt(value):
        return "-" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))

    def cell(row, name):
        if name not in INTERVAL_METRICS or row.get(f"{name}_lo") is None:
            return fmt(row.get(name))
        return f"{fmt(row.get(name))} [{row[f'{name}_lo']:.3f}, {row[f'{name}_hi']:.3f}]"

    header = ("iteration", *INTERVAL_METRICS, "ndcg@10_p_vs_0", "train_pairs", "judged_relevant")
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    lines += ["| " + " | ".join(cell(row, h) for h in header) + " |" for row in rows]
    return (
        "\n".join(lines) + "\n\n[lo, hi]: 95% bootstrap interval over the held-out tasks (one run, one seed); "
        "ndcg@10_p_vs_0: paired t-test of per-task nDCG@10 against iteration 0.\n"
    )


def _plot(output: str, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    iterations = [r["iteration"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, keys, title in (
        (axes[0], ("evidence_recall", "success_rate"), "held-out agent metrics"),
        (axes[1], ("avg_steps",), "steps per task"),
        (axes[2], ("ndcg@10", "recall@100"), "held-out IR metrics"),
    ):
        for key in keys:
            shown = [
                (i, r[key], r.get(f"{key}_lo"), r.get(f"{key}_hi"))
                for i, r in zip(iterations, rows)
                if r.get(key) is not None
            ]
            if not shown:
                continue
            xs, values, lows, highs = zip(*shown)
            errors = [
                [v - (lo if lo is not None else v) for v, lo in zip(values, lows)],
                [(hi if hi is not None else v) - v for v, hi in zip(values, highs)],
            ]
            ax.errorbar(xs, values, yerr=errors, marker="o", capsize=4, label=key)
        ax.set_xlabel("iteration")
        ax.set_title(f"{title}\n(95% bootstrap CI over tasks)", fontsize=9)
        ax.set_xticks(iterations)
        ax.legend()
    fig.tight_layout()
    tmp = os.path.join(output, ".results.png.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, os.path.join(output, "results.png"))
