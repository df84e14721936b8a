"""One training step: forward, weighted InfoNCE with gathered negatives, backward (the plain
step; GradCache's is :mod:`lrat_ray.stages.train.grad_cache`, chosen by :func:`step_runner`)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from lrat_ray.stages.train.config import TrainConfig


@functools.cache
def _pair_forward_class():
    import torch

    class PairForward(torch.nn.Module):
        """The encoder (``tower``) behind one forward that encodes queries and documents, each at
        its own padded length. DDP and DeepSpeed count forwards: wrapped around this, a step is one
        forward and one backward (the tower's parameters get one summed gradient), and queries
        need not be padded to the documents' width."""

        def __init__(self, tower):
            super().__init__()
            self.tower = tower

        def forward(self, batches):
            """``batches``: ``(input_ids, attention_mask)`` pairs or packed rows
            (:class:`lrat_ray.models.packing.Packed`) -> their last hidden states."""
            return [
                self.tower(**batch.model_inputs()).last_hidden_state
                if hasattr(batch, "model_inputs")
                else self.tower(input_ids=batch[0], attention_mask=batch[1]).last_hidden_state
                for batch in batches
            ]

    return PairForward


def pair_forward(tower):
    """Wrap the encoder for DDP or DeepSpeed (see ``PairForward``)."""
    return _pair_forward_class()(tower)


def unwrap(model):
    """The encoder itself, from under DDP or DeepSpeed (``.module``) and ``PairForward`` (``.tower``)."""
    model = getattr(model, "module", model)
    return model.tower if isinstance(model, _pair_forward_class()) else model


# An estimate, in tokens, of what one more encoder call costs beyond its tokens: splitting must save
# more padding than that. bench_train's "one length group" row measures what grouping buys.
GROUP_COST_TOKENS = 32


def length_groups(lengths: list[int], max_groups: int) -> list[list[int]]:
    """Positions of ``lengths`` in groups of similar length, each to be padded to its own longest.

    Texts are sorted by length and cut into ``k`` equal groups, ``k <= max_groups`` chosen to
    minimise the padded tokens plus :data:`GROUP_COST_TOKENS` per extra group. One group keeps the
    input order (the plain batch)."""
    n = len(lengths)
    order = sorted(range(n), key=lengths.__getitem__)
    best_cost, best = n * max(lengths, default=0), [list(range(n))]
    for k in range(2, min(max_groups, n) + 1):
        groups = [order[i * n // k : (i + 1) * n // k] for i in range(k)]
        cost = sum(len(g) * lengths[g[-1]] for g in groups) + (k - 1) * GROUP_COST_TOKENS
        if cost < best_cost:
            best_cost, best = cost, groups
    return best


@dataclass
class Grouped:
    """One side's texts as padded batches of similar length (:func:`length_groups`): ``batches``
    (tokenizer outputs) and, for each, the texts' positions in the side."""

    batches: list
    groups: list[list[int]]

    def to(self, device) -> Grouped:
        return Grouped([batch.to(device, non_blocking=True) for batch in self.batches], self.groups)

    def pin_memory(self) -> Grouped:
        for batch in self.batches:
            for key, value in batch.items():
                batch[key] = value.pin_memory()
        return self


@dataclass
class Prepared:
    """A micro-batch ready for the device: its texts tokenized (``units``: the two sides, or with
    GradCache the query chunks then the document chunks, each a :class:`Grouped` or a packed row),
    its pair weights and mask. Built by :meth:`StepRunner.prepare`, off the training thread when
    prefetched (:func:`prefetched`)."""

    units: list
    query_units: int
    weights: object
    mask: object

    @property
    def queries(self) -> int:
        """Pairs in the micro-batch (one weight each)."""
        return len(self.weights)

    def to(self, device) -> Prepared:
        return Prepared(
            [unit.to(device) for unit in self.units],
            self.query_units,
            self.weights.to(device, non_blocking=True),
            self.mask.to(device, non_blocking=True),
        )


def step_runner(model, tokenizer, spec, config: TrainConfig, device) -> StepRunner:
    """The step for ``config``: GradCache's when ``grad_cache_chunk`` is set, else the plain one."""
    if config.grad_cache_chunk:
        from lrat_ray.stages.train.grad_cache import GradCacheStepRunner

        return GradCacheStepRunner(model, tokenizer, spec, config, device)
    return StepRunner(model, tokenizer, spec, config, device)


class StepRunner:
    """Forward + loss + backward for one micro-batch, the whole batch in one pass.

    ``prepare`` (tokenization, tensors on the host) and ``run_prepared`` (device work) are apart so
    that the first can run ahead of the step in a thread (:func:`prefetched`); ``run`` does both."""

    def __init__(self, model, tokenizer, spec, config: TrainConfig, device):
        self.model, self.tokenizer, self.spec, self.config, self.device = model, tokenizer, spec, config, device
        self.paired = isinstance(getattr(model, "module", model), _pair_forward_class())

    # -- host side: texts -> tokens --------------------------------------------------------------
    def _tokenize(self, texts: list[str], max_length: int):
        """One unit of texts: a packed row (``config.packing``) or padded length groups."""
        if self.config.packing:
            from lrat_ray.models.packing import tokenize_packed

            return tokenize_packed(self.tokenizer, texts, max_length)
        lengths = [
            len(ids)
            for ids in self.tokenizer(
                texts, truncation=True, max_length=max_length, return_attention_mask=False, return_token_type_ids=False
            )["input_ids"]
        ]
        groups = length_groups(lengths, self.config.length_groups)
        return Grouped(
            [
                self.tokenizer(
                    [texts[i] for i in group], truncation=True, max_length=max_length, padding=True, return_tensors="pt"
                )
                for group in groups
            ],
            groups,
        )

    def prepare(self, queries, documents, mask, weights) -> Prepared:
        """Tokenize a micro-batch (instructions and EOS as the spec says), one side's texts per unit
        (:meth:`_units_of`). Host tensors, pinned when
        the step runs on CUDA so that the copy in :meth:`run_prepared` does not block."""
        import torch

        q_sides = self._units_of([self.spec.format_query(t) for t in queries])
        d_sides = self._units_of([self.spec.format_document(t) for t in documents])
        units = [self._tokenize(t, self.spec.query_max_length) for t in q_sides] + [
            self._tokenize(t, self.spec.document_max_length) for t in d_sides
        ]
        prepared = Prepared(
            units, len(q_sides), torch.tensor(weights, dtype=torch.float32), torch.tensor(mask, dtype=torch.bool)
        )
        if self.device.type == "cuda":
            prepared.units = [unit.pin_memory() for unit in units]
            prepared.weights, prepared.mask = prepared.weights.pin_memory(), prepared.mask.pin_memory()
        return prepared

    def _units_of(self, texts: list[str]) -> list[list[str]]:
        """The texts of one side as the units encoded together: all of them in the plain step."""
        return [texts]

    # -- device side: tokens -> embeddings -> loss -------------------------------------------------
    def _encode(self, units: list):
        """Embeddings of each unit; a plain module by one call per row or group, a ``PairForward``
        under DDP or DeepSpeed by one forward for all of them."""
        import torch

        from lrat_ray.models.encoder import embed, pool
        from lrat_ray.models.packing import Packed, pool_packed

        if all(isinstance(unit, Packed) for unit in units):
            hidden = (
                self.model(units)
                if self.paired
                else [self.model(**row.model_inputs()).last_hidden_state for row in units]
            )
            return [
                pool_packed(h, row.cu_seqlens, self.spec.pooling, self.spec.normalize) for h, row in zip(hidden, units)
            ]
        batches = [batch for unit in units for batch in unit.batches]
        side = self.tokenizer.padding_side
        if self.paired:
            hidden = self.model([(b["input_ids"], b["attention_mask"]) for b in batches])
            pooled = [pool(h, b["attention_mask"], self.spec, side) for h, b in zip(hidden, batches)]
        else:
            pooled = [embed(self.model, b, self.spec, side) for b in batches]
        out, start = [], 0
        for unit in units:
            rows = torch.cat(pooled[start : start + len(unit.batches)])
            positions = [i for group in unit.groups for i in group]
            out.append(rows if len(unit.groups) == 1 else rows[torch.tensor(positions).argsort()])
            start += len(unit.batches)
        return out

    def run(self, queries, documents, mask, weights, backward) -> float:
        """Prepare and run one micro-batch; returns the global loss (a synchronisation)."""
        return float(self.run_prepared(self.prepare(queries, documents, mask, weights), backward))

    def run_prepared(self, prepared: Prepared, backward):
        """Returns the global loss as a detached 0-d tensor (reading it synchronises with the
        device: the training loop does that once per optimizer step); ``backward(value)`` runs the
        backward pass (DDP or DeepSpeed)."""
        from lrat_ray.core.loss import distributed_loss

        prepared = prepared.to(self.device)
        with self._autocast():
            q, d = self._encode(prepared.units)
            value, loss = distributed_loss(
                q.float(),
                d.float(),
                prepared.weights,
                prepared.mask,
                self.config.temperature,
                self.config.group_size,
                self.config.normalization,
            )
        backward(value)
        return loss.detach()

    def _autocast(self):
        import contextlib

        import torch

        if self.config.bf16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()
