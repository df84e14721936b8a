"""``lrat flywheel``: the closed loop of LRAT — serve, roll out, mine, judge, train, re-index, redeploy.

Iteration 0 indexes the corpus with the starting model, serves it and measures the held-out tasks.
Each later iteration ``i``:

1. ``rollout``: agents solve ``train_tasks`` training tasks against the served retriever (HTTP);
2. ``mine``: trajectories -> weighted pairs (:mod:`lrat_ray.mine_job`);
3. ``judge``: label the pairs from the post-browse reasoning (:mod:`lrat_ray.judge`);
4. ``train``: warm-start from the previous model, weighted InfoNCE on Ray Train;
5. ``index``: re-encode the corpus with the new model;
6. ``deploy``: swap the served index in place (no request dropped);
7. ``eval``: held-out tasks rolled out against the new retriever (success rate, evidence recall
   = share of a task's evidence documents that appeared in any of its search results, steps per
   task) plus the index's IR metrics on the held-out queries.

Tasks are split by query id into training and held-out sets with a fixed seed (or taken from
separate judgment files); held-out tasks never feed training. Every sub-stage runs under
:func:`lrat_ray.outputs.run_stage` in its own directory ``output/iter-<i>/<stage>/``, like a stage
run from the command line: a ``_lrat_stage.json`` manifest whose version key chains from its
inputs' keys (rollouts and evaluations from the index their agents searched), so a restarted
flywheel skips finished stages, resumes the unfinished one, and refuses to mix in a stage
finished with other options. Results accumulate in
``output/results.csv``, ``output/results.md`` and ``output/results.png``.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import logging
import os
import random
import time
from dataclasses import dataclass

from lrat_ray import storage
from lrat_ray.config import checked, option
from lrat_ray.errors import LratError

log = logging.getLogger(__name__)
RESOURCE_STAGES = ("index", "rollout", "mine", "train", "serve")
INTERVAL_METRICS = ("success_rate", "evidence_recall", "avg_steps", "ndcg@10", "recall@100")
RESULT_COLUMNS = ("iteration", "model", *INTERVAL_METRICS, *(f"{m}_{end}" for m in INTERVAL_METRICS for end in ("lo", "hi")),
                  "ndcg@10_p_vs_0", "train_pairs", "judged_relevant")


@dataclass
@checked
class FlywheelConfig:
    """Options of ``lrat flywheel`` (YAML: a ``flywheel:`` section; ``agent:`` and ``train:``
    sub-mappings set AgentConfig and TrainConfig fields)."""

    corpus: list[str] = option(help="corpus files (BEIR JSONL or Parquet)", path=True)
    queries: str = option(help="task questions: BEIR queries.jsonl", path=True)
    train_qrels: str = option(help="judgments of the training tasks", path=True)
    heldout_qrels: str | None = option(None, help="judgments of held-out tasks (else split train_qrels)", path=True)
    heldout_fraction: float = option(0.2, help="share of train_qrels held out when heldout_qrels is unset")
    output: str = option("runs/flywheel", help="flywheel directory (local, or a URI: then the flywheel runs in a "
                                                "local scratch directory and uploads the finished one)")
    iterations: int = option(2, help="training iterations after the baseline")
    train_tasks: int | None = option(None, help="training tasks rolled out per iteration (sampled; default all)")
    heldout_tasks: int | None = option(None, help="held-out tasks evaluated (sampled once; default all)")
    model: str = option("embedded", help="starting retriever", path=True)
    document_max_length: int = option(256, help="document tokens for indexing and training")
    index_workers: int = option(2, help="encoder actors", runtime=True)
    rollout_workers: int = option(2, help="rollout actors", runtime=True)
    mine_workers: int = option(1, help="mining actors", runtime=True)
    judge_backend: str = option("keyword", help="judge backend (see lrat judge)")
    judge_model: str = option("", help="judge model (openai/transformers/vllm backends)")
    judge_endpoint: str = option("http://127.0.0.1:8000/v1", help="openai judge endpoint", runtime=True)
    judge: dict = option({}, help="more JudgeConfig fields (prompt, guided, on_failure, gpus_per_replica, ...)")
    mine: dict = option({}, help="MineConfig fields (negatives, tokenizer, zero_length, ...); with negatives "
                                 "since-last-positive the browse events are judged first and mined with the labels")
    agent_llm: dict = option({}, help="LLMServeConfig fields of the agents' LLM, served on Ray Serve beside the "
                                      "retriever while agents run (agent.kind llm without agent.endpoint)")
    port: int = option(8000, help="port of the served retriever (0: pick a free one)", runtime=True)
    serve_proxy_location: str = option("EveryNode", choices=("EveryNode", "HeadOnly"),
                                       help="Ray Serve HTTP proxies: EveryNode lets rollout actors on any node "
                                            "reach the retriever at 127.0.0.1:PORT; HeadOnly when all nodes share "
                                            "one host (a simulated cluster), whose proxies would fight for the port",
                                       runtime=True)
    seed: int = option(0, help="seed of the task split and sampling")
    agent: dict = option({}, help="AgentConfig fields (a YAML mapping, or JSON on the command line)")
    train: dict = option({}, help="TrainConfig fields (a YAML mapping, or JSON on the command line)")
    resources: dict = option({}, help="custom resources per worker of each stage: a mapping from index, rollout, "
                                      "mine, train or serve to e.g. {\"cpu_stage\": 1}", runtime=True)
    stop_after: str | None = option(None, help="testing: stop the process after this stage, e.g. iter-1/judge",
                                    runtime=True)

    def __post_init__(self):
        unknown = sorted(set(self.resources) - set(RESOURCE_STAGES))
        if unknown:
            raise ValueError(f"resources: unknown stage(s) {unknown}; known: {list(RESOURCE_STAGES)}")
        self._check_sections()

    def _check_sections(self) -> None:
        """Build every sub-stage's config once, so a wrong option in any section fails when the
        flywheel config is built, before any work, with the section and option named."""
        from lrat_ray.llm_serve import LLMServeConfig
        from lrat_ray.rollout import AgentConfig
        from lrat_ray.train import TrainConfig

        checks = (("train", lambda: TrainConfig(pairs=[self.output], output=self.output, corpus=self.corpus,
                                                **self.train)),
                  ("judge", lambda: self.judge_config(self.output, pairs=self.output)),
                  ("mine", lambda: self.mine_config([self.output], self.output, None)),
                  ("agent", lambda: AgentConfig(**self.agent).grader_config()),
                  ("agent_llm", lambda: LLMServeConfig(**self.agent_llm)))
        for section, build in checks:
            try:
                build()
            except (TypeError, ValueError) as exc:
                raise ValueError(f"flywheel section {section}: {exc}") from None

    def resources_of(self, stage: str) -> dict:
        return dict(self.resources.get(stage) or {})

    def judge_config(self, output: str, **inputs):
        from lrat_ray.judge import JudgeConfig

        base = {"backend": self.judge_backend, "model": self.judge_model, "endpoint": self.judge_endpoint,
                "cache": os.path.join(self.output, "judge-cache")}
        return JudgeConfig(output=output, **{**base, **self.judge, **inputs})

    def mine_config(self, inputs: list[str], output: str, labels: str | None):
        from lrat_ray.mine_job import MineConfig

        base = {"workers": self.mine_workers, "resources": self.resources_of("mine")}
        return MineConfig(input=inputs, output=output, labels=labels, **{**base, **self.mine})

    @property
    def judges_events(self) -> bool:
        """The official builder's mode judges browses while mining: judge events, then mine with labels."""
        return self.mine.get("negatives") == "since-last-positive" and self.judge_backend != "none"

    @property
    def serves_agent_llm(self) -> bool:
        return self.agent.get("kind") == "llm" and not self.agent.get("endpoint")


