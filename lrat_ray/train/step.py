"""One training step: forward, weighted InfoNCE with gathered negatives, backward — plainly or with
GradCache (representations first without gradients, then chunk by chunk with the cached gradient)."""

from __future__ import annotations

import functools

from lrat_ray.train.config import TrainConfig

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
            (:class:`lrat_ray.packing.Packed`) -> their last hidden states."""
            return [self.tower(**batch.model_inputs()).last_hidden_state if hasattr(batch, "model_inputs")
                    else self.tower(input_ids=batch[0], attention_mask=batch[1]).last_hidden_state
                    for batch in batches]

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
        groups = [order[i * n // k:(i + 1) * n // k] for i in range(k)]
        cost = sum(len(g) * lengths[g[-1]] for g in groups) + (k - 1) * GROUP_COST_TOKENS
        if cost < best_cost:
            best_cost, best = cost, groups
    return best


class StepRunner:
    """Forward + loss + backward for one micro-batch, with or without GradCache."""

    def __init__(self, model, tokenizer, spec, config: TrainConfig, device):
        self.model, self.tokenizer, self.spec, self.config, self.device = model, tokenizer, spec, config, device
        self.paired = isinstance(getattr(model, "module", model), _pair_forward_class())

    def _tokens(self, texts: list[str], max_length: int):
        return self.tokenizer(texts, truncation=True, max_length=max_length, padding=True,
                              return_tensors="pt").to(self.device)

    def _grouped_tokens(self, texts: list[str], max_length: int):
        """The texts as padded batches of similar length (:func:`length_groups`) and their positions."""
        lengths = [len(ids) for ids in self.tokenizer(texts, truncation=True, max_length=max_length,
                                                      return_attention_mask=False,
                                                      return_token_type_ids=False)["input_ids"]]
        groups = length_groups(lengths, self.config.length_groups)
        return [self._tokens([texts[i] for i in group], max_length) for group in groups], groups

    def _encode(self, sides: list[tuple[list[str], int]]):
        """Embeddings of each ``(texts, max_length)`` side: packed (one padding-free row per side,
        ``config.packing``), or each text padded only to the longest of its length group; a plain
        module by one call per row or group, a ``PairForward`` under DDP or DeepSpeed by one forward
        for all of them."""
        import torch

        from lrat_ray.model import embed, pool

        if self.config.packing:
            return self._encode_packed(sides)
        grouped = [self._grouped_tokens(texts, max_length) for texts, max_length in sides]
        batches = [batch for side_batches, _ in grouped for batch in side_batches]
        side = self.tokenizer.padding_side
        if self.paired:
            hidden = self.model([(b["input_ids"], b["attention_mask"]) for b in batches])
            pooled = [pool(h, b["attention_mask"], self.spec, side) for h, b in zip(hidden, batches)]
        else:
            pooled = [embed(self.model, b, self.spec, side) for b in batches]
        out, start = [], 0
        for side_batches, groups in grouped:
            rows = torch.cat(pooled[start:start + len(side_batches)])
            positions = [i for group in groups for i in group]
            out.append(rows if len(groups) == 1 else rows[torch.tensor(positions).argsort()])
            start += len(side_batches)
        return out

    def _encode_packed(self, sides: list[tuple[list[str], int]]):
        from lrat_ray.packing import pool_packed, tokenize_packed

        rows = [tokenize_packed(self.tokenizer, texts, max_length).to(self.device) for texts, max_length in sides]
        hidden = self.model(rows) if self.paired else [self.model(**row.model_inputs()).last_hidden_state
                                                       for row in rows]
        return [pool_packed(h, row.cu_seqlens, self.spec.pooling, self.spec.normalize) for h, row in zip(hidden, rows)]

    def _embed(self, texts: list[str], max_length: int):
        return self._encode([(texts, max_length)])[0]

    def _embed_pair(self, queries: list[str], documents: list[str]):
        """Query and document embeddings, each side encoded at its own padded lengths."""
        return self._encode([(queries, self.spec.query_max_length), (documents, self.spec.document_max_length)])

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
