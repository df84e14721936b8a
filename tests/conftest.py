"""Shared fixtures. Ray is started at most once per test session, and only by tests that ask for it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lrat_ray.core.trajectory import SearchHit, Step, Trajectory

# One numeric path on every CPU: auto precision resolves to fp32 in the suite unless the caller
# says otherwise (LRAT_PRECISION=auto runs it at the machine's best, bf16 where native), so an
# AMX machine and an AVX2-only one run the same computations and the same test sizes hold on both.
os.environ.setdefault("LRAT_PRECISION", "fp32")
REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED_DATA = Path(os.environ.get("LRAT_DATA", REPO.parent / "shared" / "data"))
REAL_TRAJECTORIES = SHARED_DATA / "lrat" / "trajectory_bm25"


def jsonl_lines(path) -> list[str]:
    """Non-blank lines of a JSONL file (split on newlines only: str.splitlines would also split
    inside strings holding U+2028 and friends, which real corpora contain)."""
    return [line for line in Path(path).read_text(encoding="utf-8").split("\n") if line.strip()]


@pytest.fixture(scope="session")
def real_trajectory_files() -> list[Path]:
    files = sorted(REAL_TRAJECTORIES.glob("*.json"), key=lambda p: int(p.stem))
    assert len(files) == 10, f"expected the 10 real LRAT trajectories in {REAL_TRAJECTORIES}"
    return files


# A hand-built trajectory (shared by the mining and statistics tests)
def search(query, *ids):
    return Step("search", query=query, results=tuple(SearchHit(d, snippet=f"snippet {d}") for d in ids))


def browse(doc):
    return Step("browse", doc_id=doc, text=f"full text of {doc}")


def think(text):
    return Step("think", text=text)


# Two windows, a browse judged useless, a browse of a doc from an older search, a final positive.
HAND = Trajectory(
    id="hand",
    correct=False,
    steps=(
        search("q1", "a", "b", "c"),
        browse("a"),
        think("useless page"),
        search("q2", "d", "a", "e"),
        browse("d"),
        think("great, key facts here"),
        browse("b"),
        think("useless"),
        search("q3", "f", "g"),
        browse("f"),
        think("good"),
        Step("answer", text="done"),
    ),
)


# The fast tier (``-m "not slow"``) is the pure tests plus one Ray test, the flywheel smoke test,
# which drives every stage through Ray (rollout, mine, judge, Ray Train, index, Serve, eval). Every
# other test that needs the session's Ray belongs to the full tier: each Ray stage starts fresh
# worker processes that import torch and transformers (~6 s apiece on these CPUs), so a handful of
# them would cost minutes, and the smoke test already covers the wiring they share.
FAST_RAY_TESTS = {"test_one_flywheel_iteration_runs_every_stage_and_trains_on_judged_pairs"}
# Modules and tests that are slow without the session's Ray (real LLMs, clusters of their own, a
# local S3 server, a decoder embedder, ablation cells, LoRA, a two-process training).
SLOW_MODULES = {
    "test_multinode",
    "test_object_storage",
    "test_llm_real",
    "test_decoder_embedder",
    "test_ablation",
    "test_judged_mining",
}
SLOW_TESTS = {
    "test_lora_trains_only_adapters_and_merges_on_save",
    "test_two_worker_gathered_loss_and_gradient_equal_one_process",
}


# The real-LLM tests' one timeout policy: every test has the suite's timeout (pyproject, 600 s)
# and is sized to take at most a third of it on the slower CPU kind (AVX2 only, fp32). When one
# fails anyway (a timeout included), its report says how fast this machine generated tokens in the
# session, its CPU and the precision in force, so a slow machine fails loudly, not mysteriously.
LLM_MEASURED: list[str] = []


def record_llm_rate(what: str, tokens: int | None = None, seconds: float | None = None, rows: int | None = None):
    """Note a measured LLM rate (a test calls this after each LLM phase) for failure reports."""
    parts = [f"{tokens} tokens" if tokens is not None else None, f"{rows} rows" if rows is not None else None]
    rate = (f", {tokens / seconds:.1f} tokens/s" if tokens and seconds else "") + (
        f", {rows / seconds:.2f} rows/s" if rows and seconds else ""
    )
    LLM_MEASURED.append(f"{what}: {', '.join(p for p in parts if p)} in {seconds:.1f} s{rate}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and item.get_closest_marker("llm") is not None:
        from lrat_ray.infra.hardware import summary_line

        lines = [
            summary_line(),
            f"LRAT_PRECISION={os.environ.get('LRAT_PRECISION')} in this session",
            "LLM work measured in this session (a rate far below the README's figures means a slow machine):",
        ]
        lines += [f"  {m}" for m in LLM_MEASURED] or ["  nothing measured yet"]
        report.sections.append(("LLM speed on this machine", "\n".join(lines)))


def pytest_collection_modifyitems(items):
    """The tiers: ``-m "not slow"`` is the fast one (``make test-fast``); ``ray`` marks every test
    that needs the session's Ray."""
    for item in items:
        uses_ray = "ray_session" in getattr(item, "fixturenames", ())
        if (
            item.module.__name__ in SLOW_MODULES
            or item.originalname in SLOW_TESTS
            or (uses_ray and item.originalname not in FAST_RAY_TESTS)
        ):
            item.add_marker(pytest.mark.slow)
        if uses_ray:
            item.add_marker(pytest.mark.ray)


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray for the whole session (2 CPUs, like the machines this runs on), started as the
    stages start theirs (on 127.0.0.1)."""
    import ray

    from lrat_ray.infra.runtime import init_ray

    init_ray(num_cpus=2)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


MSMARCO = SHARED_DATA / "msmarco-5k"


@pytest.fixture(scope="session")
def msmarco_slice(tmp_path_factory):
    """A real slice of msmarco-5k: 4 TREC DL queries, every passage judged for them, and 150
    unjudged passages; small enough to encode in seconds."""
    import json

    from lrat_ray.core.datasets import load_qrels

    qrels = load_qrels(str(MSMARCO / "qrels" / "test.tsv"))
    qids = sorted(qrels)[:4]
    judged = {d for q in qids for d in qrels[q]}
    corpus, extra = [], 0
    for line in (MSMARCO / "corpus.jsonl").read_text().split("\n"):
        if not line.strip():
            continue
        doc = json.loads(line)
        if doc["_id"] in judged:
            corpus.append(line)
        elif extra < 150:
            corpus.append(line)
            extra += 1
    root = tmp_path_factory.mktemp("msmarco")
    (root / "corpus.jsonl").write_text("\n".join(corpus) + "\n")
    queries = [
        l for l in (MSMARCO / "queries.jsonl").read_text().split("\n") if l.strip() and json.loads(l)["_id"] in qids
    ]
    (root / "queries.jsonl").write_text("\n".join(queries) + "\n")
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{g}" for q in qids for d, g in qrels[q].items()]
    (root / "qrels.tsv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="session")
def msmarco_index(ray_session, msmarco_slice, tmp_path_factory):
    from lrat_ray.stages.index import IndexConfig, run_index

    out = tmp_path_factory.mktemp("index") / "flat"
    run_index(IndexConfig(corpus=[str(msmarco_slice / "corpus.jsonl")], output=str(out), workers=2))
    return out


SCIFACT = SHARED_DATA / "scifact-beir"


@pytest.fixture(scope="session")
def scifact_slice(tmp_path_factory):
    """A real SciFact slice: 30 train and 12 test claims with every judged abstract, plus 150 others."""
    import json

    from lrat_ray.core.datasets import load_qrels

    train = load_qrels(str(SCIFACT / "qrels" / "train.tsv"))
    test = load_qrels(str(SCIFACT / "qrels" / "test.tsv"))
    train_ids, test_ids = sorted(train)[:30], sorted(test)[:12]
    judged = {d for q in train_ids for d in train[q]} | {d for q in test_ids for d in test[q]}
    root = tmp_path_factory.mktemp("scifact")
    kept, extra = [], 0
    for line in jsonl_lines(SCIFACT / "corpus.jsonl"):
        doc_id = json.loads(line)["_id"]
        if doc_id in judged or extra < 150:
            extra += doc_id not in judged
            kept.append(line)
    (root / "corpus.jsonl").write_text("\n".join(kept) + "\n")
    wanted = set(train_ids) | set(test_ids)
    (root / "queries.jsonl").write_text(
        "\n".join(l for l in jsonl_lines(SCIFACT / "queries.jsonl") if json.loads(l)["_id"] in wanted) + "\n"
    )
    for name, ids, qrels in (("train.tsv", train_ids, train), ("test.tsv", test_ids, test)):
        rows = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{g}" for q in ids for d, g in qrels[q].items()]
        (root / name).write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="session")
def serve_port() -> int:
    """One HTTP port for every Ray Serve app of the session: Serve keeps the port it started with."""
    from lrat_ray.infra.runtime import free_port

    return free_port()
