"""``TrainConfig``: every option of ``lrat train`` (and of the in-process trainer)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lrat_ray.core.loss import ABLATIONS, NORMALIZATIONS
from lrat_ray.infra.config import ActorPool, checked, option
from lrat_ray.infra.hardware import parse_auto
from lrat_ray.models.encoder import EncoderOptions
from lrat_ray.stages.train.checkpointing import MODES, parse_mode

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
BACKENDS = ("ddp", "deepspeed")


@dataclass(kw_only=True)
@checked
class TrainConfig(EncoderOptions, ActorPool):
    """Options of ``lrat train`` (the encoder options and actor pool are shared with other stages)."""

    pairs: list[str] = option(help="mined pairs (DIR/pairs or parquet files) or official LRAT JSONL files", path=True)
    output: str = option(
        help="directory for the trained model (Hugging Face + sentence-transformers format; "
        "local or URI; '{version}' is replaced by the version key)"
    )
    corpus: list[str] = option(
        [],
        help="corpus files giving document texts by id (else the pairs' texts: the "
        "browsed text for positives, cut to the snippets' length, and snippets "
        "for negatives)",
        path=True,
    )
    require_corpus: bool = option(
        False, help="refuse to train without --corpus (recipes set it: positives and negatives then have the same form)"
    )
    workers: int = option(2, minimum=1, help="data-parallel training workers (the global batch grows with them)")
    use_gpu: bool = option(False, help="one GPU per worker")
    backend: str = option("ddp", choices=BACKENDS, help="ddp (gloo on CPU, nccl on GPU) or deepspeed")
    deepspeed_config: str | None = option(
        None, help="DeepSpeed JSON config (default: configs/deepspeed_zero2.json)", path=True
    )
    epochs: int = option(1, minimum=1, help="passes over the pairs")
    max_steps: int | None = option(None, help="stop after this many optimizer steps")
    per_device_batch: int = option(16, minimum=1, help="pairs per worker per micro-batch")
    grad_accumulation: int = option(1, minimum=1, help="micro-batches per optimizer step")
    group_size: int = option(4, minimum=1, help="documents per pair: 1 positive + (group_size-1) in-set negatives")
    negatives_with_replacement: bool = option(True, help="repeat negatives when a pair has too few (else mask)")
    temperature: float = option(0.05, help="InfoNCE temperature tau")
    learning_rate: float = option(2e-5, help="peak learning rate")
    warmup_ratio: float = option(0.1, help="share of steps with linear warmup (then linear decay)")
    weight_decay: float = option(0.01, help="AdamW weight decay")
    normalization: str = option(
        "mean", choices=NORMALIZATIONS, help="mean: 1/N as in the paper; weight_sum: 1/sum(w) as the official code"
    )
    ablation: str = option(
        "reweight",
        choices=ABLATIONS,
        help="naive (w=1, no judge filter), filter (drop judge-irrelevant, w=1), "
        "reweight-unfiltered (all pairs, w), reweight (LRAT: drop judge-irrelevant, w); "
        "weights are rescaled to mean 1 over the pairs kept",
    )
    grad_cache_chunk: int | None = option(None, help="GradCache: texts per re-encoded chunk (off when unset)")
    fast_dropout: bool = option(
        True,
        help="on CPU, dropout masks from 16-bit random numbers (p rounded to "
        "1/65536), ~3.5x cheaper than torch's here (lrat_ray.stages.train.dropout)",
    )
    length_groups: int = option(
        4,
        minimum=1,
        help="encode each side of a batch in up to this many groups of "
        "similar length, each padded to its own longest (1: one group)",
    )
    bf16_weights: bool | None = option(
        None,
        convert=parse_auto,
        default_text="auto",
        help="keep the model's weights in bf16 with fp32 master weights and "
        "optimizer state (lrat_ray.stages.train.optimizer; no per-forward weight "
        "casts); auto: on CUDA when bf16 is on; DeepSpeed keeps its own masters",
    )
    lora_rank: int | None = option(None, help="train LoRA adapters of this rank instead of all weights (peft)")
    gradient_checkpointing: str = option(
        "off",
        choices=MODES,
        convert=parse_mode,
        help="recompute activations in backward to save memory: off, full (each "
        "layer recomputed) or selective (matmul and attention outputs kept, "
        "elementwise work recomputed; lrat_ray.stages.train.checkpointing); "
        "true/false in YAML mean full/off",
    )
    compile_layers: bool = option(
        False,
        help="torch.compile each transformer layer (regional compile: fuses "
        "the elementwise kernels between matmuls; lrat_ray.stages.train."
        "regional_compile); the first steps pay the compilation",
    )
    prefetch_batches: int = option(
        2,
        minimum=0,
        runtime=True,
        help="micro-batches read and tokenized ahead of the step in a background "
        "thread (lrat_ray.stages.train.prefetch); 0: in the training loop",
    )
    seed: int = option(0, help="seed for shuffling, negative sampling and initialisation")
    checkpoint_every: int = option(50, help="optimizer steps between checkpoints", runtime=True)
    max_failures: int = option(
        0, help="worker-group restarts allowed (each resumes from the last checkpoint)", runtime=True
    )
    storage_path: str | None = option(
        None,
        help="Ray Train storage (checkpoints), shared by all nodes: a URI on a cluster; default OUTPUT.ray/",
        runtime=True,
    )
    run_name: str | None = option(
        None,
        help="Ray Train run name under storage_path; a run started again with the "
        "same name resumes from its last checkpoint (default: train-<version "
        "key>, so a resubmitted job resumes)",
        runtime=True,
    )

    def __post_init__(self):
        if self.temperature <= 0:
            raise ValueError("temperature must be positive")
        if self.require_corpus and not self.corpus:
            raise ValueError(
                "this recipe requires --corpus: without it positives are full browsed texts and "
                "negatives 300-character snippets, a length shortcut the model learns instead"
            )
