"""The drivers: ``run_train`` (Ray Train: a TorchTrainer over a Ray Dataset of the examples) and
``fit_in_process`` (no Ray: many small trainings, e.g. ``lrat ablation``, and tests)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import time

from lrat_ray import __version__
from lrat_ray.infra import storage
from lrat_ray.infra.errors import LratError
from lrat_ray.infra.hardware import describe
from lrat_ray.infra.stage_run import default_storage_path
from lrat_ray.stages.train.config import TrainConfig
from lrat_ray.stages.train.data import EXAMPLE_COLUMNS, example_dataset, group_texts
from lrat_ray.stages.train.optimizer import build_optimizer, optimizer_step, to_bf16_weights
from lrat_ray.stages.train.step import step_runner
from lrat_ray.stages.train.worker import resolve_device_options, starting_model, train_loop_per_worker

log = logging.getLogger(__name__)


def run_train(config: TrainConfig) -> dict:
    """Train and write the model to ``config.output``; returns a summary (run_stage records it as report.json)."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from lrat_ray.infra.runtime import check_feasible, init_ray
    from lrat_ray.models.encoder import spec_for

    started = time.time()
    # Workers run in their own directories: hand them absolute paths for anything local.
    deepspeed_config = config.deepspeed_config and _absolute_if_local(config.deepspeed_config)
    config = dataclasses.replace(config, model=_absolute_if_local(config.model), deepspeed_config=deepspeed_config)
    _check_model_loads(config.model)
    init_ray(config.address)
    dataset, count = example_dataset(config)  # streamed: the driver holds no pair texts
    per_step = config.per_device_batch * config.workers * config.grad_accumulation
    steps_per_epoch = max(1, count // per_step)
    total_steps = min(config.max_steps or steps_per_epoch * config.epochs, steps_per_epoch * config.epochs)
    check_feasible("training", _worker_resources(config), config.workers)
    # Keep whole batches only, so every worker takes the same number of steps (no hang at the end).
    usable = steps_per_epoch * per_step
    # Read, join and shuffle now, into the object store (not the driver's memory): once the
    # training workers hold the CPUs, Ray Data tasks could not be scheduled beside them.
    dataset = dataset.limit(usable).materialize()
    storage_path = config.storage_path or default_storage_path(config.output)
    if not storage.is_remote(storage_path):
        os.makedirs(storage_path, exist_ok=True)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": dataclasses.asdict(config),
            "total_steps": total_steps,
            "storage_path": storage_path,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.workers, use_gpu=config.use_gpu, resources_per_worker=_worker_resources(config)
        ),
        run_config=ray.train.RunConfig(
            name=config.run_name or _run_name(config),
            storage_path=storage_path,
            # A worker group that cannot start (resources taken) fails after a few tries, not never.
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures, controller_failure_limit=3),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
        datasets={"train": dataset},
        dataset_config=ray.train.DataConfig(execution_options=_ordered()),
    )
    with watch_progress(storage_path, total_steps):
        result = trainer.fit()
    if result.error:
        raise LratError(f"training failed: {result.error}")
    with result.checkpoint.as_directory() as directory:
        state_step = result.metrics.get("step")
        model_dir = os.path.join(directory, "model")
        if not os.path.isdir(model_dir):
            raise LratError("training ended without a final model checkpoint")
        _publish_model(model_dir, config.output)
    summary = {
        "model": config.output,
        "base_model": config.model,
        "examples": count,
        "precision": result.metrics.get("precision"),
        "hardware": describe("cuda" if config.use_gpu else "cpu"),
        "examples_used_per_epoch": usable,
        "steps": state_step,
        "total_steps": total_steps,
        "final_metrics": result.metrics,
        "config": dataclasses.asdict(config),
        "encoder": dataclasses.asdict(spec_for(config.output)),
        "wall_seconds": round(time.time() - started, 1),
        "lrat_ray": __version__,
    }
    return summary


def _run_name(config: TrainConfig) -> str:
    """Without run_stage (Python callers): the name run_stage would give, so the same options
    resume the same run."""
    from lrat_ray.infra.stage_run import run_name, stage_key

    return run_name("train", stage_key("train", config))