@dataclass
class FlywheelState:
    config: FlywheelConfig
    train_ids: list[str]
    heldout_ids: list[str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    answers: dict[str, str] = dataclasses.field(default_factory=dict)
    serve_settings: object = None


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
    """One sub-stage under :func:`lrat_ray.outputs.run_stage` (manifest, version key chained from
    its inputs, resume or skip), then the ``stop_after`` check."""
    from lrat_ray.outputs import run_stage

    started = time.time()
    staged = run_stage(name, config, run)
    done = "already done" if staged.skipped else f"{time.time() - started:.0f}s"
    log.info("iter-%d %-7s %s (%s)", iteration, name, stage_summary(name, staged.result), done)
    _stop_here(state, iteration, name)
    return staged.result


def stage_summary(name: str, result: dict) -> str:
    """What a finished sub-stage did, in one line of counts (and rates where they mean something)."""
    r = result or {}
    if name == "rollout":
        return f"{r.get('completed')} of {r.get('tasks')} tasks rolled out, {r.get('failed')} failed"
    if name == "mine":
        return (f"{r.get('records_used')} trajectories -> {r.get('pairs')} pairs "
                f"({r.get('unattributed_browses', 0)} unattributed, {r.get('failed_browses', 0)} failed browses)")
    if name == "judge":
        table = "labels" if "labels" in r else "pairs"
        return (f"{r.get(table)} {table} judged by {r.get('backend')}: {r.get('relevant')} relevant, "
                f"{r.get('irrelevant')} not ({r.get('cached', 0)} from cache, {r.get('failed', 0)} failed)")
    if name == "train":
        metrics = r.get("final_metrics") or {}
        return (f"{r.get('steps')} steps on {r.get('examples')} examples, loss {metrics.get('loss', float('nan')):.3f}, "
                f"{metrics.get('examples_per_s', 0):.1f} examples/s")
    if name == "index":
        return f"{r.get('count')} documents encoded in {r.get('encode_seconds', 0):.0f}s"
    if name == "eval":
        return (f"held-out nDCG@10 {r.get('ndcg@10', 0):.4f}, evidence recall {r.get('evidence_recall') or 0:.4f}, "
                f"success {r.get('success_rate') or 0:.3f}")
    return ""


def _split(config: FlywheelConfig, queries: dict[str, str]) -> tuple[list[str], list[str], dict]:
    from lrat_ray.evaluate import load_qrels
    from lrat_ray.rollout import split_task_ids

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
        heldout_ids = sorted(random.Random(config.seed).sample(heldout_ids, min(config.heldout_tasks, len(heldout_ids))))
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
    from lrat_ray.index import IndexConfig, run_index

    _run(state, iteration, "index", IndexConfig(
        corpus=state.config.corpus, output=_index_dir(state, iteration), model=_model_of(state, iteration),
        document_max_length=state.config.document_max_length, workers=state.config.index_workers,
        resources=state.config.resources_of("index")), run_index)


def _deploy(state: FlywheelState, iteration: int) -> str:
    from lrat_ray.runtime import free_port
    from lrat_ray.serving import ServeConfig, deploy, swap_index

    index = _index_dir(state, iteration)
    if state.serve_settings is None:
        port = state.config.port or free_port()
        # The replica reserves no CPU: it shares the machine with the stages (rollouts use it; training
        # and indexing run while it is idle), and a reservation would starve a 2-CPU machine.
        state.serve_settings = ServeConfig(index=index, port=port, replica_cpus=0,
                                           resources=state.config.resources_of("serve"),
                                           proxy_location=state.config.serve_proxy_location)
        url = deploy(state.serve_settings)
    else:
        state.serve_settings = swap_index(state.serve_settings, index)
        url = f"http://{state.serve_settings.host}:{state.serve_settings.port}"
    return url


def _agent_stage(state: FlywheelState, iteration: int, name: str, ids: list[str]) -> AgentStage:
    return AgentStage(output=_stage(state, iteration, name), index=_index_dir(state, iteration - (name == "rollout")),
                      tasks=ids, agent={"seed": state.config.seed, **state.config.agent, "llm": state.config.agent_llm})


def _rollout(state: FlywheelState, url: str, ids: list[str], path: str) -> dict:
    from lrat_ray.rollout import ACTOR_CPUS, AgentConfig, load_tasks, run_rollouts
    from lrat_ray.runtime import actor_resources

    agent = AgentConfig(**{"seed": state.config.seed, **state.config.agent})
    tasks = load_tasks(state.queries, state.qrels, ids, state.answers, agent.answer_with, agent.evidence_grade)
    per_worker = actor_resources(ACTOR_CPUS, 0, state.config.resources_of("rollout"))
    with _agent_llm(state, agent) as agent:
        summary = run_rollouts(url, tasks, agent, os.path.join(path, "runs"), state.config.rollout_workers,
                               per_worker=per_worker)
    if summary["failed"]:
        log.warning("%d rollouts failed: %s", summary["failed"], summary["errors"][:3])
    return summary


@contextlib.contextmanager
def _agent_llm(state: FlywheelState, agent):
    """Serve the agents' LLM on Ray Serve for the rollouts only: training and a vLLM judge need the
    machine it would hold."""
    if not state.config.serves_agent_llm:
        yield agent
        return
    from lrat_ray.llm_serve import LLMServeConfig, deploy_llm, undeploy_llm

    llm = LLMServeConfig(**state.config.agent_llm)
    endpoint = deploy_llm(llm, state.serve_settings.host, state.serve_settings.port)
    try:
        yield dataclasses.replace(agent, endpoint=endpoint, model=llm.name)
    finally:
        undeploy_llm()


def _evaluate(state: FlywheelState, iteration: int, url: str) -> dict:

    return _run(state, iteration, "eval", _agent_stage(state, iteration, "eval", state.heldout_ids),
                lambda stage: _score_heldout(state, iteration, url, stage.output))


def _score_heldout(state: FlywheelState, iteration: int, url: str, path: str) -> dict:
    from lrat_ray.adapters import read_trajectories
    from lrat_ray.evaluate import retrieve, score_run, score_trajectories

    summary = _rollout(state, url, state.heldout_ids, path)
    runs = [traj for uri in storage.expand_inputs([os.path.join(path, "runs")])
            for _, traj in read_trajectories(uri)]
    bad = [t for t in runs if isinstance(t, Exception)]
    if bad:  # these files are our own rollouts: a bad one is a bug, never data to skip
        raise bad[0]
    evidence_grade = state.config.agent.get("evidence_grade", 1)
    evidence = {q: {d: 1 for d, g in state.qrels.get(q, {}).items() if g >= evidence_grade} for q in state.heldout_ids}
    agent_metrics = score_trajectories(runs, evidence)
    run = retrieve(_index_dir(state, iteration), {q: state.queries[q] for q in state.heldout_ids}, 100)
    scored = score_run(run, {q: state.qrels[q] for q in state.heldout_ids}, [10, 100])
    ir = scored["metrics"]
    metrics = {"iteration": iteration, "model": _model_of(state, iteration),
               "success_rate": agent_metrics["success_rate"], "evidence_recall": agent_metrics["evidence_recall"],
               "avg_steps": agent_metrics["avg_steps"], "ndcg@10": ir["ndcg@10"], "recall@100": ir["recall@100"],
               **_intervals(agent_metrics["per_task"], scored["per_query"]),
               "heldout_tasks": len(state.heldout_ids), "rollout": summary}
    storage.write_json_atomic(os.path.join(path, "per_query.json"), scored["per_query"])
    base_path = os.path.join(_stage(state, 0, "eval"), "per_query.json")
    if iteration > 0 and os.path.isfile(base_path):
        from lrat_ray.evaluate import paired_comparison

        with open(base_path) as fh:
            metrics["ndcg@10_p_vs_0"] = paired_comparison(json.load(fh), scored["per_query"], "ndcg@10")["t_test_p"]
    storage.write_json_atomic(os.path.join(path, "metrics.json"), metrics)
    return metrics


def _intervals(per_task: dict, per_query: dict) -> dict:
    """95% bootstrap intervals over the held-out tasks of every reported metric."""
    from lrat_ray.evaluate import bootstrap_interval

    values = {"success_rate": [None if r["correct"] is None else float(r["correct"]) for r in per_task.values()],
              "evidence_recall": [r.get("evidence_recall") for r in per_task.values()],
              "avg_steps": [r["steps"] for r in per_task.values()],
              "ndcg@10": [m["ndcg@10"] for m in per_query.values()],
              "recall@100": [m["recall@100"] for m in per_query.values()]}
    out = {}
    for name, series in values.items():
        interval = bootstrap_interval(series)
        out[f"{name}_lo"], out[f"{name}_hi"] = interval if interval else (None, None)
    return out


def _train_iteration(state: FlywheelState, iteration: int, url: str) -> dict:
    from lrat_ray.judge import run_judge
    from lrat_ray.mine_job import run_mine
    from lrat_ray.train import TrainConfig, run_train

    config = state.config
    info: dict = {}
    ids = state.train_ids
    if config.train_tasks:
        ids = sorted(random.Random(config.seed * 1000 + iteration).sample(ids, min(config.train_tasks, len(ids))))
    rollout = _agent_stage(state, iteration, "rollout", ids)
    _run(state, iteration, "rollout", rollout, lambda stage: _rollout(state, url, ids, stage.output))
    mine_dir, judge_dir = _stage(state, iteration, "mine"), _stage(state, iteration, "judge")
    runs = [os.path.join(rollout.output, "runs")]
    if config.judges_events:
        _run(state, iteration, "judge", config.judge_config(judge_dir, events=runs), run_judge)
        _run(state, iteration, "mine", config.mine_config(runs, mine_dir, judge_dir), run_mine)
    else:
        _run(state, iteration, "mine", config.mine_config(runs, mine_dir, None), run_mine)
        _run(state, iteration, "judge", config.judge_config(judge_dir, pairs=mine_dir), run_judge)
    pairs_dir = mine_dir if config.judges_events else judge_dir
    judged = json.loads(open(os.path.join(pairs_dir, "report.json")).read())
    info.update(train_pairs=judged["pairs"], judged_relevant=_relevant_pairs(pairs_dir))
    overrides = {"document_max_length": config.document_max_length, "seed": config.seed + iteration,
                 "resources": config.resources_of("train"), **config.train}
    _run(state, iteration, "train", TrainConfig(
        pairs=[pairs_dir], output=_stage(state, iteration, "train"), model=_model_of(state, iteration - 1),
        corpus=config.corpus, **overrides),
        run_train)
    _build_index(state, iteration)
    return info


def _relevant_pairs(pairs_dir: str) -> int:
    import pyarrow.dataset as pads

    column = pads.dataset(os.path.join(pairs_dir, "pairs"), format="parquet").to_table(columns=["relevant"])[0]
    return len(column) - column.to_pylist().count(False)


def run_flywheel(config: FlywheelConfig) -> list[dict]:
    """Run (or resume) the flywheel; returns one results row per iteration."""
    from lrat_ray.evaluate import load_answers, load_queries
    from lrat_ray.runtime import init_ray

    started = time.time()
    # Rollout actors, Train workers and Serve replicas do not share the driver's directory.
    config = dataclasses.replace(config, output=os.path.abspath(config.output),
                                 corpus=[c if storage.is_remote(c) else os.path.abspath(c) for c in config.corpus])
    os.makedirs(config.output, exist_ok=True)
    queries = load_queries(config.queries)
    train_ids, heldout_ids, qrels = _split(config, queries)
    if not train_ids or not heldout_ids:
        raise LratError(f"need training and held-out tasks; got {len(train_ids)} and {len(heldout_ids)}")
    state = FlywheelState(config, train_ids, heldout_ids, queries, qrels, load_answers(config.queries))
    storage.write_json_atomic(os.path.join(config.output, "tasks.json"),
                              {"train": train_ids, "heldout": heldout_ids, "seed": config.seed})
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
    return ("\n".join(lines) + "\n\n[lo, hi]: 95% bootstrap interval over the held-out tasks (one run, one seed); "
            "ndcg@10_p_vs_0: paired t-test of per-task nDCG@10 against iteration 0.\n")


def _plot(output: str, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    iterations = [r["iteration"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, keys, title in ((axes[0], ("evidence_recall", "success_rate"), "held-out agent metrics"),
                            (axes[1], ("avg_steps",), "steps per task"),
                            (axes[2], ("ndcg@10", "recall@100"), "held-out IR metrics")):
        for key in keys:
            shown = [(i, r[key], r.get(f"{key}_lo"), r.get(f"{key}_hi")) for i, r in zip(iterations, rows)
                     if r.get(key) is not None]
            if not shown:
                continue
            xs, values, lows, highs = zip(*shown)
            errors = [[v - (lo if lo is not None else v) for v, lo in zip(values, lows)],
                      [(hi if hi is not None else v) - v for v, hi in zip(values, highs)]]
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

