"""``lrat train``: weighted-contrastive training of a bi-encoder on Ray Train.

The input is pairs: ``lrat mine`` output (``pairs/*.parquet``, see :mod:`lrat_ray.pairs`) or the
official LRAT release JSONL (``query, pos, neg, pos_id, neg_id, reasoning_len, satisfied,
reweight_rate``). Document texts come from ``--corpus`` by id when given, else from the pairs
(the text the agent was shown). Each training example is one query, its positive, ``group_size - 1``
of its in-set negatives (sampled, repeated when there are too few) and its weight; the loss is
:func:`lrat_ray.loss.weighted_info_nce` with in-batch negatives gathered across workers.

Training runs in a ``ray.train.torch.TorchTrainer``: the pairs are a Ray Dataset split across
workers (``get_dataset_shard``); the backend is plain DDP (gloo on CPU, NCCL on GPU) or DeepSpeed
ZeRO (stage and precision from a JSON config kept in ``lrat_ray/configs/``). Options: gradient
accumulation, linear warmup and decay, GradCache (``grad_cache_chunk``: embeddings are computed
without gradients, the loss is differentiated with respect to them, then each chunk is re-encoded
with its cached gradient, so the contrastive batch is not limited by activation memory), LoRA for
large decoder embedders (peft), gradient checkpointing, bf16. Checkpoints are
``ray.train.Checkpoint`` directories; with ``max_failures`` a dead worker group restarts from the
latest one at the step where it was taken. The final model is written in Hugging Face format (plus
sentence-transformers' module files) to ``output``, atomically.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from lrat_ray import __version__, storage
from lrat_ray.config import option
from lrat_ray.errors import LratError
from lrat_ray.loss import ABLATIONS, NORMALIZATIONS, ablation_weights, sample_negatives
from lrat_ray.model import POOLINGS

log = logging.getLogger(__name__)
CONFIG_DIR = Path(__file__).with_name("configs")
BACKENDS = ("ddp", "deepspeed")
SHUFFLE_BUFFER = 4096  # rows each worker reshuffles at a time after the first epoch


@dataclass
class TrainConfig:
    """Options of ``lrat train``."""

    pairs: list[str] = option(help="mined pairs (DIR/pairs or parquet files) or official LRAT JSONL files",
                              path=True)
    output: str = option(help="directory for the trained model (Hugging Face + sentence-transformers format; "
                              "local or URI; '{version}' is replaced by the version key)")
    model: str = option("embedded", help="model to start from: Hugging Face name or path, or 'embedded'", path=True)
    corpus: list[str] = option([], help="corpus files giving document texts by id (else the pairs' texts: the "
                                        "browsed text for positives, cut to the snippets' length, and snippets "
                                        "for negatives)", path=True)
    require_corpus: bool = option(False, help="refuse to train without --corpus (recipes set it: positives and "
                                              "negatives then have the same form)")
    workers: int = option(2, help="data-parallel training workers (the global batch grows with them)")
    use_gpu: bool = option(False, help="one GPU per worker")
    cpus_per_worker: float = option(1.0, help="CPUs reserved per training worker", runtime=True)
    resources: dict = option({}, help="custom resources per training worker, e.g. {\"gpu_stage\": 1} to keep "
                                      "training on the GPU node group", runtime=True)
    backend: str = option("ddp", choices=BACKENDS, help="ddp (gloo on CPU, nccl on GPU) or deepspeed")
    deepspeed_config: str | None = option(None, help="DeepSpeed JSON config (default: configs/deepspeed_zero2.json)",
                                          path=True)
    epochs: int = option(1, help="passes over the pairs")
    max_steps: int | None = option(None, help="stop after this many optimizer steps")
    per_device_batch: int = option(16, help="pairs per worker per micro-batch")
    grad_accumulation: int = option(1, help="micro-batches per optimizer step")
    group_size: int = option(4, help="documents per pair: 1 positive + (group_size-1) in-set negatives")
    negatives_with_replacement: bool = option(True, help="repeat negatives when a pair has too few (else mask)")
    temperature: float = option(0.05, help="InfoNCE temperature tau")
    learning_rate: float = option(2e-5, help="peak learning rate")
    warmup_ratio: float = option(0.1, help="share of steps with linear warmup (then linear decay)")
    weight_decay: float = option(0.01, help="AdamW weight decay")
    normalization: str = option("mean", choices=NORMALIZATIONS,
                                help="mean: 1/N as in the paper; weight_sum: 1/sum(w) as the official code")
    ablation: str = option("reweight", choices=ABLATIONS,
                           help="naive (w=1, no judge filter), filter (drop judge-irrelevant, w=1), "
                                "reweight-unfiltered (all pairs, w), reweight (LRAT: drop judge-irrelevant, w); "
                                "weights are rescaled to mean 1 over the pairs kept")
    grad_cache_chunk: int | None = option(None, help="GradCache: texts per re-encoded chunk (off when unset)")
    lora_rank: int | None = option(None, help="train LoRA adapters of this rank instead of all weights (peft)")
    gradient_checkpointing: bool = option(False, help="recompute activations in backward to save memory")
    bf16: bool = option(False, help="bfloat16 autocast (GPU)")
    pooling: str | None = option(None, choices=POOLINGS, help="override the model's pooling")
    query_prefix: str | None = option(None, help="query instruction template ('{}' = the query)")
    query_max_length: int | None = option(None, help="max query tokens (default from the model spec: 64)")
    document_max_length: int | None = option(None, help="max document tokens (default from the model spec: 256)")
    seed: int = option(0, help="seed for shuffling, negative sampling and initialisation")
    checkpoint_every: int = option(50, help="optimizer steps between checkpoints", runtime=True)
    max_failures: int = option(0, help="worker-group restarts allowed (each resumes from the last checkpoint)",
                               runtime=True)
    storage_path: str | None = option(None, help="Ray Train storage (checkpoints), shared by all nodes: a URI "
                                                 "on a cluster; default OUTPUT.ray/", runtime=True)
    address: str | None = option(None, help="Ray cluster address; default RAY_ADDRESS, else a local Ray",
                                 runtime=True)

    def __post_init__(self):
        if self.group_size < 1 or self.per_device_batch < 1 or self.workers < 1 or self.epochs < 1:
            raise ValueError("group_size, per_device_batch, workers and epochs must be at least 1")
        if self.temperature <= 0:
            raise ValueError("temperature must be positive")
        if self.require_corpus and not self.corpus:
            raise ValueError("this recipe requires --corpus: without it positives are full browsed texts and "
                             "negatives 300-character snippets, a length shortcut the model learns instead")


# ---------------------------------------------------------------------------------------------
# Input: pairs -> training examples (query, positive, negatives, weight)
# ---------------------------------------------------------------------------------------------

EXAMPLE_COLUMNS = ("query", "positive", "negatives", "weight")


def load_examples(config: TrainConfig) -> list[dict]:
    """Training examples from the pairs, after the ablation's filter and weights."""
    import pyarrow.dataset as pads

    texts = None
    if config.corpus:
        from lrat_ray.corpus import load_texts

        texts = load_texts(config.corpus)
    rows: list[dict] = []
    for spec in config.pairs:
        if spec.endswith((".jsonl", ".json")) or spec.endswith(".jsonl.gz"):
            rows.extend(_official_rows(spec))
            continue
        fs, path = storage.resolve(spec)
        table = pads.dataset(path, filesystem=fs, format="parquet").to_table()
        missing = {"query", "positive_id", "negative_ids", "weight"} - set(table.column_names)
        if missing:
            raise LratError(f"{spec}: pairs lack column(s) {sorted(missing)}; expected lrat mine output")
        for row in table.to_pylist():
            rows.append({"query": row["query"], "positive_id": row["positive_id"],
                         "positive_text": row.get("positive_text"), "negative_ids": row["negative_ids"] or [],
                         "negative_texts": row.get("negative_texts") or [], "weight": row["weight"],
                         "relevant": row.get("relevant"), "source": spec, "snippets": True})
    if not rows:
        raise LratError(f"no pairs in {config.pairs}")
    for row in rows:
        weight = row["weight"]
        if weight is None or not math.isfinite(weight) or weight < 0:
            raise LratError(f"{row['source']}: pair for query {row['query']!r:.60} has weight {weight}; "
                            "weights must be finite and non-negative")
    weights, keep = ablation_weights([r["weight"] for r in rows], [r["relevant"] for r in rows], config.ablation)
    examples = [_example(row, float(weight), texts) for row, weight, kept in zip(rows, weights, keep) if kept]
    if not examples:
        raise LratError(f"every pair was filtered out by ablation {config.ablation!r}")
    return examples