def _worker_resources(config: TrainConfig) -> dict:
    from lrat_ray.infra.runtime import actor_resources

    return actor_resources(config.cpus_per_worker, 1 if config.use_gpu else 0, config.resources)


def _ordered():
    from ray.data import ExecutionOptions

    options = ExecutionOptions()
    options.preserve_order = True  # the same order after a restart, so skipping done batches is exact
    return options


def _absolute_if_local(path: str) -> str:
    return os.path.abspath(path) if os.path.exists(path) else path


def _check_model_loads(model: str) -> None:
    from transformers import AutoConfig

    from lrat_ray.models.embedded import resolve_model

    try:
        AutoConfig.from_pretrained(resolve_model(model))
    except (OSError, ValueError) as exc:
        raise LratError(f"model {model!r} does not load: {exc}") from None


def _publish_model(source: str, target: str) -> None:
    """Copy the final checkpoint's model next to ``target``, then move it into place whole."""
    import shutil
    import uuid

    tmp = f"{target.rstrip('/')}.tmp-{uuid.uuid4().hex}"
    shutil.copytree(source, tmp)
    storage.publish_dir(tmp, target)


@contextlib.contextmanager
def watch_progress(storage_path: str, total_steps: int):
    """Show rank 0's steps (``worker.ProgressFile``) on the driver's console while ``fit`` runs."""
    import threading

    from lrat_ray.infra.progress import Progress
    from lrat_ray.stages.train.worker import progress_uri

    uri, stop = progress_uri(storage_path), threading.Event()
    storage.remove_file(uri)  # a resumed run reports afresh

    def poll(progress: Progress):
        while not stop.wait(2.0):
            try:
                state = json.loads(storage.read_bytes(uri)) if storage.exists(uri) else None
            except (OSError, ValueError):
                continue
            if state and state["step"] > progress.done:
                progress.set(state["step"], loss=state["loss"], examples_per_s=state["examples_per_s"])

    with Progress("train", total_steps, "steps") as progress:
        thread = threading.Thread(target=poll, args=(progress,), name="lrat-train-progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)


def fit_in_process(config: TrainConfig, examples: list[dict], steps: int, output: str | None = None) -> dict:
    """Train in this process, no Ray: exactly ``steps`` optimizer steps of ``per_device_batch`` x
    ``grad_accumulation`` examples, cycling through ``examples`` reshuffled on every pass. The
    step is the Ray Train worker's (:class:`StepRunner`); experiments that train many small
    models (``lrat ablation``) use it so that every arm trains the same number of steps from the
    same start without a worker group's start-up cost. Writes the model to ``output`` if given.
    Returns the losses and the (unwrapped) model, tokenizer and spec."""
    import torch

    from lrat_ray.models.encoder import save_encoder

    torch.manual_seed(config.seed)
    config = resolve_device_options(config, torch.device("cpu"))
    spec, tokenizer, model = starting_model(config)
    if config.bf16_weights:
        to_bf16_weights(model)
    params, optimizer, scheduler = build_optimizer(model, config, steps, config.bf16_weights)
    model.train()
    runner = step_runner(model, tokenizer, spec, config, torch.device("cpu"))
    order_rng = random.Random(config.seed)
    stream: list[dict] = []
    losses = []
    for step in range(steps):
        for micro in range(config.grad_accumulation):
            while len(stream) < config.per_device_batch:
                stream.extend(order_rng.sample(examples, len(examples)))
            batch, stream = stream[: config.per_device_batch], stream[config.per_device_batch :]
            columns = {name: [e[name] for e in batch] for name in EXAMPLE_COLUMNS}
            rng = random.Random(hash((config.seed, step, micro)))
            queries, documents, mask, weights = group_texts(
                columns, config.group_size, rng, config.negatives_with_replacement
            )
            loss = runner.run(
                queries, documents, mask, weights, lambda value: (value / config.grad_accumulation).backward()
            )
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss is {loss} at step {step}: lower the learning rate or check weights")
            losses.append(loss)
        optimizer_step(params, optimizer, scheduler)
    model.eval()
    if output:
        save_encoder(model, tokenizer, spec, output)
    return {
        "losses": losses,
        "model": model,
        "tokenizer": tokenizer,
        "spec": spec,
        "precision": "bf16" if config.bf16 else "fp32",
    }
