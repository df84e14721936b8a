"""Activation checkpointing: off, full (every layer recomputed in backward) or selective.

Full checkpointing keeps only each layer's input and recomputes the whole layer in backward: the
paper's recipe needs it to fit in 80 GB, and it costs a second forward. Selective checkpointing
(torch's ``create_selective_checkpoint_contexts``) keeps what is expensive to recompute, the
outputs of matrix multiplications and attention, and recomputes only the cheap elementwise work
(norms, activations, rotary embeddings, dtype casts), which under bf16 autocast in fp32 is much of
the memory and little of the time. Each mode is a row of ``benchmarks/bench_gpu_step.py``.
"""

from __future__ import annotations

import functools

MODES = ("off", "full", "selective")


def parse_mode(value) -> str:
    """``true``/``false`` (the option's old boolean form, still read from YAML) or a mode name."""
    if value is True:
        return "full"
    if value is False or value is None:
        return "off"
    text = str(value).strip().lower()
    return {"true": "full", "yes": "full", "on": "full", "false": "off", "no": "off"}.get(text, text)


def _saved(op) -> bool:
    """Whether a selective checkpoint keeps this op's output: matmuls and attention kernels."""
    import torch

    aten = torch.ops.aten
    if op in (aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default):
        return True
    name = str(op)
    return "attention" in name or "attn" in name


def _policy(ctx, op, *args, **kwargs):
    from torch.utils.checkpoint import CheckpointPolicy

    return CheckpointPolicy.MUST_SAVE if _saved(op) else CheckpointPolicy.PREFER_RECOMPUTE


def enable(model, mode: str) -> None:
    """Checkpoint every layer of a transformers ``model`` in ``mode`` (non-reentrant checkpoints:
    they replay the random state, so dropout masks match, and work with frozen LoRA bases)."""
    if mode not in MODES:
        raise ValueError(f"gradient_checkpointing must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "off":
        return
    kwargs = {"use_reentrant": False}
    if mode == "selective":
        from torch.utils.checkpoint import create_selective_checkpoint_contexts

        kwargs["context_fn"] = functools.partial(create_selective_checkpoint_contexts, _policy)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
