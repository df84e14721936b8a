"""The stage registry: what each pipeline stage is, in one place.

A stage is a name, a config class, a run function (config in, a JSON-able result out) and a
summary (that result as one line of counts and rates). The ``lrat`` command builds one
subcommand per stage from this registry, ``jobs/<stage>.py`` runs the same subcommand as a Ray
job, and the flywheel runs its sub-stages by the same names; every one of them goes through
:func:`lrat_ray.infra.stage_run.run_stage` (versioned output directory, manifest, resume, skip when
finished). Config classes and run functions are imported only when a stage is used: ``lrat
--help`` must not import torch, and the pure core must not import Ray.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, NamedTuple


class Loaded(NamedTuple):
    config: type  # the stage's config dataclass
    run: Callable[[Any], Any]  # config in, a JSON-able result out
    module: ModuleType  # whose docstring introduces the stage in --help


@dataclass(frozen=True)
class Stage:
    name: str
    load: Callable[[], Loaded]  # imports the stage when it is used (the loaders below)
    help: str
    summary: Callable[[dict], str]
    local_only: bool = False  # needs local files (FAISS, a model, a server): remote outputs go via a scratch dir
    output_optional: bool = False  # runs without writing a directory when no --output is given

    @property
    def module(self) -> str:
        return self.load().module.__name__

    def config_class(self) -> type:
        return self.load().config

    def run(self) -> Callable[[Any], dict]:
        return self.load().run


# Each loader imports its stage only when called: `lrat --help` imports no torch, and the registry
# imports no stage at import time (the flywheel, itself a stage, reads the registry).


def _load_mine() -> Loaded:
    from lrat_ray.stages import mine

    return Loaded(mine.MineConfig, mine.run_mine, mine)


def _load_judge() -> Loaded:
    from lrat_ray.stages import judge

    return Loaded(judge.JudgeConfig, judge.run_judge, judge)


def _load_pairs_from_qrels() -> Loaded:
    from lrat_ray.stages import pairs_from_qrels

    return Loaded(pairs_from_qrels.PairsFromQrelsConfig, pairs_from_qrels.run_pairs_from_qrels, pairs_from_qrels)


def _load_train() -> Loaded:
    from lrat_ray.stages import train

    return Loaded(train.TrainConfig, train.run_train, train)


def _load_index() -> Loaded:
    from lrat_ray.stages import index

    return Loaded(index.IndexConfig, index.run_index, index)


def _load_eval() -> Loaded:
    from lrat_ray.stages import eval as eval_stage

    return Loaded(eval_stage.EvalConfig, eval_stage.run_eval, eval_stage)


def _load_eval_runs() -> Loaded:
    from lrat_ray.stages import eval as eval_stage

    return Loaded(eval_stage.EvalRunsConfig, eval_stage.run_eval_runs, eval_stage)


def _load_rollout() -> Loaded:
    from lrat_ray.agents import rollout

    return Loaded(rollout.RolloutConfig, rollout.run_rollout_config, rollout)


def _load_flywheel() -> Loaded:
    from lrat_ray.experiments import flywheel

    return Loaded(flywheel.FlywheelConfig, flywheel.run_flywheel, flywheel)


def _rate(count, seconds) -> str:
    return f"{count / seconds:.1f}/s" if count and seconds else "-"


def _mine(r: dict) -> str:
    skipped = sum((r.get("records_skipped") or {}).values())
    return (
        f"{r.get('records_used')} of {r.get('records_read')} records -> {r.get('pairs')} pairs "
        f"({skipped} records skipped, {r.get('unattributed_browses', 0)} unattributed and "
        f"{r.get('failed_browses', 0)} failed browses)"
    )


def _judge(r: dict) -> str:
    table = "labels" if "labels" in r else "pairs"
    return (
        f"{r.get(table)} {table} judged by {r.get('backend')}: {r.get('relevant')} relevant, "
        f"{r.get('irrelevant')} not ({r.get('cached', 0)} from cache, {r.get('unparseable', 0)} unparseable, "
        f"{r.get('failed', 0)} failed)"
    )


def _train(r: dict) -> str:
    metrics = r.get("final_metrics") or {}
    return (
        f"{r.get('steps')} steps on {r.get('examples')} examples, final loss "
        f"{metrics.get('loss', float('nan')):.4f}, {metrics.get('examples_per_s', 0):.1f} examples/s"
    )


def _index(r: dict) -> str:
    kind = (r.get("index") or {}).get("type", "?")
    seconds = (r.get("seconds") or {}).get("total")
    shards = r.get("shards") or []
    reused = f", vectors of {r['embeddings_reused']} reused" if r.get("embeddings_reused") else ""
    return (
        f"{r.get('count')} documents in {len(shards)} shard(s){reused}, {r.get('dimension')}-d {kind}, "
        f"indexed at {_rate(r.get('count'), seconds)}; "
        f"skipped {(r.get('corpus') or {}).get('records_skipped') or 'none'}"
    )


def _rollout(r: dict) -> str:
    return (
        f"{r.get('completed')} of {r.get('tasks')} tasks rolled out ({r.get('failed')} failed); success rate "
        f"{r.get('success_rate')}, {r.get('avg_steps')} steps/task"
    )


def _eval(r: dict) -> str:
    metrics = r.get("metrics") or {}
    shown = ", ".join(f"{k} {metrics[k]:.4f}" for k in ("ndcg@10", "recall@100") if k in metrics)
    return f"{r.get('queries')} judged queries: {shown or ', '.join(sorted(metrics))}"


def _eval_runs(r: dict) -> str:
    return (
        f"{r.get('tasks')} tasks: evidence recall {r.get('evidence_recall')}, success rate "
        f"{r.get('success_rate')}, {r.get('avg_steps')} steps/task"
    )


def _pairs_from_qrels(r: dict) -> str:
    return f"{r.get('pairs')} pairs from {r.get('queries')} judged queries"


def _flywheel(rows: list) -> str:
    first, last = rows[0], rows[-1]
    return (
        f"{len(rows) - 1} iterations: held-out nDCG@10 {first.get('ndcg@10', 0):.4f} -> "
        f"{last.get('ndcg@10', 0):.4f}, evidence recall {first.get('evidence_recall') or 0:.4f} -> "
        f"{last.get('evidence_recall') or 0:.4f}"
    )


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("mine", _load_mine, "mine weighted training pairs from agent trajectories", _mine),
        Stage("judge", _load_judge, "label mined pairs (or browse events) from the post-browse reasoning", _judge),
        Stage(
            "pairs-from-qrels",
            _load_pairs_from_qrels,
            "training pairs from relevance judgments (mined-pairs schema)",
            _pairs_from_qrels,
        ),
        Stage("train", _load_train, "weighted-contrastive training on Ray Train", _train, local_only=True),
        Stage("index", _load_index, "encode a corpus and build a FAISS index", _index, local_only=True),
        Stage("eval", _load_eval, "IR metrics of an index on judged queries", _eval, output_optional=True),
        Stage(
            "eval-runs",
            _load_eval_runs,
            "evidence recall, steps and success of agent trajectories",
            _eval_runs,
            output_optional=True,
        ),
        Stage("rollout", _load_rollout, "run agents against a served retriever", _rollout),
        Stage(
            "flywheel",
            _load_flywheel,
            "the closed loop: serve, roll out, mine, judge, train, re-index, redeploy, evaluate",
            _flywheel,
            local_only=True,
        ),
    )
}