def _example(row: dict, weight: float, texts: dict[str, str] | None) -> dict:
    """One example. Corpus texts when a corpus is given; else what the pairs carry, and for mined
    pairs (negatives are snippets) the positive is cut to the snippets' length, so the two have
    the same form and length is not a shortcut."""
    shown = dict(zip(row["negative_ids"], row["negative_texts"]))
    if texts is not None:
        positive = texts.get(row["positive_id"]) or row["positive_text"]
        negatives = [t for t in (texts.get(d) or shown.get(d) for d in row["negative_ids"]) if t]
    else:
        negatives = [t for t in (shown.get(d) for d in row["negative_ids"]) if t]
        positive = row["positive_text"]
        if positive and negatives and row.get("snippets"):
            positive = positive[:max(len(t) for t in negatives)]
    if not positive:
        raise LratError(f"{row['source']}: no text for positive {row['positive_id']!r}; pass --corpus")
    return {"query": row["query"], "positive": positive, "negatives": negatives, "weight": weight}


def _official_rows(path: str) -> list[dict]:
    rows = []
    for position, record in storage.iter_records(path):
        if isinstance(record, Exception):
            raise record
        missing = {"query", "pos", "neg"} - set(record)
        if missing:
            raise LratError(f"{path}:{position}: missing field(s) {sorted(missing)} of the LRAT JSONL schema")
        pos_ids = record.get("pos_id") or [f"{path}:{position}:pos"]
        neg_ids = record.get("neg_id") or [f"{path}:{position}:neg{i}" for i in range(len(record["neg"]))]
        rows.append({"query": record["query"], "positive_id": pos_ids[0], "positive_text": record["pos"][0],
                     "negative_ids": neg_ids, "negative_texts": record["neg"],
                     "weight": record.get("reweight_rate", 1.0), "relevant": record.get("satisfied"),
                     "source": path})
    return rows


