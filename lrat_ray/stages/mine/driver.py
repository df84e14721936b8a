"""The mine stage's driver: plan the file groups, run them on Ray (reusing finished ones), merge
their summaries into the exact global weight parameters, write the weighted pairs and report."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from collections import Counter
from typing import Any

import pyarrow.parquet as pq

from lrat_ray.core.pairs import PAIR_SCHEMA, add_weights, iter_lrat_jsonl
from lrat_ray.core.stats import StatsAccumulator
from lrat_ray.core.weighting import LengthHistogram, fit_weights
from lrat_ray.infra import storage
from lrat_ray.infra.errors import LratError
from lrat_ray.infra.progress import Progress
from lrat_ray.infra.stage_run import versions
from lrat_ray.stages.mine.config import MineConfig, length_measure
from lrat_ray.stages.mine.groups import MAX_EXAMPLES, labels_source, mine_file_group

log = logging.getLogger(__name__)


def _groups(files: list[str], config: MineConfig, workers: int, per_worker: dict) -> list[list]:
    """The mining tasks, in input order: groups of whole files, and every line-aligned byte range of
    a JSONL file larger than ``split_bytes`` as a task of its own (newlines counted by Ray tasks)."""
    import ray

    from lrat_ray.infra.runtime import remote_args

    count = ray.remote(**remote_args(per_worker))(storage.count_newlines)
    pieces = storage.line_pieces(files, config.split_bytes, lambda jobs: ray.get([count.remote(*j) for j in jobs]))
    small = [piece for piece in pieces if isinstance(piece, str)]
    per_task = config.files_per_task or max(1, math.ceil(len(small) / (4 * workers)))
    small_groups = {group[0]: group for group in (small[i : i + per_task] for i in range(0, len(small), per_task))}
    return [
        small_groups[piece] if isinstance(piece, str) else [piece]
        for piece in pieces
        if not isinstance(piece, str) or piece in small_groups
    ]


def _group_key(files: list, content_key: str) -> str:
    signed = [
        (f, storage.file_signature(f))
        if isinstance(f, str)
        else (f["uri"], f["range"], storage.file_signature(f["uri"]))
        for f in files
    ]
    return hashlib.sha256(json.dumps([content_key, signed]).encode()).hexdigest()[:24]


class _MineGroups:
    """Ray Data actor: loads the tokenizer once, then mines one group of files per call."""

    def __init__(self, config: dict, staging: str):
        self.config = MineConfig(**config)
        self.staging = staging
        # The tokenizer's thread pool would take every core of the node; a worker uses the CPUs it reserved.
        os.environ["RAYON_NUM_THREADS"] = str(max(1, math.floor(self.config.cpus_per_worker)))
        self.measure = length_measure(self.config.tokenizer)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        out = []
        for files_json, key in zip(batch["files"], batch["key"]):
            out.append(json.dumps(self._mine(json.loads(files_json), key)))
        return {"summary": out}

    def _mine(self, files: list, key: str) -> dict:
        summary_uri = storage.join(self.staging, f"{key}.json")
        if storage.exists(summary_uri):  # finished by an earlier, interrupted run
            return json.loads(storage.read_bytes(summary_uri))
        try:
            table, summary = mine_file_group(
                files,
                self.config.mining_options,
                self.measure,
                self.config.format,
                self.config.strict,
                self.config.labels,
            )
        except LratError as exc:
            return {"error": str(exc), "files": files, "key": key}
        summary["key"] = key
        summary["shard"] = storage.join(self.staging, f"{key}.parquet") if table.num_rows else None
        if summary["shard"]:
            storage.write_table_atomic(summary["shard"], table)
        storage.write_json_atomic(summary_uri, summary)
        return summary


def _weigh_file(staged: str, destination: str, params) -> None:
    fs, path = storage.resolve(staged)
    storage.write_table_atomic(destination, add_weights(pq.read_table(path, filesystem=fs), params))


def run_mine(config: MineConfig) -> dict:
    """Run the whole mining job; returns the report (run_stage records it as ``output/report.json``)."""
    import ray

    from lrat_ray.infra.runtime import actor_resources, fit_workers, init_ray, remote_args

    started = time.time()
    files = storage.expand_inputs(config.input)
    length_measure(config.tokenizer)  # fail fast, before any Ray work, on a tokenizer that does not load
    if config.labels:
        labels_source(config.labels)
    init_ray(config.address)
    per_worker = actor_resources(config.cpus_per_worker, 0, config.resources)
    workers = fit_workers(config.workers, per_worker, "mine")
    groups = _groups(files, config, workers, per_worker)
    staging = storage.join(config.output, "_staging", config.content_key())
    log.info("mining %d files in %d groups with %d workers", len(files), len(groups), workers)

    rows = [{"files": json.dumps(g), "key": _group_key(g, config.content_key())} for g in groups]
    mined = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        _MineGroups,
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=min(workers, len(rows))),
        **remote_args(per_worker),
        fn_constructor_kwargs={"config": dataclasses.asdict(config), "staging": staging},
    )
    summaries = []
    with Progress("mine", len(rows), "groups") as progress:
        for row in mined.iter_rows():
            summary = json.loads(row["summary"])
            if "error" in summary:  # --strict (or labels that do not match): stop now, not after every group
                raise LratError(summary["error"])
            summaries.append(summary)
            progress.update(1, records=summary["records_read"])
    order = {r["key"]: i for i, r in enumerate(rows)}
    summaries.sort(key=lambda s: order[s["key"]])  # input order: examples, pair order

    report = _merge_summaries(summaries)
    if not report["records_used"]:
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(report["records_skipped"].items())) or "none"
        example = f"; e.g. {report['skipped_examples'][0]}" if report["skipped_examples"] else ""
        raise LratError(
            f"no usable trajectory among {report['records_read']} records in {len(files)} files "
            f"(skipped: {reasons}){example}"
        )
    lengths = LengthHistogram.from_json(report.pop("lengths"))
    params = fit_weights(lengths, config.beta, config.zero_length)
    pairs_dir = storage.join(config.output, "pairs")
    _write_weighted_pairs([s["shard"] for s in summaries if s.get("shard")], pairs_dir, params, per_worker)
    report.update(
        beta=params.beta,
        mu_raw=params.mu_raw,
        zero_length=params.zero_length,
        weights_uniform=params.uniform,
        pairs_with_empty_reasoning=lengths.counts.get(0, 0),
        pairs_with_weight_zero=0 if params.zero_length == "neutral" or params.uniform else lengths.counts.get(0, 0),
        files=len(files),
        workers=workers,
        config=dataclasses.asdict(config),
        versions=versions(),
        wall_seconds=round(time.time() - started, 3),
    )
    if config.export == "lrat-jsonl":
        report["export"] = _export_lrat_jsonl(pairs_dir, config)
    storage.remove_dir(storage.join(config.output, "_staging"))
    return report


def _merge_summaries(summaries: list[dict]) -> dict:
    skipped: Counter = Counter()
    histogram, stats = LengthHistogram(), StatsAccumulator()
    totals = Counter()
    examples: list[str] = []
    for s in summaries:
        for key in (
            "records_read",
            "records_used",
            "unattributed_browses",
            "duplicate_browses",
            "failed_browses",
            "pairs",
        ):
            totals[key] += s[key]
        skipped.update(s["records_skipped"])
        histogram = histogram.merge(LengthHistogram.from_json(s["lengths"]))
        stats = stats.merge(StatsAccumulator.from_json(s["stats"]))
        examples.extend(s["skipped_examples"][: MAX_EXAMPLES - len(examples)])
    if totals["records_read"] != totals["records_used"] + sum(skipped.values()):
        raise AssertionError("record counts do not reconcile")  # a bug, never bad input
    return {
        "records_read": totals["records_read"],
        "records_used": totals["records_used"],
        "records_skipped": dict(skipped),
        "skipped_examples": examples,
        "unattributed_browses": totals["unattributed_browses"],
        "duplicate_browses": totals["duplicate_browses"],
        "failed_browses": totals["failed_browses"],
        "pairs": totals["pairs"],
        "lengths": histogram.to_json(),
        "stats": stats.summary(),
    }


def _write_weighted_pairs(shards: list[str], pairs_dir: str, params, per_worker: dict) -> None:
    # Plain tasks, not a Ray Data pass: a file in, a file out, and no executor to start.
    import ray

    from lrat_ray.infra.runtime import remote_args

    tmp = storage.temp_sibling(pairs_dir)
    if shards:
        weigh = ray.remote(**remote_args(per_worker))(_weigh_file)
        ray.get(
            [weigh.remote(shard, storage.join(tmp, f"part-{i:05d}.parquet"), params) for i, shard in enumerate(shards)]
        )
    else:
        storage.write_table_atomic(storage.join(tmp, "part-empty.parquet"), PAIR_SCHEMA.empty_table())
    storage.publish_dir(tmp, pairs_dir)


def _export_lrat_jsonl(pairs_dir: str, config: MineConfig) -> dict:
    import pyarrow.dataset as pads

    from lrat_ray.core.corpus import load_texts

    texts = load_texts(config.corpus) if config.corpus else None
    fs, path = storage.resolve(pairs_dir)
    rows = pads.dataset(path, filesystem=fs, format="parquet").to_table().to_pylist()
    counts: dict = {"text_source": "corpus" if texts else "trajectory"}
    lines = list(iter_lrat_jsonl(rows, texts, counts))
    storage.write_bytes_atomic(
        storage.join(config.output, "lrat_pairs.jsonl"), ("\n".join(lines) + ("\n" if lines else "")).encode()
    )
    return counts
