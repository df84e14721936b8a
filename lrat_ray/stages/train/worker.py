"""The loop every Ray Train worker runs: model and optimizer, the data shard epoch by epoch,
accumulation, checkpoints (and resuming from them), DDP or DeepSpeed."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import tempfile
import time
from pathlib import Path

from lrat_ray.infra import storage
from lrat_ray.infra.errors import LratError
from lrat_ray.infra.hardware import resolve_bf16
from lrat_ray.stages.train import checkpointing, dropout
from lrat_ray.stages.train.config import CONFIG_DIR, TrainConfig
from lrat_ray.stages.train.data import group_texts
from lrat_ray.stages.train.optimizer import build_optimizer, optimizer_step, to_bf16_weights
from lrat_ray.stages.train.prefetch import prefetched
from lrat_ray.stages.train.regional_compile import compile_layers
from lrat_ray.stages.train.step import pair_forward, step_runner, unwrap

SHUFFLE_BUFFER = 4096  # rows each worker reshuffles at a time after the first epoch


def train_loop_per_worker(loop_config: dict) -> None:
    """Runs on every Ray Train worker."""
    import ray.train
    import torch

    config = TrainConfig(**loop_config["config"])
    total_steps = loop_config["total_steps"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(config.seed)
    device = ray.train.torch.get_device() if config.use_gpu else torch.device("cpu")
    # auto precision is decided here, on the worker's own device (the driver may have no GPU).
    config = resolve_device_options(config, device)

    spec, tokenizer, model = starting_model(config)

    start_step, start_epoch, skip_batches = 0, 0, 0
    checkpoint = ray.train.get_checkpoint()
    state = None
    if checkpoint:
        with checkpoint.as_directory() as directory:
            state = torch.load(os.path.join(directory, "state.pt"), map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        start_step, start_epoch, skip_batches = state["step"], state["epoch"], state["batches_in_epoch"]

    if config.bf16_weights:
        to_bf16_weights(model)
    params, optimizer, scheduler = build_optimizer(model, config, total_steps, config.bf16_weights)
    if config.backend == "deepspeed" or world > 1:
        model = pair_forward(model)  # one forward per step for the wrapper, queries unpadded
    if config.backend == "deepspeed":
        engine = _deepspeed_engine(model, optimizer, scheduler, config)
        model_for_forward = engine
        backward = engine.backward
    else:
        model = (
            ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": False})
            if world > 1
            else model.to(device)
        )
        model_for_forward, backward, engine = model, (lambda value: value.backward()), None
    if state is not None:
        if state["optimizer"] is not None and engine is None:
            optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    model_for_forward.train()
    runner = step_runner(model_for_forward, tokenizer, spec, config, device)

    if start_step >= total_steps:  # finished before the driver died: hand back the final checkpoint
        ray.train.report(
            {**state.get("metrics", {"step": start_step}), "resumed_from_step": start_step},
            checkpoint=checkpoint if rank == 0 else None,
        )
        return
    shard = ray.train.get_dataset_shard("train")
    step = start_step
    progress = ProgressFile(loop_config["storage_path"], total_steps)
    for epoch in range(start_epoch, config.epochs):
        micro = 0
        window_loss, window_examples, window_start = 0.0, 0, time.time()

        def prepared_batches(epoch=epoch, skip_batches=skip_batches):
            """(batches so far in the epoch, the prepared micro-batch); run ahead by ``prefetched``."""
            batches = 0
            for batch in epoch_batches(shard, config, epoch, rank):
                batches += 1
                if epoch == start_epoch and batches <= skip_batches:
                    continue  # done before the restart: same order, skip it
                rng = random.Random(hash((config.seed, epoch, batches, rank)))
                yield (
                    batches,
                    runner.prepare(*group_texts(batch, config.group_size, rng, config.negatives_with_replacement)),
                )

        for batches, prepared in prefetched(prepared_batches(), config.prefetch_batches):
            scale = 1.0 / config.grad_accumulation

            def scaled_backward(value, scale=scale):  # DeepSpeed scales for accumulation itself
                backward(value * scale) if engine is None else backward(value)

            window_loss = window_loss + runner.run_prepared(prepared, scaled_backward)  # stays on the device
            window_examples += prepared.queries * world
            micro += 1
            boundary = micro % config.grad_accumulation == 0
            if boundary:  # the one synchronisation of a step: read the loss before stepping on it
                window_loss = float(window_loss)
                if not math.isfinite(window_loss):
                    raise FloatingPointError(
                        f"loss is {window_loss} at step {step}: lower the learning rate or check weights"
                    )
            if engine is not None:
                engine.step()  # an optimizer step only at accumulation boundaries
            if not boundary:
                continue
            if engine is None:
                optimizer_step(params, optimizer, scheduler)
            step += 1
            elapsed = max(time.time() - window_start, 1e-9)
            metrics = {
                "step": step,
                "epoch": epoch,
                "loss": window_loss / config.grad_accumulation,
                "precision": "bf16" if config.bf16 else "fp32",
                "packing": bool(config.packing),
                "bf16_weights": bool(config.bf16_weights),
                "lr": scheduler.get_last_lr()[0],
                "examples_per_s": window_examples / elapsed,
                "resumed_from_step": start_step if checkpoint else None,
            }
            window_loss, window_examples, window_start = 0.0, 0, time.time()
            done = step >= total_steps
            if rank == 0:
                progress.report(step, metrics["loss"], metrics["examples_per_s"], done)
            if step % config.checkpoint_every == 0 or done:
                _report_with_checkpoint(
                    metrics,
                    model_for_forward,
                    None if engine else optimizer,
                    scheduler,
                    step,
                    epoch,
                    batches,
                    rank,
                    spec,
                    tokenizer,
                    final=done,
                )
            else:
                ray.train.report(metrics)
            if done:
                return
        skip_batches = 0


def resolve_device_options(config: TrainConfig, device) -> TrainConfig:
    """bf16, bf16 weights and packing as this worker's device resolves their ``auto``. bf16 weights
    (with fp32 masters) by default only on CUDA, where per-forward weight casts cost most; with
    DeepSpeed, its own bf16 section keeps the masters instead."""
    import torch

    from lrat_ray.models.packing import packed_supported

    device = torch.device(device)
    bf16 = resolve_bf16(config.bf16, str(device))
    weights = config.bf16_weights if config.bf16_weights is not None else (bf16 and device.type == "cuda")
    return dataclasses.replace(
        config,
        bf16=bf16,
        bf16_weights=bool(weights) and config.backend != "deepspeed",
        packing=packed_supported(device) if config.packing is None else config.packing,
    )


def epoch_batches(shard, config: TrainConfig, epoch: int, rank: int):
    """One epoch of a worker's data shard in batches. The driver shuffled the pairs once; later
    epochs reshuffle, seeded by (seed, epoch, rank), so a restarted worker sees the same order and
    skips exactly the batches it had done."""
    shuffle = (
        {}
        if epoch == 0
        else {"local_shuffle_buffer_size": SHUFFLE_BUFFER, "local_shuffle_seed": config.seed * 1000 + epoch * 10 + rank}
    )
    return shard.iter_batches(batch_size=config.per_device_batch, batch_format="numpy", **shuffle)


def starting_model(config: TrainConfig):
    """The encoder spec, tokenizer and model to train (with LoRA adapters, checkpointing and, on
    CPU, the cheaper dropout)."""
    from lrat_ray.models.embedded import resolve_model
    from lrat_ray.models.encoder import load_tokenizer, load_transformer

    spec = config.encoder_spec()
    tokenizer = load_tokenizer(resolve_model(config.model), spec)
    return spec, tokenizer, prepare_model(load_transformer(resolve_model(config.model)), config)


def prepare_model(model, config: TrainConfig):
    """The step's levers applied to a loaded encoder, in the order they compose: the cheaper CPU
    dropout, packed attention, activation checkpointing, LoRA adapters, regional compile. Returns
    the model to train (LoRA wraps it). Used by the worker, fit_in_process and bench_gpu_step."""
    if config.fast_dropout and not config.use_gpu:
        dropout.install(model)
    if config.packing:  # after the dropout's attention function: packed attention replaces it
        from lrat_ray.models import packing

        packing.install(model)
    checkpointing.enable(model, config.gradient_checkpointing)
    if config.lora_rank:
        model = _with_lora(model, config.lora_rank)
    if config.compile_layers:  # after LoRA, so the compiled layers trace the adapters too
        compile_layers(model)
    return model


def _report_with_checkpoint(
    metrics, model, optimizer, scheduler, step, epoch, batches, rank, spec, tokenizer, final: bool
) -> None:
    import ray.train
    import torch

    from lrat_ray.models.encoder import save_encoder

    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if rank == 0:
            unwrapped = unwrap(model)
            # With DeepSpeed the optimizer state is partitioned: a restart keeps the weights and
            # schedule and starts the optimizer moments afresh.
            torch.save(
                {
                    "model": unwrapped.state_dict(),
                    "optimizer": optimizer.state_dict() if optimizer is not None else None,
                    "scheduler": scheduler.state_dict(),
                    "step": step,
                    "epoch": epoch,
                    "batches_in_epoch": batches,
                    "metrics": metrics,
                },
                os.path.join(directory, "state.pt"),
            )
            if final:
                merged = unwrapped.merge_and_unload() if hasattr(unwrapped, "merge_and_unload") else unwrapped
                save_encoder(merged, tokenizer, spec, os.path.join(directory, "model"))
            checkpoint = ray.train.Checkpoint.from_directory(directory)
        ray.train.report(metrics, checkpoint=checkpoint)


def _with_lora(model, rank: int):
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise LratError("--lora-rank needs peft: pip install peft") from None
    return get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules="all-linear"))


def _deepspeed_engine(model, optimizer, scheduler, config: TrainConfig):
    try:
        import deepspeed
    except ImportError:
        raise LratError("--backend deepspeed needs the 'gpu' extra (or DS_BUILD_OPS=0 pip install deepspeed)") from None
    ds_config = deepspeed_config(config)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config, dist_init_required=False
    )
    return engine


def deepspeed_config(config: TrainConfig) -> dict:
    """The DeepSpeed JSON config with batch sizes, precision and clipping filled in from ``config``."""
    path = Path(config.deepspeed_config) if config.deepspeed_config else CONFIG_DIR / "deepspeed_zero2.json"
    try:
        ds = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise LratError(f"DeepSpeed config {path}: {exc}") from None
    ds["train_micro_batch_size_per_gpu"] = config.per_device_batch
    ds["gradient_accumulation_steps"] = config.grad_accumulation
    ds["train_batch_size"] = config.per_device_batch * config.grad_accumulation * config.workers
    ds.setdefault("gradient_clipping", 1.0)
    ds["bf16"] = {"enabled": bool(config.bf16)}
    ds["zero_allow_untested_optimizer"] = True  # the optimizer is torch's AdamW, built by us
    return ds


class ProgressFile:
    """Rank 0's steps for the driver's console (``driver.watch_progress``): the training loop runs
    in workers whose output stays in Ray's logs. Written at most every few seconds, atomically."""

    EVERY_S = 5.0

    def __init__(self, storage_path: str, total_steps: int):
        self.uri = progress_uri(storage_path)
        self.total, self.last = total_steps, 0.0

    def report(self, step: int, loss: float, examples_per_s: float, done: bool) -> None:
        if not done and time.time() - self.last < self.EVERY_S:
            return
        self.last = time.time()
        try:
            storage.write_json_atomic(
                self.uri,
                {
                    "step": step,
                    "total_steps": self.total,
                    "loss": loss,
                    "examples_per_s": examples_per_s,
                    "time": self.last,
                },
            )
        except OSError:  # progress is a courtesy: never a reason to stop training
            pass


def progress_uri(storage_path: str) -> str:
    return storage.join(storage_path, "progress.json")
