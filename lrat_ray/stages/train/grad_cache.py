"""GradCache (Gao et al., 2021): the gradients of one big contrastive batch in the memory of one
chunk. Representations are computed first without gradients, the loss is differentiated at them,
then each chunk is encoded again with its cached gradient and back-propagated alone (Tevatron keeps
its GradCache trainer apart from the plain one for the same reason: the step differs, nothing else)."""

from __future__ import annotations

from lrat_ray.stages.train.step import Prepared, StepRunner


class RandomState:
    """torch's CPU (and current CUDA device's) random state, to replay a forward pass exactly."""

    def __init__(self, cpu, cuda, device):
        self.cpu, self.cuda, self.device = cpu, cuda, device

    @classmethod
    def capture(cls, device) -> RandomState:
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


class GradCacheStepRunner(StepRunner):
    """:class:`StepRunner` whose sides are chunks of ``grad_cache_chunk`` texts, run two-pass."""

    def _units_of(self, texts: list[str]) -> list[list[str]]:
        size = self.config.grad_cache_chunk
        return [texts[i : i + size] for i in range(0, len(texts), size)]

    def run_prepared(self, prepared: Prepared, backward):
        """Same gradients as one big batch; returns the global loss as a detached 0-d tensor."""
        import contextlib

        import torch

        from lrat_ray.core.loss import distributed_loss

        prepared = prepared.to(self.device)
        units = prepared.units
        # Each chunk's random state (dropout) is saved before its first pass and replayed in the
        # second, so the re-encoded representations are the ones the loss was differentiated at.
        states = []
        with torch.no_grad(), self._autocast():
            reps = []
            for unit in units:
                states.append(RandomState.capture(self.device))
                reps.append(self._encode([unit])[0].float())
        q = torch.cat(reps[: prepared.query_units])
        d = torch.cat(reps[prepared.query_units :])
        q.requires_grad_(True)
        d.requires_grad_(True)
        value, loss = distributed_loss(
            q,
            d,
            prepared.weights,
            prepared.mask,
            self.config.temperature,
            self.config.group_size,
            self.config.normalization,
        )
        value.backward()
        grads = torch.cat([q.grad, d.grad])
        offset = 0
        for index, (unit, state) in enumerate(zip(units, states)):
            last = index == len(units) - 1
            sync = contextlib.nullcontext() if last or not hasattr(self.model, "no_sync") else self.model.no_sync()
            with sync, state.replay(), self._autocast():
                reps = self._encode([unit])[0].float()
                surrogate = (reps * grads[offset : offset + len(reps)]).sum()
            backward(surrogate)
            offset += len(reps)
        return loss.detach()
