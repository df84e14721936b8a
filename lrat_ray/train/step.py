"""One training step: forward, weighted InfoNCE with gathered negatives, backward — plainly or with
GradCache (representations first without gradients, then chunk by chunk with the cached gradient)."""

from __future__ import annotations

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