# ---------------------------------------------------------------------------------------------
# The per-worker loop
# ---------------------------------------------------------------------------------------------

def _encoder_spec(config: TrainConfig):
    from lrat_ray.model import spec_for

    return spec_for(config.model, pooling=config.pooling, query_prefix=config.query_prefix,
                    query_max_length=config.query_max_length, document_max_length=config.document_max_length)


def group_texts(batch: dict, group_size: int, rng: random.Random, with_replacement: bool
                ) -> tuple[list[str], list[str], list[bool], list[float]]:
    """Queries, documents (groups of positive + negatives), the document mask and the weights."""
    queries, documents, mask = [], [], []
    for query, positive, negatives in zip(batch["query"], batch["positive"], batch["negatives"]):
        queries.append(query)
        chosen = sample_negatives(list(negatives), group_size - 1, rng, with_replacement)
        documents.append(positive)
        mask.append(True)
        for doc in chosen:
            documents.append(doc if doc is not None else "")
            mask.append(doc is not None)
    return queries, documents, mask, [float(w) for w in batch["weight"]]


class RandomState:
    """torch's CPU (and current CUDA device's) random state, to replay a forward pass exactly."""

    def __init__(self, cpu, cuda, device):
        self.cpu, self.cuda, self.device = cpu, cuda, device

    @classmethod
    def capture(cls, device) -> "RandomState":
        import torch

        cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return cls(torch.get_rng_state(), cuda, device)

    def replay(self):
        """A context in which torch draws the same numbers as after :meth:`capture`; the global
        state is restored afterwards."""
        import contextlib

        import torch

        @contextlib.contextmanager
        def replaying():
            with torch.random.fork_rng(devices=[self.device] if self.cuda is not None else []):
                torch.set_rng_state(self.cpu)
                if self.cuda is not None:
                    torch.cuda.set_rng_state(self.cuda, self.device)
                yield

        return replaying()


