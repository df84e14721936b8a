"""Agent-fleet load on the served retriever: 1, 32, 256 and 1,024 concurrent sessions on 127.0.0.1.

Serves an index (default: the 5,000-passage msmarco-5k slice, built first if missing) with one Ray
Serve replica. Each simulated agent session loops for a fixed time: a search (a real TREC DL query,
k=10), then with probability 0.3 a document call for one of the hits (an agent browsing). A
request the replica turns away (503 + Retry-After, beyond ``--max-in-flight``) is waited out and
retried with the project's own policy (:func:`lrat_ray.infra.chat_client.retry_delay`), as the agents'
client does; it counts as turned away, not failed. A failure is a request that never got an
answer (transport error, timeout, any other status).

With ``--poisoned`` (default 0.01) that share of searches is sent poisoned: valid JSON whose query
holds a lone surrogate (``\ud800``), which no tokenizer takes. They arrive among the good ones and
share their batches; each must be answered 422 (else it counts as failed), and every good request
must still be answered: the ``failed`` column counts both.

Printed per level, next to the in-process search of the same queries measured in the same run
(encode + FAISS, no HTTP): requests/s answered within the level's time (calls still waiting when
it ends complete but do not count toward the rate), its ratio to the best level, p50/p99 session-seen
latency (retries included), turn-aways and failures. The 1,024-session level also hot-swaps the
index (to a copy in another directory) half-way through: the failures column covers the swap.
Last, an autoscaling step: the app redeployed with autoscaling (1 to 2 replicas) under 256
sessions, with the running replicas sampled while the load runs and the failures across it.

With ``--composed`` the same load runs against the composed retriever (an ingress, a query-encoder
deployment and one deployment per index shard; the autoscaling step then scales the encoder).

Usage: ``python benchmarks/bench_serve.py [--index runs/msmarco-index] [--seconds 20]
[--sessions 1 32 256 1024] [--max-in-flight 64] [--composed]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from lrat_ray.infra.hardware import summary_line

DATA = Path(os.environ.get("LRAT_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
BROWSE_PROBABILITY = 0.3


class Tally:
    def __init__(self):
        self.latencies: list[float] = []
        self.answered = {"search": 0, "document": 0}
        self.in_window = 0  # answered before the level's time was up (the rate's numerator)
        self.turned_away = 0
        self.failed: list[str] = []
        self.indexes: list[str] = []
        self.poisoned_rejected = 0


async def _call(
    http, url: str, tally: Tally, deadline: float, kind: str, method: str, path: str, expect: int = 200, **kwargs
):
    """One tool call as the agent client makes it: retried after each 503/429 until answered
    (``expect``: the status a right answer has; 422 for a poisoned search)."""
    import aiohttp

    from lrat_ray.infra.chat_client import retry_delay

    start = time.perf_counter()
    for attempt in range(50):
        try:
            async with http.request(method, url + path, **kwargs) as response:
                status, retry_after = response.status, response.headers.get("retry-after")
                body = await response.json() if status == 200 else None
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            tally.failed.append(f"{kind}: {exc!r}")
            return None
        if status in (429, 503):
            tally.turned_away += 1
            await asyncio.sleep(retry_delay(attempt, retry_after))
            continue
        if status != expect:
            tally.failed.append(f"{kind}: HTTP {status}")
            return None
        if expect != 200:
            tally.poisoned_rejected += 1
            return None
        done = time.perf_counter()
        tally.latencies.append(done - start)
        tally.answered[kind] += 1
        tally.in_window += done <= deadline
        return body
    tally.failed.append(f"{kind}: still turned away after 50 tries")
    return None


async def fleet(url: str, queries: list[str], sessions: int, seconds: float, swap=None, poisoned: float = 0.0) -> Tally:
    """``sessions`` agent loops for ``seconds``; ``swap`` (a blocking callable) runs half-way. The
    clients use aiohttp: on these 2 CPUs an httpx client of 256 sessions took a whole core itself,
    starving the server it measured."""
    import aiohttp

    tally = Tally()
    deadline = time.perf_counter() + seconds

    async def session(http, rng: random.Random):
        while time.perf_counter() < deadline:
            if rng.random() < poisoned:  # raw JSON: a client library would refuse to encode it
                text = rng.choice(queries).replace('"', "")
                body = ('{"query": "' + text + ' \\ud800", "k": 10}').encode()
                await _call(
                    http,
                    url,
                    tally,
                    deadline,
                    "poisoned search",
                    "POST",
                    "/search",
                    expect=422,
                    data=body,
                    headers={"content-type": "application/json"},
                )
                continue
            found = await _call(
                http, url, tally, deadline, "search", "POST", "/search", json={"query": rng.choice(queries), "k": 10}
            )
            if found:
                tally.indexes.append(found["index"])
                if found["results"] and rng.random() < BROWSE_PROBABILITY:
                    await _call(
                        http,
                        url,
                        tally,
                        deadline,
                        "document",
                        "GET",
                        f"/documents/{rng.choice(found['results'])['docid']}",
                    )

    async def swap_half_way():
        await asyncio.sleep(seconds / 2)
        await asyncio.to_thread(swap)

    connector = aiohttp.TCPConnector(limit=sessions)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as http:
        tasks = [session(http, random.Random(i)) for i in range(sessions)]
        await asyncio.gather(*tasks, *([swap_half_way()] if swap else []))
    return tally


def in_process_rate(index_dir: str, queries: list[str]) -> float:
    from lrat_ray.models.encoder import Encoder
    from lrat_ray.stages.index import RetrievalIndex

    index = RetrievalIndex.load(index_dir)
    encoder = Encoder(index.spec)
    index.search(encoder.encode_queries(queries[:2]), 10)  # warm up
    start = time.perf_counter()
    for q in queries:
        index.search(encoder.encode_queries([q]), 10)
    return len(queries) / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", default="runs/msmarco-index")
    parser.add_argument("--seconds", type=float, default=20.0, help="load time per level")
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 32, 256, 1024, 2048])
    parser.add_argument("--max-in-flight", type=int, default=1024, help="the replica's queue depth (admission)")
    parser.add_argument("--swap-at", type=int, default=1024, help="sessions of the level with the hot swap")
    parser.add_argument("--composed", action="store_true", help="serve as ingress + encoder + index-shard deployments")
    parser.add_argument(
        "--poisoned",
        type=float,
        default=0.01,
        help="share of searches sent with a lone surrogate in the query (each must get 422)",
    )
    parser.add_argument(
        "--autoscale-seconds",
        type=float,
        default=75.0,
        help="length of the autoscaling step (Serve scales up after 30 s of load; 0 skips it)",
    )
    args = parser.parse_args()
    print(summary_line(), flush=True)  # figures depend on it: bf16 native or emulated

    from lrat_ray.infra.errors import LratError
    from lrat_ray.infra.runtime import free_port, init_ray
    from lrat_ray.serving.config import ServeConfig
    from lrat_ray.serving.retriever import deploy, swap_index
    from lrat_ray.stages.index import IndexConfig, read_manifest, run_index

    init_ray(num_cpus=2)
    try:
        read_manifest(args.index)
    except LratError:  # missing, or built by an older lrat
        run_index(IndexConfig(corpus=[str(DATA / "msmarco-5k" / "corpus.jsonl")], output=args.index))
    swapped = os.path.abspath(args.index.rstrip("/") + "-swap")
    shutil.rmtree(swapped, ignore_errors=True)
    shutil.copytree(args.index, swapped)
    queries = [
        json.loads(line)["text"] for line in (DATA / "msmarco-5k" / "queries.jsonl").read_text().splitlines() if line
    ]
    bare = in_process_rate(args.index, queries)
    print(f"index {args.index}; in-process search (encode + FAISS, one query at a time): {bare:.1f} queries/s")

    # Composed on 2 CPUs: ingress 0.25 + encoder 0.5 (+0.5 when autoscaled) + shards 0.25 each.
    parts = {"composed": True, "replica_cpus": 0.5, "shard_cpus": 0.25} if args.composed else {}
    settings = ServeConfig(
        index=os.path.abspath(args.index), port=free_port(), max_in_flight=args.max_in_flight, **parts
    )
    shards = len(read_manifest(args.index)["shards"])
    layout = (
        f"composed (ingress, encoder, {shards} shard deployments)" if args.composed else "whole retriever per replica"
    )
    print(f"layout: {layout}")
    url = deploy(settings)
    asyncio.run(fleet(url, queries, 4, 3))  # warm up the replica and the connections
    rows = []
    for sessions in args.sessions:
        swap = (lambda: swap_index(settings, swapped)) if sessions == args.swap_at else None
        tally = asyncio.run(fleet(url, queries, sessions, args.seconds, swap, args.poisoned))
        answered = sum(tally.answered.values())
        rate = tally.in_window / args.seconds
        p50, p99 = np.percentile(tally.latencies, [50, 99]) * 1000 if tally.latencies else (float("nan"),) * 2
        rows.append(
            {
                "sessions": sessions,
                "answered": answered,
                "rate": rate,
                "p50": p50,
                "p99": p99,
                "searches": rate * tally.answered["search"] / max(answered, 1),
                "turned_away": tally.turned_away,
                "failed": len(tally.failed),
                "swapped": swap is not None,
                "new_index_answers": tally.indexes.count(swapped),
                "poisoned": tally.poisoned_rejected,
            }
        )
        if tally.failed:
            print(f"  {sessions} sessions: failures, e.g. {tally.failed[:3]}")
    best = max(r["rate"] for r in rows)
    print(
        "\n| sessions | answered | requests/s | vs best | searches/s | vs in-process | p50 ms | p99 ms "
        "| turned away (503) | poisoned, answered 422 | failed |\n" + "|---:" * 11 + "|"
    )
    for r in rows:
        note = f" (hot swap; {r['new_index_answers']} answers from the new index)" if r["swapped"] else ""
        print(
            f"| {r['sessions']} | {r['answered']} | {r['rate']:.1f} | {r['rate'] / best:.2f}x | {r['searches']:.1f} "
            f"| {r['searches'] / bare:.2f}x | {r['p50']:.0f} | {r['p99']:.0f} | {r['turned_away']} "
            f"| {r['poisoned']} | {r['failed']}{note} |"
        )
    print_replica_memory()
    if args.autoscale_seconds > 0:
        autoscaling_step(settings, queries, args.autoscale_seconds)
    from ray import serve

    serve.shutdown()
    return 0


def print_replica_memory() -> None:
    """Resident memory of each running replica of the app (their processes are on this machine,
    titled ``ray::ServeReplica:<app>:<deployment>``)."""
    import psutil

    from lrat_ray.serving.retriever import APP_NAME

    sizes = []
    for process in psutil.process_iter(["cmdline", "memory_info"]):
        title = " ".join(process.info["cmdline"] or [])
        if f"ServeReplica:{APP_NAME}:" in title and process.info["memory_info"]:
            name = title.split(f"ServeReplica:{APP_NAME}:")[1].split()[0]
            sizes.append(f"{name} {process.info['memory_info'].rss / 2**20:.0f} MB")
    print("\nreplica resident memory: " + (", ".join(sorted(sizes)) or "no replica process found"))


def autoscaling_step(settings, queries: list[str], seconds: float) -> None:
    """256 sessions against the same app redeployed with autoscaling (1 to 2 replicas, default
    targets; composed, of the encoder): the replicas counted every 2 s while the
    load runs, and the failures across the scale-up."""
    import dataclasses
    import threading

    from ray import serve

    from lrat_ray.serving.retriever import APP_NAME, deploy

    deploy(dataclasses.replace(settings, autoscale_min=1, autoscale_max=2))
    counts: list[int] = []
    done = threading.Event()

    def watch():
        while not done.is_set():
            scaled = "QueryEncoder" if settings.composed else "Retriever"
            states = serve.status().applications[APP_NAME].deployments[scaled].replica_states
            counts.append(states.get("RUNNING", 0))
            done.wait(2.0)

    watcher = threading.Thread(target=watch)
    watcher.start()
    tally = asyncio.run(fleet(settings_url(settings), queries, 256, seconds))
    done.set()
    watcher.join()
    answered = sum(tally.answered.values())
    print(
        f"\nautoscaling step (1 -> 2 replicas allowed, 256 sessions, {seconds:.0f} s): running replicas sampled "
        f"every 2 s {counts}; {answered} answered, {tally.in_window / seconds:.1f} requests/s, "
        f"{tally.turned_away} turned away, {len(tally.failed)} failed"
        + (f", e.g. {tally.failed[:3]}" if tally.failed else "")
    )


def settings_url(settings) -> str:
    return f"http://{settings.host}:{settings.port}"


if __name__ == "__main__":
    sys.exit(main())
