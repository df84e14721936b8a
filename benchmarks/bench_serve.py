"""Latency and throughput of ``POST /search`` under 1, 8 and 32 concurrent clients on 127.0.0.1.

Serves an index (default: the 5,000-passage msmarco-5k slice, built first if missing) with one
Ray Serve replica, sends real TREC DL queries (k=10) from N concurrent clients for a bounded
number of requests, and prints p50/p99 latency and requests/s next to the bare in-process cost of
one query (encode + FAISS search, no HTTP, no batching) measured in the same run.

Usage: ``python benchmarks/bench_serve.py [--index runs/msmarco-index] [--requests 300]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(os.environ.get("LRAT_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


async def load(url: str, queries: list[str], clients: int, requests: int) -> tuple[list[float], float, int]:
    import httpx

    latencies: list[float] = []
    failures = 0
    counter = iter(range(requests))

    async def client(http):
        nonlocal failures
        for i in counter:
            start = time.perf_counter()
            r = await http.post("/search", json={"query": queries[i % len(queries)], "k": 10})
            latencies.append(time.perf_counter() - start)
            failures += r.status_code != 200

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - start
    return latencies, wall, failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", default="runs/msmarco-index")
    parser.add_argument("--requests", type=int, default=300, help="requests per concurrency level")
    args = parser.parse_args()

    from lrat_ray.index import IndexConfig, RetrievalIndex, run_index
    from lrat_ray.model import Encoder
    from lrat_ray.runtime import free_port, init_ray
    from lrat_ray.serving import ServeConfig, deploy

    init_ray(num_cpus=2)
    if not (Path(args.index) / "manifest.json").exists():
        run_index(IndexConfig(corpus=[str(DATA / "msmarco-5k" / "corpus.jsonl")], output=args.index))
    queries = [json.loads(l)["text"] for l in (DATA / "msmarco-5k" / "queries.jsonl").read_text().split("\n") if l]

    index = RetrievalIndex.load(args.index)
    encoder = Encoder(index.spec)
    index.search(encoder.encode_queries(queries[:2]), 10)  # warm up
    start = time.perf_counter()
    for q in queries:
        index.search(encoder.encode_queries([q]), 10)
    bare = (time.perf_counter() - start) / len(queries)
    print(f"index {args.index}: {len(index.doc_ids)} documents; bare in-process query "
          f"(encode + search): {bare * 1000:.1f} ms = {1 / bare:.0f} queries/s")

    port = free_port()
    url = deploy(ServeConfig(index=args.index, port=port))
    asyncio.run(load(url, queries, 4, 40))  # warm up replica and connections
    print("\n| clients | requests | p50 ms | p99 ms | requests/s | p50 / bare | failed |\n|---:|---:|---:|---:|---:|---:|---:|")
    for clients in (1, 8, 32):
        latencies, wall, failures = asyncio.run(load(url, queries, clients, args.requests))
        p50, p99 = np.percentile(latencies, [50, 99]) * 1000
        print(f"| {clients} | {len(latencies)} | {p50:.1f} | {p99:.1f} | {len(latencies) / wall:.1f} | "
              f"{p50 / (bare * 1000):.2f} | {failures} |", flush=True)
    from ray import serve

    serve.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
