"""Driver memory of ``lrat train`` as the pairs grow 10x: streamed from Parquet vs built in the driver.

Writes N and 10N synthetic mined pairs (Parquet, the mined-pairs schema: a 60-character query, a
1,500-character positive and ten 300-character negative snippets each, about 5 KB of text per
pair) and, in a fresh process per measurement, reports the process's peak resident memory (VmHWM):

* ``streamed``: ``lrat train`` (``run_train``, 1 worker, 2 steps): the driver reads only the
  ``weight`` and ``relevant`` columns; Ray Data tasks read, filter, weight and shuffle the texts;
* ``in driver``: :func:`lrat_ray.stages.train.load_examples`, what the driver did before (every pair's
  texts as Python objects), the baseline.

Usage: ``python benchmarks/bench_train_input.py [--pairs 20000]``
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from lrat_ray.infra.hardware import summary_line

CHILD = """
import json, sys
mode, pairs, out = sys.argv[1:4]
from lrat_ray.stages.train import TrainConfig, load_examples, run_train
config = TrainConfig(pairs=[pairs], output=out, workers=1, per_device_batch=8, group_size=2, max_steps=2,
                     document_max_length=64, checkpoint_every=1000)
if mode == "streamed":
    count = run_train(config)["examples"]
else:
    count = len(load_examples(config))
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"examples": count, "peak_mb": peak / 1024}))
"""


def write_pairs(directory: Path, count: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lrat_ray.core.pairs import PAIR_SCHEMA

    rng = random.Random(count)
    words = [f"w{i}" for i in range(5000)]

    def text(chars):
        return " ".join(rng.choice(words) for _ in range(chars // 6))[:chars]

    directory.mkdir(parents=True)
    per_file = 5000
    for start in range(0, count, per_file):
        rows = [
            {
                "trajectory_id": f"t{i}",
                "turn": 1,
                "browse_turn": 2,
                "query": text(60),
                "positive_id": f"d{i}",
                "negative_ids": [f"n{i}-{j}" for j in range(10)],
                "reasoning": text(200),
                "reasoning_length": 200,
                "rank": 1,
                "correct": None,
                "relevant": i % 4 != 0,
                "weight": rng.uniform(0.2, 1.8),
                "positive_text": text(1500),
                "negative_texts": [text(300) for _ in range(10)],
                "source": "synthetic",
            }
            for i in range(start, min(start + per_file, count))
        ]
        pq.write_table(pa.Table.from_pylist(rows, schema=PAIR_SCHEMA), directory / f"part-{start:08d}.parquet")


def measure(mode: str, pairs: Path, out: Path) -> dict:
    reply = subprocess.run([sys.executable, "-c", CHILD, mode, str(pairs), str(out)], capture_output=True, text=True)
    if reply.returncode:
        raise SystemExit(reply.stderr[-3000:])
    return json.loads(reply.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=20000)
    args = parser.parse_args()
    print(summary_line(), flush=True)  # figures depend on it: bf16 native or emulated
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = []
        for count in (args.pairs, 10 * args.pairs):
            write_pairs(tmp / f"pairs-{count}", count)
            for mode in ("streamed", "in driver"):
                result = measure(mode, tmp / f"pairs-{count}", tmp / f"model-{mode.replace(' ', '-')}-{count}")
                rows.append((count, mode, result))
                print(
                    f"{count} pairs, {mode}: {result['examples']} examples, driver peak {result['peak_mb']:.0f} MB",
                    flush=True,
                )
    print("\n| pairs | streamed: driver peak MB | in driver: peak MB |\n|---:|---:|---:|")
    for count in (args.pairs, 10 * args.pairs):
        peaks = {mode: r["peak_mb"] for c, mode, r in rows if c == count}
        print(f"| {count} | {peaks['streamed']:.0f} | {peaks['in driver']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
