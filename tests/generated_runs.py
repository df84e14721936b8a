"""Generated BrowseComp-Plus run files for differential tests against the official LRAT builder.

Deterministic for a seed. The shapes cover what the builder's windows depend on: consecutive
browses (runs), browses with and without the reasoning after them, empty reasoning, browses of
documents no search returned, browses before any search, repeated searches and browses, and
reasoning that dismisses the page in the words the keyword judge looks for (so a deterministic
judge says NOT_RELEVANT to some browses).
"""

from __future__ import annotations

import json
import random

WORDS = (
    "protein binding cells growth signal pathway tumour immune response gene expression trial dose "
    "patients risk effect mouse model receptor levels study cohort analysis evidence outcome"
).split()
DISMISSALS = (
    "This page is not relevant to the question.",
    "It is unrelated to what I need.",
    "The article doesn't help here; it is about a different topic.",
    "No useful information on the claim.",
)


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _search(rng: random.Random, query: str) -> tuple[dict, list[str]]:
    ids = rng.sample(range(60), rng.randint(3, 8))
    blocks = [f"DocID:{d}\n[Title {d}]\n{_text(rng, 8)}" for d in ids]
    output = f"A search for '{query}' found {len(ids)} results:\n\n" + "\n\n".join(blocks)
    step = {"type": "tool_call", "tool_name": "search", "arguments": json.dumps({"query": query}), "output": output}
    return step, [str(d) for d in ids]


def _reasoning(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.07:
        return ""
    if roll < 0.35:
        return f"{_text(rng, rng.randint(2, 10))} {rng.choice(DISMISSALS)}"
    return _text(rng, rng.randint(3, 60))


def generate_run(index: int, seed: int = 0) -> dict:
    rng = random.Random(f"{seed}:{index}")
    steps = [{"type": "reasoning", "tool_name": None, "arguments": None, "output": _text(rng, 12)}]
    seen: list[str] = []
    for _ in range(rng.randint(1, 9)):
        if rng.random() < 0.45 or not seen:
            if seen or rng.random() < 0.9:  # sometimes the first action is a browse, before any search
                step, ids = _search(rng, _text(rng, rng.randint(2, 6)))
                steps.append(step)
                seen.extend(ids)
                steps.append({"type": "reasoning", "tool_name": None, "arguments": None, "output": _text(rng, 6)})
                continue
        for _ in range(rng.choice((1, 1, 1, 2, 2, 3))):  # a run of consecutive browses
            doc = rng.choice(seen[-10:]) if seen and rng.random() < 0.9 else str(rng.randint(60, 70))
            tool = rng.choice(("get_document", "visit"))
            steps.append(
                {
                    "type": "tool_call",
                    "tool_name": tool,
                    "arguments": json.dumps({"docid": doc}),
                    "output": json.dumps({"docid": doc, "text": _text(rng, 30)}),
                }
            )
            if rng.random() < 0.9:
                steps.append({"type": "reasoning", "tool_name": None, "arguments": None, "output": _reasoning(rng)})
    steps.append({"type": "output_text", "tool_name": None, "arguments": None, "output": "Final answer."})
    return {"query_id": f"gen-{seed}-{index}", "query": _text(rng, 10), "status": "completed", "result": steps}


def write_runs(directory, count: int, seed: int = 0, shards: int | None = None) -> None:
    """``count`` runs in ``directory``: one file ``<index>.json`` each, or ``shards`` JSONL files."""
    if shards is None:
        for index in range(count):
            (directory / f"{index}.json").write_text(json.dumps(generate_run(index, seed)))
        return
    for shard in range(shards):
        lines = (json.dumps(generate_run(i, seed)) for i in range(shard, count, shards))
        (directory / f"runs-{shard}.jsonl").write_text("\n".join(lines) + "\n")
