"""Padding-free ("packed") encoding: a batch of texts as one row of concatenated tokens.

A padded batch of 320 documents computes every layer on ``320 x longest`` tokens; on the paper's
recipe 1.6x the real ones. Packed, the texts are one row of their real tokens, with position ids
that restart at each text and attention restricted to each text, and the vectors are pooled by
the text boundaries (``cu_seqlens``: the running sum of the lengths, as FlashAttention names it).
This is what sentence-transformers 6's flattened batches and nomic's contrastors do on GPUs.

Attention runs through a transformers attention function registered here (:data:`ATTENTION`), so
any model whose attention comes from transformers' attention interface (BERT/MiniLM, Llama,
Qwen3, ...) packs without changing its code. It reads ``cu_seq_lens_q`` from the forward's
keyword arguments (transformers passes them down to every attention call) and computes:

* on CUDA, when torch has it: ``torch.nn.attention.varlen.varlen_attn`` (FlashAttention's variable
  length kernel; grouped-query attention and the causal window of decoders included);
* elsewhere (CPU, or a torch without the kernel): exactly the same attention, text by text with
  ``scaled_dot_product_attention``. It saves the padding's FLOPs, not the kernel launches.

No mask function is registered for it, so transformers builds no ``T x T`` mask for the packed row.
:func:`packed_supported` says where the fast kernel exists; ``Encoder`` and the training step pack
by default only there (on CPU the padded path with length groups measured as fast; see the README).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

ATTENTION = "lrat_packed"


@dataclass
class Packed:
    """One row of concatenated texts: ``input_ids`` and ``position_ids`` of shape ``(1, T)``,
    ``cu_seqlens`` ``(n + 1,)`` int32 and the longest text's length."""

    input_ids: object
    position_ids: object
    cu_seqlens: object
    max_length: int

    def to(self, device) -> Packed:
        return Packed(
            self.input_ids.to(device, non_blocking=True),
            self.position_ids.to(device, non_blocking=True),
            self.cu_seqlens.to(device, non_blocking=True),
            self.max_length,
        )

    def pin_memory(self) -> Packed:
        """Page-locked host copies, so that ``to(cuda)`` does not block the host."""
        return Packed(
            self.input_ids.pin_memory(), self.position_ids.pin_memory(), self.cu_seqlens.pin_memory(), self.max_length
        )

    def model_inputs(self) -> dict:
        """Keyword arguments of a transformers model's forward for this row."""
        return {
            "input_ids": self.input_ids,
            "position_ids": self.position_ids,
            "cu_seq_lens_q": self.cu_seqlens,
            "cu_seq_lens_k": self.cu_seqlens,
            "max_length_q": self.max_length,
            "max_length_k": self.max_length,
        }


def pack(token_ids: Sequence[Sequence[int]]) -> Packed:
    """Concatenate tokenized texts (each already truncated and with its special tokens)."""
    import torch

    lengths = [len(ids) for ids in token_ids]
    if not lengths or min(lengths) == 0:
        raise ValueError("every packed text needs at least one token")
    flat = torch.tensor([t for ids in token_ids for t in ids], dtype=torch.long).unsqueeze(0)
    positions = torch.cat([torch.arange(n, dtype=torch.long) for n in lengths]).unsqueeze(0)
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int32), 0)
    return Packed(flat, positions, cu, max(lengths))


def tokenize_packed(tokenizer, texts: Sequence[str], max_length: int) -> Packed:
    """The texts tokenized as the padded path tokenizes them (truncation, special tokens), packed."""
    ids = tokenizer(
        list(texts), truncation=True, max_length=max_length, return_attention_mask=False, return_token_type_ids=False
    )["input_ids"]
    return pack(ids)


@functools.cache
def _varlen():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def packed_supported(device) -> bool:
    """Whether packed attention has its fast kernel on ``device`` (CUDA with torch's varlen attention)."""
    import torch

    return torch.device(device).type == "cuda" and _varlen() is not None


def attention(
    module,
    query,
    key,
    value,
    attention_mask,
    dropout: float = 0.0,
    scaling: float | None = None,
    cu_seq_lens_q=None,
    max_length_q=None,
    **kwargs,
):
    """transformers attention function over a packed row: ``query`` ``(1, heads, T, dim)``, keys and
    values ``(1, kv_heads, T, dim)``; returns ``(1, T, heads, dim)``."""
    import torch

    if cu_seq_lens_q is None:
        raise ValueError(f"attention implementation {ATTENTION!r} needs cu_seq_lens_q (a packed row)")
    causal = bool(getattr(module, "is_causal", False))
    gqa = key.size(1) != query.size(1)
    varlen = _varlen()
    if query.is_cuda and varlen is not None and dropout == 0.0 and query.dtype in (torch.float16, torch.bfloat16):
        q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (T, heads, dim)
        cu = cu_seq_lens_q.to(torch.int32)
        out = varlen(
            q,
            k,
            v,
            cu,
            cu,
            int(max_length_q),
            int(max_length_q),
            scale=scaling,
            window_size=(-1, 0) if causal else (-1, -1),
            enable_gqa=gqa,
        )
        return out.unsqueeze(0), None
    # The exact fallback: each text attends only to itself (and, for decoders, to its past).
    bounds = cu_seq_lens_q.tolist()
    pieces = [
        torch.nn.functional.scaled_dot_product_attention(
            query[:, :, a:b],
            key[:, :, a:b],
            value[:, :, a:b],
            dropout_p=dropout if module.training else 0.0,
            is_causal=causal,
            scale=scaling,
            enable_gqa=gqa,
        )
        for a, b in zip(bounds[:-1], bounds[1:])
    ]
    return torch.cat(pieces, dim=2).transpose(1, 2).contiguous(), None


def install(model) -> None:
    """Make ``model`` (a transformers model) compute attention through :func:`attention`."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION, attention)
    model.set_attn_implementation(ATTENTION)


def pool_packed(hidden, cu_seqlens, pooling: str, normalize: bool):
    """Token states of a packed row ``(1, T, dim)`` (or ``(T, dim)``) -> one vector per text."""
    import torch

    states = hidden[0] if hidden.dim() == 3 else hidden
    cu = cu_seqlens.to(states.device).long()
    if pooling == "cls":
        pooled = states[cu[:-1]]
    elif pooling == "last":
        pooled = states[cu[1:] - 1]
    else:
        lengths = cu[1:] - cu[:-1]
        segment = torch.repeat_interleave(torch.arange(len(lengths), device=states.device), lengths)
        # summed in fp32: a bf16 running sum over hundreds of tokens loses the mean's low bits
        sums = torch.zeros(len(lengths), states.size(-1), dtype=torch.float32, device=states.device)
        pooled = sums.index_add(0, segment, states.float()) / lengths.unsqueeze(1).to(torch.float32)
    return torch.nn.functional.normalize(pooled, dim=-1) if normalize else pooled


def embed_packed(model, packed: Packed, spec):
    """Pooled (and normalised) embeddings of the packed texts; differentiable. ``model`` has
    :func:`install` applied."""
    hidden = model(**packed.model_inputs()).last_hidden_state
    return pool_packed(hidden, packed.cu_seqlens, spec.pooling, spec.normalize)
