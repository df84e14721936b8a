"""Mining throughput: trajectories per second.

Generates N trajectories (default 100,000) from the shapes of the ten real LRAT trajectories in
``../shared/data/lrat/trajectory_bm25`` (same step sequences, queries, doc ids and reasoning;
snippets and document texts shortened so the set stays ~1-2 GB), written as BrowseComp-Plus runs
in JSONL shards. Then measures, in the same run:

* baseline: plain ``json.loads`` + a loop pulling (query, browsed doc, unbrowsed docs) out of the
  raw records, single process: the floor any miner pays;
* the pure miner (``mine_file_group``), single process, reasoning length in characters and in
  tokens of the embedded tokenizer; each file's pairs table is counted and dropped, as a mining
  actor writes and drops it (holding all 100,000 runs' pairs cost ~4% in fresh memory);
* ``lrat mine`` (Ray Data, embedded tokenizer, weights and Parquet output) with 1 and 2 workers.

Usage: ``python benchmarks/bench_mining.py [--trajectories 100000] [--shards 20]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from lrat_ray.infra.hardware import summary_line

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic import generate  # noqa: E402


def baseline(files: list[Path]) -> int:
    """json + loop: the least work that still finds every browse's query and unbrowsed docs."""
    pairs = 0
    for path in files:
        with open(path) as fh:
            for line in fh:
                run = json.loads(line)
                query, docs = None, []
                for item in run["result"]:
                    if item["type"] != "tool_call":
                        continue
                    args = json.loads(item["arguments"])
                    if item["tool_name"] == "search":
                        query = args["query"][0] if isinstance(args["query"], list) else args["query"]
                        docs = [l[6:] for l in item["output"].split("\n") if l.startswith("DocID:")]
                    elif str(args.get("docid")) in docs:
                        negatives = [d for d in docs if d != str(args["docid"])]
                        pairs += 1 if query is not None and negatives is not None else 0
    return pairs


def pure_miner(files: list[Path], measure) -> int:
    from lrat_ray.core.mining import MiningOptions
    from lrat_ray.stages.mine import mine_file_group

    return sum(mine_file_group([str(f)], MiningOptions(), measure)[0].num_rows for f in files)


def timed(label: str, fn, n: int, base: float | None, rows: list) -> float:
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    rate = n / seconds
    rows.append((label, seconds, rate, rate / base if base else 1.0))
    print(
        f"{label:<52} {seconds:8.1f} s {rate:10.0f} traj/s  x{rate / base if base else 1.0:5.2f} vs baseline",
        flush=True,
    )
    return rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trajectories", type=int, default=100_000)
    parser.add_argument("--shards", type=int, default=20)
    parser.add_argument("--keep", help="generate into this directory and keep it")
    args = parser.parse_args()
    print(summary_line(), flush=True)  # figures depend on it: bf16 native or emulated

    from lrat_ray.core.mining import character_lengths
    from lrat_ray.infra.runtime import init_ray
    from lrat_ray.stages.mine import MineConfig, length_measure, run_mine

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-mining-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "runs"
    data.mkdir(exist_ok=True)
    start = time.perf_counter()
    n = generate(args.trajectories, args.shards, data)
    size = sum(p.stat().st_size for p in data.iterdir())
    print(
        f"generated {n} trajectories in {args.shards} JSONL shards, {size / 1e9:.2f} GB, "
        f"in {time.perf_counter() - start:.0f} s",
        flush=True,
    )
    files = sorted(data.iterdir())
    rows: list = []
    try:
        base = timed("baseline: json.loads + loop, 1 process", lambda: baseline(files), n, None, rows)
        timed(
            "pure miner, 1 process, length in characters", lambda: pure_miner(files, character_lengths), n, base, rows
        )
        measure = length_measure("embedded")
        timed("pure miner, 1 process, length in tokens (embedded)", lambda: pure_miner(files, measure), n, base, rows)
        init_ray(num_cpus=2)
        for workers in (1, 2):
            out = work / f"out-{workers}"
            timed(
                f"lrat mine, Ray Data, {workers} worker(s), tokens",
                lambda out=out, workers=workers: run_mine(
                    MineConfig(input=[str(data)], output=str(out), workers=workers)
                ),
                n,
                base,
                rows,
            )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print("\n| measurement | seconds | trajectories/s | vs baseline |\n|---|---:|---:|---:|")
    for label, seconds, rate, ratio in rows:
        print(f"| {label} | {seconds:.1f} | {rate:.0f} | {ratio:.2f} |")
    if len(rows) == 5:
        print(
            f"\npure miner / json loop: {rows[1][3]:.2f}x in characters, {rows[2][3]:.2f}x in tokens (goal 0.5x); "
            f"lrat mine 2 workers / 1 worker: {rows[4][2] / rows[3][2]:.2f}x (goal 1.8x)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