class StepRunner:
    """Forward + loss + backward for one micro-batch, with or without GradCache."""

    def __init__(self, model, tokenizer, spec, config: TrainConfig, device):
        self.model, self.tokenizer, self.spec, self.config, self.device = model, tokenizer, spec, config, device

    def _embed(self, texts: list[str], max_length: int):
        from lrat_ray.model import embed

        batch = self.tokenizer(texts, truncation=True, max_length=max_length, padding=True,
                               return_tensors="pt").to(self.device)
        return embed(self.model, batch, self.spec, self.tokenizer.padding_side)

    def _embed_pair(self, queries: list[str], documents: list[str]):
        """Query and document embeddings. A plain module encodes each at its own padded length;
        under DDP or DeepSpeed both go through one forward pass (two forwards before one backward
        would mark every parameter ready twice), at the price of padding queries to the documents'
        width."""
        import torch

        if isinstance(self.model, torch.nn.Module) and not hasattr(self.model, "no_sync") \
                and not hasattr(self.model, "backward"):
            return (self._embed(queries, self.spec.query_max_length),
                    self._embed(documents, self.spec.document_max_length))
        return self._embed_together(queries, documents)

    def _embed_together(self, queries: list[str], documents: list[str]):
        import torch

        from lrat_ray.model import embed

        q = self.tokenizer(queries, truncation=True, max_length=self.spec.query_max_length, padding=True,
                           return_tensors="pt")
        d = self.tokenizer(documents, truncation=True, max_length=self.spec.document_max_length, padding=True,
                           return_tensors="pt")
        width = max(q["input_ids"].shape[1], d["input_ids"].shape[1])
        pad = self.tokenizer.pad_token_id

        def widen(t, value):
            extra = width - t.shape[1]
            if extra == 0:
                return t
            filler = torch.full((t.shape[0], extra), value, dtype=t.dtype)
            return torch.cat([t, filler], dim=1) if self.tokenizer.padding_side == "right" else torch.cat([filler, t], dim=1)

        batch = {"input_ids": torch.cat([widen(q["input_ids"], pad), widen(d["input_ids"], pad)]).to(self.device),
                 "attention_mask": torch.cat([widen(q["attention_mask"], 0), widen(d["attention_mask"], 0)]).to(self.device)}
        reps = embed(self.model, batch, self.spec, self.tokenizer.padding_side)
        return reps[:len(queries)], reps[len(queries):]

    def run(self, queries, documents, mask, weights, backward) -> float:
        """Returns the global loss; ``backward(value)`` runs the backward pass (DDP or DeepSpeed)."""
        import torch

        from lrat_ray.loss import distributed_loss

        w = torch.tensor(weights, dtype=torch.float32, device=self.device)
        m = torch.tensor(mask, dtype=torch.bool, device=self.device)
        if not self.config.grad_cache_chunk:
            with self._autocast():
                q, d = self._embed_pair([self.spec.format_query(t) for t in queries],
                                        [self.spec.format_document(t) for t in documents])
                value, loss = distributed_loss(q.float(), d.float(), w, m, self.config.temperature,
                                               self.config.group_size, self.config.normalization)
            backward(value)
            return float(loss)
        return self._run_grad_cache(queries, documents, m, w, backward)

    def _chunks(self, queries, documents):
        size = self.config.grad_cache_chunk
        q_texts = [self.spec.format_query(t) for t in queries]
        d_texts = [self.spec.format_document(t) for t in documents]
        return ([(q_texts[i:i + size], self.spec.query_max_length) for i in range(0, len(q_texts), size)],
                [(d_texts[i:i + size], self.spec.document_max_length) for i in range(0, len(d_texts), size)])

    def _run_grad_cache(self, queries, documents, mask, weights, backward) -> float:
        """GradCache (Gao et al., 2021): same gradients as one big batch, memory of one chunk."""
        import contextlib

        import torch

        from lrat_ray.loss import distributed_loss

        q_chunks, d_chunks = self._chunks(queries, documents)
        chunks = q_chunks + d_chunks
        # Each chunk's random state (dropout) is saved before its first pass and replayed in the
        # second, so the re-encoded representations are the ones the loss was differentiated at.
        states = []
        with torch.no_grad(), self._autocast():
            reps = []
            for texts, max_length in chunks:
                states.append(RandomState.capture(self.device))
                reps.append(self._embed(texts, max_length).float())
        q = torch.cat(reps[:len(q_chunks)])
        d = torch.cat(reps[len(q_chunks):])
        q.requires_grad_(True)
        d.requires_grad_(True)
        value, loss = distributed_loss(q, d, weights, mask, self.config.temperature, self.config.group_size,
                                       self.config.normalization)
        value.backward()
        grads = torch.cat([q.grad, d.grad])
        offset = 0
        for index, ((texts, max_length), state) in enumerate(zip(chunks, states)):
            last = index == len(chunks) - 1
            sync = contextlib.nullcontext() if last or not hasattr(self.model, "no_sync") else self.model.no_sync()
            with sync, state.replay(), self._autocast():
                reps = self._embed(texts, max_length).float()
                surrogate = (reps * grads[offset:offset + len(texts)]).sum()
            backward(surrogate)
            offset += len(texts)
        return float(loss)

    def _autocast(self):
        import contextlib

        import torch

        if self.config.bf16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


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

    spec, tokenizer, model = _starting_model(config)

    start_step, start_epoch, skip_batches = 0, 0, 0
    checkpoint = ray.train.get_checkpoint()
    state = None
    if checkpoint:
        with checkpoint.as_directory() as directory:
            state = torch.load(os.path.join(directory, "state.pt"), map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        start_step, start_epoch, skip_batches = state["step"], state["epoch"], state["batches_in_epoch"]

    params, optimizer, scheduler = _optimizer(model, config, total_steps)
    if config.backend == "deepspeed":
        engine = _deepspeed_engine(model, optimizer, scheduler, config)
        model_for_forward = engine
        backward = engine.backward
    else:
        model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": False}) \
            if world > 1 else model.to(device)
        model_for_forward, backward, engine = model, (lambda value: value.backward()), None
    if state is not None:
        if state["optimizer"] is not None and engine is None:
            optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    model_for_forward.train()
    runner = StepRunner(model_for_forward, tokenizer, spec, config, device)

    shard = ray.train.get_dataset_shard("train")
    step = start_step
    for epoch in range(start_epoch, config.epochs):
        batches = 0
        micro = 0
        window_loss, window_examples, window_start = 0.0, 0, time.time()
        # The driver shuffled the pairs once; later epochs reshuffle (seeded, so a restart sees
        # the same order and skips exactly the batches already done).
        shuffle = {} if epoch == 0 else {"local_shuffle_buffer_size": SHUFFLE_BUFFER,
                                         "local_shuffle_seed": config.seed * 1000 + epoch * 10 + rank}
        for batch in shard.iter_batches(batch_size=config.per_device_batch, batch_format="numpy", **shuffle):
            if epoch == start_epoch and batches < skip_batches:
                batches += 1  # done before the restart: same order, skip it
                continue
            batches += 1
            rng = random.Random(hash((config.seed, epoch, batches, rank)))
            queries, documents, mask, weights = group_texts(batch, config.group_size, rng,
                                                            config.negatives_with_replacement)
            scale = 1.0 / config.grad_accumulation

            def scaled_backward(value):  # DeepSpeed scales for accumulation itself
                backward(value * scale) if engine is None else backward(value)

            loss = runner.run(queries, documents, mask, weights, scaled_backward)
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss is {loss} at step {step}: lower the learning rate or check weights")
            window_loss += loss
            window_examples += len(queries) * world
            micro += 1
            if engine is not None:
                engine.step()  # an optimizer step only at accumulation boundaries
            if micro % config.grad_accumulation:
                continue
            if engine is None:
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            step += 1
            elapsed = max(time.time() - window_start, 1e-9)
            metrics = {"step": step, "epoch": epoch, "loss": window_loss / config.grad_accumulation,
                       "lr": scheduler.get_last_lr()[0], "examples_per_s": window_examples / elapsed,
                       "resumed_from_step": start_step if checkpoint else None}
            window_loss, window_examples, window_start = 0.0, 0, time.time()
            done = step >= total_steps
            if step % config.checkpoint_every == 0 or done:
                _report_with_checkpoint(metrics, model_for_forward, None if engine else optimizer, scheduler,
                                        step, epoch, batches, rank, spec, tokenizer, final=done)
            else:
                ray.train.report(metrics)
            if done:
                return
        skip_batches = 0


def _starting_model(config: TrainConfig):
    """The encoder spec, tokenizer and model to train (with LoRA adapters and checkpointing)."""
    from lrat_ray.embedded import resolve_model
    from lrat_ray.model import load_tokenizer, load_transformer

    spec = _encoder_spec(config)
    tokenizer = load_tokenizer(resolve_model(config.model), spec)
    model = load_transformer(resolve_model(config.model))
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if config.lora_rank:
        model = _with_lora(model, config.lora_rank)
    return spec, tokenizer, model


def _optimizer(model, config: TrainConfig, total_steps: int):
    """Trainable parameters, AdamW and the linear warmup-then-decay schedule."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), max(total_steps, 1))
    return params, optimizer, scheduler


def fit_in_process(config: TrainConfig, examples: list[dict], steps: int, output: str | None = None) -> dict:
    """Train in this process, no Ray: exactly ``steps`` optimizer steps of ``per_device_batch`` x
    ``grad_accumulation`` examples, cycling through ``examples`` reshuffled on every pass. The
    step is the Ray Train worker's (:class:`StepRunner`); experiments that train many small
    models (``lrat ablation``) use it so that every arm trains the same number of steps from the
    same start without a worker group's start-up cost. Writes the model to ``output`` if given.
    Returns the losses and the (unwrapped) model, tokenizer and spec."""
    import torch

    from lrat_ray.model import save_encoder

    torch.manual_seed(config.seed)
    spec, tokenizer, model = _starting_model(config)
    params, optimizer, scheduler = _optimizer(model, config, steps)
    model.train()
    runner = StepRunner(model, tokenizer, spec, config, torch.device("cpu"))
    order_rng = random.Random(config.seed)
    stream: list[dict] = []
    losses = []
    for step in range(steps):
        for micro in range(config.grad_accumulation):
            while len(stream) < config.per_device_batch:
                stream.extend(order_rng.sample(examples, len(examples)))
            batch, stream = stream[:config.per_device_batch], stream[config.per_device_batch:]
            columns = {name: [e[name] for e in batch] for name in EXAMPLE_COLUMNS}
            rng = random.Random(hash((config.seed, step, micro)))
            queries, documents, mask, weights = group_texts(columns, config.group_size, rng,
                                                            config.negatives_with_replacement)
            loss = runner.run(queries, documents, mask, weights,
                              lambda value: (value / config.grad_accumulation).backward())
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss is {loss} at step {step}: lower the learning rate or check weights")
            losses.append(loss)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    if output:
        save_encoder(model, tokenizer, spec, output)
    return {"losses": losses, "model": model, "tokenizer": tokenizer, "spec": spec}


def _report_with_checkpoint(metrics, model, optimizer, scheduler, step, epoch, batches, rank, spec, tokenizer,
                            final: bool) -> None:
    import ray.train
    import torch

    from lrat_ray.model import save_encoder

    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if rank == 0:
            unwrapped = getattr(model, "module", model)
            # With DeepSpeed the optimizer state is partitioned: a restart keeps the weights and
            # schedule and starts the optimizer moments afresh.
            torch.save({"model": unwrapped.state_dict(),
                        "optimizer": optimizer.state_dict() if optimizer is not None else None,
                        "scheduler": scheduler.state_dict(), "step": step, "epoch": epoch,
                        "batches_in_epoch": batches}, os.path.join(directory, "state.pt"))
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
    return get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                            target_modules="all-linear"))


def _deepspeed_engine(model, optimizer, scheduler, config: TrainConfig):
    try:
        import deepspeed
    except ImportError:
        raise LratError("--backend deepspeed needs the 'gpu' extra (or DS_BUILD_OPS=0 pip install deepspeed)") from None
    ds_config = deepspeed_config(config)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=ds_config, dist_init_required=False)
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


# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------

def run_train(config: TrainConfig) -> dict:
    """Train and write the model to ``config.output``; returns a summary (also in train_report.json)."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from lrat_ray.model import spec_for
    from lrat_ray.runtime import init_ray

    started = time.time()
    # Workers run in their own directories: hand them absolute paths for anything local.
    config = dataclasses.replace(config, model=_absolute_if_local(config.model),
                                 deepspeed_config=config.deepspeed_config and _absolute_if_local(config.deepspeed_config))
    _check_model_loads(config.model)
    examples = load_examples(config)
    random.Random(config.seed).shuffle(examples)
    per_step = config.per_device_batch * config.workers * config.grad_accumulation
    steps_per_epoch = max(1, len(examples) // per_step)
    total_steps = min(config.max_steps or steps_per_epoch * config.epochs, steps_per_epoch * config.epochs)
    init_ray(config.address)
    _check_resources(config)
    # Keep whole batches only, so every worker takes the same number of steps (no hang at the end).
    usable = steps_per_epoch * per_step
    dataset = ray.data.from_items(examples[:usable])
    storage_path = config.storage_path or os.path.abspath(config.output.rstrip("/") + ".ray")
    if not storage.is_remote(storage_path):
        os.makedirs(storage_path, exist_ok=True)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": dataclasses.asdict(config), "total_steps": total_steps,
                           "storage_path": storage_path},
        scaling_config=ray.train.ScalingConfig(num_workers=config.workers, use_gpu=config.use_gpu,
                                               resources_per_worker=_worker_resources(config)),
        run_config=ray.train.RunConfig(
            name=f"lrat-train-{int(started)}", storage_path=storage_path,
            # A worker group that cannot start (resources taken) fails after a few tries, not never.
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures, controller_failure_limit=3),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)),
        datasets={"train": dataset},
        dataset_config=ray.train.DataConfig(execution_options=_ordered()),
    )
    result = trainer.fit()
    if result.error:
        raise LratError(f"training failed: {result.error}")
    with result.checkpoint.as_directory() as directory:
        state_step = result.metrics.get("step")
        model_dir = os.path.join(directory, "model")
        if not os.path.isdir(model_dir):
            raise LratError("training ended without a final model checkpoint")
        _publish_model(model_dir, config.output)
    summary = {"model": config.output, "base_model": config.model, "examples": len(examples),
               "examples_used_per_epoch": usable, "steps": state_step, "total_steps": total_steps,
               "final_metrics": result.metrics, "config": dataclasses.asdict(config),
               "encoder": dataclasses.asdict(spec_for(config.output)),
               "wall_seconds": round(time.time() - started, 1), "lrat_ray": __version__}
    storage.write_json_atomic(os.path.join(config.output, "train_report.json"), summary)
    return summary


