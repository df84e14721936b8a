"""Dropout with cheaper random numbers, for training on CPUs.

torch's dropout draws a 32-bit random number per element (Bernoulli sampling): on CPU that was 18%
of a MiniLM training step, more than the attention's matrix products. Here four 16-bit numbers come
from each 64-bit draw of torch's own generator (so ``torch.manual_seed``, ``fork_rng`` and
GradCache's replay govern it as before), and an element is kept when its number is at or above
``p`` x 65536. ``p`` is thus rounded to a multiple of 1/65536 (FlashAttention rounds it to 1/256)
and kept elements are scaled by ``1 / (1 - p)`` of the rounded ``p``: the output stays unbiased.

:func:`install` puts it into an encoder: its ``nn.Dropout`` modules, and the dropout on attention
probabilities of models that take their attention function from transformers' attention interface
(BERT, MiniLM and most encoders do). GPUs draw random numbers cheaply and fuse dropout into their
kernels, so :class:`~lrat_ray.stages.train.StepRunner` installs it on CPU only.
"""

from __future__ import annotations

import torch

LEVELS = 1 << 16
ATTENTION = "lrat_cpu_dropout"


def drop_mask(shape: torch.Size, p: float, device: torch.device) -> tuple[torch.Tensor, float]:
    """A boolean mask of ``shape``, True where an element is dropped (probability ``p`` rounded to
    1/65536), and the scale of the kept elements that keeps the output unbiased."""
    count = shape.numel()
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=device).random_(-(1 << 63), (1 << 63) - 1)
    numbers = words.view(torch.int16)[:count].view(shape)
    dropped = round(p * LEVELS)
    return numbers < dropped - LEVELS // 2, LEVELS / (LEVELS - dropped)


class _ScaleAndDrop(torch.autograd.Function):
    # masked_fill_ on the scaled copy: one pass, where multiplying by the mask converts it to floats first.
    @staticmethod
    def forward(ctx, x, dropped, scale):
        ctx.save_for_backward(dropped)
        ctx.scale = scale
        return (x * scale).masked_fill_(dropped, 0.0)

    @staticmethod
    def backward(ctx, grad):
        (dropped,) = ctx.saved_tensors
        return (grad * ctx.scale).masked_fill_(dropped, 0.0), None, None


def drop(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``torch.nn.functional.dropout`` with the cheaper mask."""
    if not training or p == 0.0:
        return x
    if p >= 1.0:
        return x * 0.0
    dropped, scale = drop_mask(x.shape, p, x.device)
    return _ScaleAndDrop.apply(x, dropped, scale)


class Dropout(torch.nn.Dropout):
    """``nn.Dropout`` (same ``p``, same place in the model) with the cheaper mask."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop(x, self.p, self.training)


def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None, **kwargs):
    """transformers' attention function: scaled dot products, softmax, this dropout on the
    probabilities; without dropout (evaluation), and for causal models (whose mask ``sdpa`` may
    leave to its ``is_causal`` flag), torch's ``sdpa``. ``attention_mask`` is what the ``sdpa`` mask
    function makes: boolean, True where a key may be attended, or None."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if dropout == 0.0 or getattr(module, "is_causal", False) or kwargs.get("is_causal"):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=scaling, **kwargs)
    if key.size(1) != query.size(1):  # grouped-query attention: each key head serves several query heads
        repeat = query.size(1) // key.size(1)
        key, value = key.repeat_interleave(repeat, dim=1), value.repeat_interleave(repeat, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * (scaling if scaling is not None else query.size(-1) ** -0.5)
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    probabilities = drop(torch.softmax(scores, dim=-1), dropout)
    return torch.matmul(probabilities, value).transpose(1, 2).contiguous(), None


def install(model) -> int:
    """Replace the dropout of ``model`` (a transformers model) by this one; returns how many
    dropout modules were replaced. Attention dropout moves over where the model's attention comes
    from transformers' attention interface and is ``sdpa`` or eager."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    replaced = 0
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is torch.nn.Dropout:
                setattr(parent, name, Dropout(child.p, child.inplace).train(child.training))
                replaced += 1
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "_attn_implementation", None) in ("sdpa", "eager"):
        AttentionInterface.register(ATTENTION, attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, sdpa_mask)
        model.set_attn_implementation(ATTENTION)
    return replaced
