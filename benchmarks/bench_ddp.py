"""Data-parallel training on the same cores: 2 workers x 1 thread against 1 worker x 2 threads.

Same machine, same run, same global batch (16 pairs per optimizer step, 1 positive + 1 in-set
negative, 128-token documents), same mined pairs (synthetic BrowseComp-Plus runs shaped like the
real LRAT trajectories, mined by ``lrat mine``): ``lrat train`` with one Ray Train worker that
reserves both CPUs (torch uses 2 threads) and with two DDP workers of one CPU each (gloo, gathered
negatives, the ``PairForward`` wrapper: one forward per step, queries at their own length).
Prints examples/s of the steady steps and the ratio (goal >= 0.9x: the same cores, so the ratio is
what DDP's communication and the gathered negatives cost).

Then the gathered negatives' own cost, in two gloo processes of one thread (the DDP workers'
shape): the loss over the embeddings gathered from both workers (all-gather, a 2x wider score
matrix, its backward) against the loss over the local embeddings only, per step and as a share of
the DDP step measured above.

Usage: ``python benchmarks/bench_ddp.py [--steps 8]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from lrat_ray.infra.hardware import summary_line

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic import generate  # noqa: E402


def examples_per_s(pairs: Path, out: Path, workers: int, steps: int) -> float:
    from lrat_ray.stages.train import TrainConfig, run_train

    summary = run_train(
        TrainConfig(
            pairs=[str(pairs)],
            output=str(out),
            workers=workers,
            cpus_per_worker=2 / workers,
            per_device_batch=16 // workers,
            group_size=2,
            max_steps=steps,
            document_max_length=128,
            checkpoint_every=1000,
        )
    )
    return summary["final_metrics"]["examples_per_s"]


def _gather_worker(rank: int, port: int, iterations: int, results) -> None:
    import time

    import torch
    import torch.distributed as dist

    from lrat_ray.core.loss import distributed_loss, weighted_info_nce

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(rank)
    local, group, dim = 8, 2, 384  # the DDP run's shape: 16 pairs over 2 workers, 1 negative each
    q = torch.nn.functional.normalize(torch.randn(local, dim), dim=-1).requires_grad_()
    d = torch.nn.functional.normalize(torch.randn(local * group, dim), dim=-1).requires_grad_()
    w, mask = torch.ones(local), torch.ones(local * group, dtype=torch.bool)

    def gathered():
        distributed_loss(q, d, w, mask, 0.05, group)[0].backward()

    def local_only():
        weighted_info_nce(q, d, w, 0.05, group, mask).backward()

    timings = {}
    for name, step in (("gathered", gathered), ("local", local_only), ("gathered", gathered)):
        dist.barrier()
        start = time.perf_counter()
        for _ in range(iterations):
            step()
        timings[name] = (time.perf_counter() - start) / iterations
    results[rank] = timings
    dist.destroy_process_group()


def gather_overhead(iterations: int = 500) -> dict:
    """Seconds per step of the gathered loss and of the local-only loss (slowest worker)."""
    import torch.multiprocessing as mp

    from lrat_ray.infra.runtime import free_port

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_gather_worker, args=(free_port(), iterations, results), nprocs=2)
        return {name: max(results[r][name] for r in (0, 1)) for name in ("gathered", "local")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    print(summary_line(), flush=True)  # figures depend on it: bf16 native or emulated

    from lrat_ray.infra.runtime import init_ray
    from lrat_ray.stages.mine import MineConfig, run_mine

    init_ray(num_cpus=2)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "runs").mkdir()
        generate(400, 40, tmp / "runs")
        run_mine(MineConfig(input=[str(tmp / "runs")], output=str(tmp / "mined"), workers=1))
        one = examples_per_s(tmp / "mined" / "pairs", tmp / "one", 1, args.steps)
        two = examples_per_s(tmp / "mined" / "pairs", tmp / "two", 2, args.steps)
    print(
        f"\n1 worker x 2 threads: {one:.2f} examples/s; 2 DDP workers x 1 thread: {two:.2f} examples/s; "
        f"ratio {two / one:.2f}x (goal >= 0.9x)"
    )
    cost = gather_overhead()
    extra = cost["gathered"] - cost["local"]
    print(
        f"gathered negatives: loss + backward {cost['gathered'] * 1e3:.2f} ms per step against "
        f"{cost['local'] * 1e3:.2f} ms over the local embeddings only: +{extra * 1e3:.2f} ms, "
        f"{extra / (16 / two):.2%} of a DDP step ({16 / two * 1e3:.0f} ms)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
