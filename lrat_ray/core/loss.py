"""Weighted InfoNCE (LRAT, Eq. 4), with in-set, in-batch and cross-device negatives.

For pair ``i`` with query ``q_i``, positive ``d_i+`` and weight ``w_i``::

    l_i = -log( exp(s(q_i, d_i+)/tau) / sum_{d in D} exp(s(q_i, d)/tau) )
    L   = sum_i w_i l_i / N            (normalization="mean", the paper's Eq. 4)
    L   = sum_i w_i l_i / sum_i w_i    (normalization="weight_sum", the official code's choice)

``D`` is every document of the (global) batch: each pair brings its positive and ``n`` of its
unbrowsed in-set negatives (a *group* of ``1 + n`` documents), and every other pair's positive and
negatives are negatives too (in-batch). Under data parallelism the queries, documents, weights
and masks of all workers are gathered first (:func:`gather_with_grad`: the local slice keeps its
gradient), every worker computes the same global loss, and the value used for backward is
``world_size * L``: DDP averages gradients over workers, and the local gradients of ``L`` summed
over workers are exactly the gradient of ``L``. So ``k`` workers train exactly like one process
with the ``k``-times larger batch, weights included (the official multi-GPU path drops them).

Slots of a group beyond a pair's real negatives are masked out (``doc_mask``), so pairs with few
negatives neither repeat nor invent documents unless the sampler chose to (see
:func:`sample_negatives`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F

NORMALIZATIONS = ("mean", "weight_sum")
ABLATIONS = ("naive", "filter", "reweight-unfiltered", "reweight")


def weighted_info_nce(
    queries: torch.Tensor,
    documents: torch.Tensor,
    weights: torch.Tensor,
    temperature: float,
    group_size: int,
    doc_mask: torch.Tensor | None = None,
    normalization: str = "mean",
) -> torch.Tensor:
    """The loss over one (already gathered) batch.

    Args:
        queries: ``[N, dim]`` query embeddings.
        documents: ``[N * group_size, dim]``; rows ``i*group_size`` .. ``(i+1)*group_size - 1`` are pair
            ``i``'s positive followed by its in-set negatives.
        weights: ``[N]`` pair weights ``w_i``.
        temperature: ``tau``.
        group_size: ``1 + n``.
        doc_mask: ``[N * group_size]`` bool, False for padding slots (never a candidate).
        normalization: ``"mean"`` (divide by N) or ``"weight_sum"`` (divide by the sum of weights).
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    n = queries.size(0)
    logits = queries @ documents.T / temperature
    if doc_mask is not None:
        logits = logits.masked_fill(~doc_mask.bool().unsqueeze(0), float("-inf"))
    targets = torch.arange(n, device=queries.device) * group_size
    per_pair = F.cross_entropy(logits, targets, reduction="none")
    weights = weights.to(per_pair.dtype)
    if normalization == "weight_sum":
        # A batch whose pairs all have weight 0 (all filtered out) contributes nothing, not 0/0.
        total = weights.sum()
        denominator = torch.where(total > 0, total, torch.ones_like(total))
    else:
        denominator = torch.tensor(float(n), dtype=per_pair.dtype)
    return (weights * per_pair).sum() / denominator


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every data-parallel worker; only the local slice has a gradient.

    Without a process group (one process) the tensor is returned as it is.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.detach().contiguous())
    parts[dist.get_rank()] = tensor
    return torch.cat(parts, dim=0)


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def distributed_loss(
    queries: torch.Tensor,
    documents: torch.Tensor,
    weights: torch.Tensor,
    doc_mask: torch.Tensor,
    temperature: float,
    group_size: int,
    normalization: str = "mean",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather across workers, compute the global loss; returns (value for backward, global loss).

    The value for backward is ``world_size * L`` (see the module docstring); report the second.
    """
    all_q = gather_with_grad(queries)
    all_d = gather_with_grad(documents)
    all_w = gather_with_grad(weights)
    all_mask = gather_with_grad(doc_mask)
    loss = weighted_info_nce(all_q, all_d, all_w, temperature, group_size, all_mask, normalization)
    return loss * world_size(), loss.detach()


def sample_negatives(
    negatives: Sequence[str], n: int, rng: random.Random, with_replacement: bool = True
) -> list[str | None]:
    """``n`` negatives for one pair: a random subset when there are more than ``n``; when fewer,
    repeated at random to fill the group (the official recipe) or, without replacement, padded
    with None (masked out of the loss)."""
    pool = list(negatives)
    if len(pool) >= n:
        return rng.sample(pool, n)
    if pool and with_replacement:
        return pool + [rng.choice(pool) for _ in range(n - len(pool))]
    return pool + [None] * (n - len(pool))


def ablation_weights(
    weights: Sequence[float], relevant: Sequence[bool | None], ablation: str, mean: float | None = None
) -> tuple[list[float], list[bool]]:
    """Weights and a keep-mask for LRAT's ablations (paper Fig. 7).

    ``naive``: every browsed pair, weight 1 (no judge filter). ``filter``: drop pairs the judge
    marked irrelevant, weight 1. ``reweight-unfiltered``: every pair, reasoning-length weights.
    ``reweight`` (LRAT): drop them and use the weights. Weights are rescaled to mean 1 over the
    pairs kept, so an arm that filters does not train with a larger effective learning rate than
    one that does not (mining fitted ``mu`` over all pairs, filtered or not). ``mean``: that mean
    when it was taken over more pairs than these (a streamed batch of the whole set).
    """
    if ablation not in ABLATIONS:
        raise ValueError(f"ablation must be one of {ABLATIONS}, got {ablation!r}")
    filtered = ablation in ("filter", "reweight")
    keep = [r is not False if filtered else True for r in relevant]
    if not ablation.startswith("reweight"):
        return [1.0] * len(keep), keep
    if mean is None:
        kept = [w for w, k in zip(weights, keep) if k]
        mean = sum(kept) / len(kept) if kept else 1.0
    return [w / mean if mean > 0 else 1.0 for w in weights], keep
