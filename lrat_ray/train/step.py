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

        def forward(self, q_ids, q_mask, d_ids=None, d_mask=None):
            q = self.tower(input_ids=q_ids, attention_mask=q_mask).last_hidden_state
            d = None if d_ids is None else self.tower(input_ids=d_ids, attention_mask=d_mask).last_hidden_state
            return q, d

    return PairForward


def pair_forward(tower):
    """Wrap the encoder for DDP or DeepSpeed (see ``PairForward``)."""
    return _pair_forward_class()(tower)


def unwrap(model):
    """The encoder itself, from under DDP or DeepSpeed (``.module``) and ``PairForward`` (``.tower``)."""
    model = getattr(model, "module", model)
    return model.tower if isinstance(model, _pair_forward_class()) else model


class StepRunner:
    """Forward + loss + backward for one micro-batch, with or without GradCache."""

    def __init__(self, model, tokenizer, spec, config: TrainConfig, device):
        self.model, self.tokenizer, self.spec, self.config, self.device = model, tokenizer, spec, config, device
        self.paired = isinstance(getattr(model, "module", model), _pair_forward_class())

    def _tokens(self, texts: list[str], max_length: int):
        return self.tokenizer(texts, truncation=True, max_length=max_length, padding=True,
                              return_tensors="pt").to(self.device)

    def _embed(self, texts: list[str], max_length: int):
        from lrat_ray.model import embed, pool

        batch = self._tokens(texts, max_length)
        if not self.paired:
            return embed(self.model, batch, self.spec, self.tokenizer.padding_side)
        hidden, _ = self.model(batch["input_ids"], batch["attention_mask"])
        return pool(hidden, batch["attention_mask"], self.spec, self.tokenizer.padding_side)

    def _embed_pair(self, queries: list[str], documents: list[str]):
        """Query and document embeddings, each encoded at its own padded length: a plain module by
        two calls, a ``PairForward`` under DDP or DeepSpeed by one forward."""
        from lrat_ray.model import pool

        if not self.paired:
            return (self._embed(queries, self.spec.query_max_length),
                    self._embed(documents, self.spec.document_max_length))
        q = self._tokens(queries, self.spec.query_max_length)
        d = self._tokens(documents, self.spec.document_max_length)
        q_hidden, d_hidden = self.model(q["input_ids"], q["attention_mask"], d["input_ids"], d["attention_mask"])
        side = self.tokenizer.padding_side
        return pool(q_hidden, q["attention_mask"], self.spec, side), pool(d_hidden, d["attention_mask"], self.spec, side)

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
