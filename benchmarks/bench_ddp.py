"""Data-parallel training on the same cores: 2 workers x 1 thread against 1 worker x 2 threads.

Same machine, same run, same global batch (16 pairs per optimizer step, 1 positive + 1 in-set
negative, 128-token documents), same mined pairs (synthetic BrowseComp-Plus runs shaped like the
real LRAT trajectories, mined by ``lrat mine``): ``lrat train`` with one Ray Train worker that
reserves both CPUs (torch uses 2 threads) and with two DDP workers of one CPU each (gloo, gathered
negatives, the ``PairForward`` wrapper: one forward per step, queries at their own length).
Prints examples/s of the steady steps and the ratio (goal >= 0.9x: the same cores, so the ratio is
what DDP's communication and the gathered negatives cost).

Usage: ``python benchmarks/bench_ddp.py [--steps 8]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic import generate  # noqa: E402


def examples_per_s(pairs: Path, out: Path, workers: int, steps: int) -> float:
    from lrat_ray.train import TrainConfig, run_train

    summary = run_train(TrainConfig(pairs=[str(pairs)], output=str(out), workers=workers, cpus_per_worker=2 / workers,
                                    per_device_batch=16 // workers, group_size=2, max_steps=steps,
                                    document_max_length=128, checkpoint_every=1000))
    return summary["final_metrics"]["examples_per_s"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()

    from lrat_ray.mine_job import MineConfig, run_mine
    from lrat_ray.runtime import init_ray

    init_ray(num_cpus=2)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "runs").mkdir()
        generate(400, 40, tmp / "runs")
        run_mine(MineConfig(input=[str(tmp / "runs")], output=str(tmp / "mined"), workers=1))
        one = examples_per_s(tmp / "mined" / "pairs", tmp / "one", 1, args.steps)
        two = examples_per_s(tmp / "mined" / "pairs", tmp / "two", 2, args.steps)
    print(f"\n1 worker x 2 threads: {one:.2f} examples/s; 2 DDP workers x 1 thread: {two:.2f} examples/s; "
          f"ratio {two / one:.2f}x (goal >= 0.9x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
