"""``lrat rollout``: agents against the served retriever, the trajectories that feed the flywheel.

Agents talk to the retriever only through its HTTP API (``POST /search``, ``GET /documents/{id}``,
see :mod:`lrat_ray.serving.retriever`), as deployed agents do, and every rollout is written as a
BrowseComp-Plus run file (one JSON per task: ``query_id``, ``query``, ``result`` = reasoning /
tool_call / output_text items, ``tool_call_counts``, ``retrieved_docids``, ``status``,
``correct``), the format of the official LRAT trajectories, so ``lrat mine`` reads them unchanged.
Rollouts run in Ray actors (``workers`` of them, each a pool of agents working through its share
of the tasks).

The agent kinds (:mod:`lrat_ray.agents.kinds`): ``simulated`` and ``simulated-judged``
(:mod:`lrat_ray.agents.simulated`) and ``llm`` (:mod:`lrat_ray.agents.react`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
from dataclasses import dataclass

from lrat_ray.agents.config import AgentConfig
from lrat_ray.agents.kinds import AGENT_KINDS
from lrat_ray.agents.retrievers import RetrieverClient
from lrat_ray.agents.tasks import Task, load_tasks
from lrat_ray.infra import storage
from lrat_ray.infra.chat_client import usage_rate
from lrat_ray.infra.config import ActorPool, checked, option

log = logging.getLogger(__name__)
ACTOR_CPUS = 0.25  # an agent mostly waits on HTTP (retriever, LLM endpoint)


@dataclass(kw_only=True)
@checked
class RolloutConfig(ActorPool):
    """Options of ``lrat rollout`` (agent behaviour: the ``agent:`` YAML mapping, AgentConfig fields)."""

    url: str = option(help="base URL of the served retriever (lrat serve)", runtime=True)
    queries: str = option(help="task questions: BEIR queries.jsonl or TSV", path=True)
    output: str = option(
        help="directory for the run files, one JSON per task (local or URI; '{version}' is replaced by the version key)"
    )
    qrels: str | None = option(None, help="judgments (the simulated agent needs them)", path=True)
    limit: int | None = option(None, help="roll out only the first N tasks (by id)")
    cpus_per_worker: float = option(
        ACTOR_CPUS, minimum=0, runtime=True, help="CPUs each rollout actor reserves (agents mostly wait on HTTP)"
    )
    token: str | None = option(None, help="bearer token of the retriever", runtime=True)
    agent_kind: str = option("simulated", choices=tuple(AGENT_KINDS), help="simulated or llm")
    agent_endpoint: str | None = option(None, help="llm: OpenAI-compatible base URL", runtime=True)
    agent_model: str | None = option(None, help="llm: model name")
    seed: int = option(0, help="simulated: random seed")
    agent: dict = option({}, help="AgentConfig fields (a YAML mapping, or JSON on the command line)")

    def agent_config(self) -> AgentConfig:
        flat = {"kind": self.agent_kind, "seed": self.seed, "endpoint": self.agent_endpoint, "model": self.agent_model}
        return AgentConfig(**{**{k: v for k, v in flat.items() if v is not None}, **self.agent})


class RolloutWorker:
    """One Ray actor: runs its share of tasks and writes one run file per task."""

    def __init__(self, url: str, config: dict, token: str | None = None):
        self.config = AgentConfig(**config)
        self.client = RetrieverClient(url, token, self.config.timeout_s)

    def run(self, tasks: list[dict], output: str) -> list[dict]:
        agent = AGENT_KINDS[self.config.kind]
        summaries = []
        for task_dict in tasks:
            task = Task(**task_dict)
            started = time.time()
            try:
                run = agent(task, self.client, self.config)
            except Exception as exc:  # a task that fails is recorded, not lost
                summaries.append({"task": task.id, "status": "failed", "error": repr(exc)})
                continue
            storage.write_json_atomic(storage.join(output, f"{_safe(task.id)}.json"), run)
            summaries.append(
                {
                    "task": task.id,
                    "status": "completed",
                    "seconds": round(time.time() - started, 3),
                    "correct": run["correct"],
                    "steps": sum(run["tool_call_counts"].values()),
                    "llm_usage": run["metadata"].get("llm_usage"),
                }
            )
        return summaries


def _safe(task_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", task_id)


def run_rollouts(
    url: str,
    tasks: list[Task],
    config: AgentConfig,
    output: str,
    workers: int | None = 2,
    token: str | None = None,
    per_worker: dict | None = None,
) -> dict:
    """Roll out ``tasks`` against the retriever at ``url`` with ``workers`` Ray actors (default: as
    many as fit), each reserving ``per_worker`` (default ``ACTOR_CPUS``)."""
    import ray

    from lrat_ray.infra.runtime import fit_workers, init_ray, remote_args

    init_ray()
    per_worker = per_worker or {"CPU": ACTOR_CPUS}
    workers = fit_workers(workers, per_worker, "rollout")
    output = output if storage.is_remote(output) else os.path.abspath(output)  # actors have their own cwd
    actor = ray.remote(**remote_args(per_worker))(RolloutWorker)
    pool = [actor.remote(url, dataclasses.asdict(config), token) for _ in range(max(1, min(workers, len(tasks))))]
    shares = [[dataclasses.asdict(t) for t in tasks[i :: len(pool)]] for i in range(len(pool))]
    results = [s for batch in ray.get([w.run.remote(share, output) for w, share in zip(pool, shares)]) for s in batch]
    for worker in pool:
        ray.kill(worker)
    completed = [r for r in results if r["status"] == "completed"]
    summary = {
        "tasks": len(tasks),
        "completed": len(completed),
        "failed": len(results) - len(completed),
        "errors": [r for r in results if r["status"] != "completed"][:10],
        "success_rate": sum(bool(r["correct"]) for r in completed) / len(completed) if completed else None,
        "avg_steps": sum(r["steps"] for r in completed) / len(completed) if completed else None,
    }
    usages = [r["llm_usage"] for r in completed if r.get("llm_usage")]
    if usages:  # LLM agents: what their calls cost, and the rate the endpoint served them at
        total = {k: sum(u[k] for u in usages) for k in ("calls", "completion_tokens", "seconds")}
        summary["llm"] = {**total, "seconds": round(total["seconds"], 2), "tokens_per_s": usage_rate(total)}
    return summary


def run_rollout_config(config: RolloutConfig) -> dict:
    """``lrat rollout``: the tasks of ``config.queries`` (those with judgments when qrels are given)."""
    from lrat_ray.core.datasets import load_answers, load_qrels, load_queries
    from lrat_ray.infra.runtime import actor_resources, init_ray

    init_ray(config.address)
    queries = load_queries(config.queries)
    qrels = load_qrels(config.qrels) if config.qrels else {}
    ids = sorted(q for q in queries if not qrels or q in qrels)[: config.limit]
    per_worker = actor_resources(config.cpus_per_worker, 0, config.resources)
    agent = config.agent_config()
    tasks = load_tasks(queries, qrels, ids, load_answers(config.queries), agent.answer_with, agent.evidence_grade)
    return run_rollouts(config.url, tasks, agent, config.output, config.workers, config.token, per_worker)
