"""Synthetic trajectory sets at any size, shaped like the ten real LRAT trajectories.

Each generated run is one of the real BrowseComp-Plus runs in ``../shared/data/lrat/trajectory_bm25``
(same steps, queries, doc ids and reasoning) with a new ``query_id``; search snippets and documents
are shortened so that large sets stay small on disk. Used by the mining and scale benchmarks and by
the multi-node test, which needs enough work to kill a node in the middle of it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

REAL = (
    Path(os.environ.get("LRAT_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    / "lrat"
    / "trajectory_bm25"
)


def shorten(template: dict) -> dict:
    """The real run with search snippets cut to 80 and documents to 300 characters."""
    run = json.loads(json.dumps(template))
    for item in run["result"]:
        if item["type"] != "tool_call" or not item.get("output"):
            continue
        if item["tool_name"] == "search":
            blocks = item["output"].split("\n\nDocID:")
            item["output"] = "\n\nDocID:".join([blocks[0]] + [b[: 80 + b.find("\n[")] for b in blocks[1:]])
        else:
            item["output"] = item["output"][:300]
    run.pop("retrieved_docids", None)
    return run


def generate(n: int, shards: int, directory: Path) -> int:
    templates = [shorten(json.loads(p.read_text())) for p in sorted(REAL.glob("*.json"))]
    written = 0
    per_shard = -(-n // shards)
    for s in range(shards):
        with open(directory / f"runs-{s:03d}.jsonl", "w") as out:
            for i in range(s * per_shard, min(n, (s + 1) * per_shard)):
                run = templates[i % len(templates)]
                run["query_id"] = f"synthetic-{i}"
                out.write(json.dumps(run, ensure_ascii=False) + "\n")
                written += 1
    return written