def _worker_resources(config: TrainConfig) -> dict:
    from lrat_ray.runtime import actor_resources

    return actor_resources(config.cpus_per_worker, 1 if config.use_gpu else 0, config.resources)


def _check_resources(config: TrainConfig) -> None:
    """Fail fast on a request the cluster can never satisfy (Ray Train would wait for it forever)."""
    import ray

    total = ray.cluster_resources()
    for name, per_worker in _worker_resources(config).items():
        needed = per_worker * config.workers
        if total.get(name, 0) < needed:
            raise LratError(f"training needs {needed:g} {name} ({config.workers} workers x {per_worker:g}) but the "
                            f"cluster has {total.get(name, 0):g}; lower --workers or --cpus-per-worker")
        available = ray.available_resources().get(name, 0)
        if available < needed:
            log.warning("only %g of the %g %s training needs are free now; waiting for them", available, needed, name)


def _ordered():
    from ray.data import ExecutionOptions

    options = ExecutionOptions()
    options.preserve_order = True  # the same order after a restart, so skipping done batches is exact
    return options


def _absolute_if_local(path: str) -> str:
    return os.path.abspath(path) if os.path.exists(path) else path


def _check_model_loads(model: str) -> None:
    from transformers import AutoConfig

    from lrat_ray.embedded import resolve_model

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
