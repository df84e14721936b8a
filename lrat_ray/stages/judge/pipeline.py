"""The judge stage on Ray Data: read pairs or browse events, add prompts, join the answer cache,
send the misses to the backend, parse, count, write ``OUTPUT/pairs`` (or ``labels``) atomically
and report; an interrupted run's finished blocks go into the cache first."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time

import pyarrow as pa
import pyarrow.compute as pc

from lrat_ray.core.pairs import pairs_source
from lrat_ray.infra import storage
from lrat_ray.infra.errors import LratError
from lrat_ray.stages.judge.backends import BACKENDS, LIGHT_CPUS
from lrat_ray.stages.judge.config import JudgeConfig
from lrat_ray.stages.judge.prompts import PROMPTS
from lrat_ray.stages.judge.rows import add_prompts, label_answers, label_cached, label_without_model, output_schema

log = logging.getLogger(__name__)
MAX_READ_TASKS = 64  # many small input files are read a group at a time, not one task each
CACHE_ROWS_PER_FILE = 200_000  # grouping by key leaves one tiny block per key; write them together


def default_cache(output: str) -> str:
    """``judge-cache`` beside the output directory, so reruns into new directories share it."""
    parent = (
        output.rstrip("/").rpartition("/")[0]
        if storage.is_remote(output)
        else os.path.dirname(os.path.abspath(output.rstrip("/")))
    )
    return storage.join(parent, "judge-cache")


def _cache_files(cache: str) -> list[str]:
    if not storage.exists(cache):
        return []
    try:
        return storage.expand_inputs([cache], suffixes=(".parquet",))
    except LratError:  # a cache directory with no entries yet
        return []


def _files_dataset(files: list[str]):
    """One row per file. Ray Data's own readers list files in a task that needs a whole CPU, which
    a small node running an engine never has free; a file list needs none."""
    import ray

    blocks = max(1, min(len(files), MAX_READ_TASKS))
    return ray.data.from_items([{"file": f} for f in files], override_num_blocks=blocks)


def _light(ds, fn, **kwargs):
    return ds.map_batches(fn, batch_format="pyarrow", num_cpus=LIGHT_CPUS, **kwargs)


def read_parquet_files(files: list[str]):
    """The rows of ``files`` (any pyarrow filesystem) as a Ray Dataset, one file per read."""
    return _light(_files_dataset(files), _read_tables, batch_size=None)


def _read_tables(batch: pa.Table) -> pa.Table:
    import pyarrow.parquet as pq

    tables = []
    for uri in batch.column("file").to_pylist():
        fs, path = storage.resolve(uri)
        tables.append(pq.read_table(path, filesystem=fs))
    return pa.concat_tables(tables)


def _events_dataset(config: JudgeConfig):
    return _light(
        _files_dataset(storage.expand_inputs(config.events)),
        _file_events,
        batch_size=None,
        fn_kwargs={"fmt": config.format},
    )


EVENT_SCHEMA = pa.schema(
    [
        ("trajectory_id", pa.string()),
        ("browse_turn", pa.int32()),
        ("doc_id", pa.string()),
        ("reasoning", pa.string()),
        ("document_text", pa.string()),
        ("query", pa.string()),
        ("source", pa.string()),
    ]
)


def _file_events(batch: pa.Table, fmt: str) -> pa.Table:
    from lrat_ray.core.adapters import read_trajectories
    from lrat_ray.core.mining import browse_events
    from lrat_ray.infra.errors import RecordError

    events = []
    for uri in batch.column("file").to_pylist():
        for _, traj in read_trajectories(uri, fmt):
            if isinstance(traj, RecordError):  # lrat mine counts bad records; there is nothing here to judge
                continue
            events.extend({**dataclasses.asdict(e), "source": uri} for e in browse_events(traj))
    return pa.Table.from_pylist(events, schema=EVENT_SCHEMA)


def _input(config: JudgeConfig):
    """The rows to judge as a Ray Dataset, and their Arrow schema."""
    import pyarrow.parquet as pq

    if config.events:
        return _events_dataset(config), EVENT_SCHEMA
    files = storage.expand_inputs([pairs_source(config.pairs)], suffixes=(".parquet",))
    fs, path = storage.resolve(files[0])
    return read_parquet_files(files), pq.read_schema(path, filesystem=fs)


def _only(batch: pa.Table, column: str, valid: bool) -> pa.Table:
    mask = pc.is_valid(batch.column(column))
    return batch.filter(mask if valid else pc.invert(mask))


def _uncached(batch: pa.Table) -> pa.Table:
    return _only(batch, "cached_label", False).drop_columns(["cached_label", "cached_raw"])


def _write(ds, directory: str, prefix: str, min_rows_per_file: int | None = None) -> None:
    from ray.data.datasource import FilenameProvider

    fs, path = storage.resolve(directory)
    ds.write_parquet(
        path,
        filesystem=fs,
        filename_provider=FilenameProvider(prefix, "parquet"),
        min_rows_per_file=min_rows_per_file,
        ray_remote_args={"num_cpus": LIGHT_CPUS},
    )


def _judge_with_model(items, config: JudgeConfig, schema: pa.Schema, tmp: str, scratch: str) -> int:
    """Cached rows from the cache, the rest through the model; returns the number of cache files found."""

    cache = config.cache or default_cache(config.output)
    cached = _cache_files(cache)
    pending = items
    if cached:
        joined_dir = storage.join(scratch, "joined")
        _write(
            items.join(
                read_parquet_files(cached), "left_outer", num_partitions=_partitions(cached, 2), on=("judge_key",)
            ),
            joined_dir,
            "joined",
        )
        joined = read_parquet_files(storage.expand_inputs([joined_dir], suffixes=(".parquet",)))
        _write(
            _light(_light(joined, _only, fn_args=("cached_label", True)), label_cached, fn_args=(config, schema)),
            tmp,
            "cached",
        )
        pending = _light(joined, _uncached)
        if pending.count() == 0:  # everything was cached: no engine to start
            return len(cached)
    answered = BACKENDS[config.backend].answer(pending, config)
    _write(_light(answered, label_answers, fn_args=(config, schema)), tmp, "judged")
    _extend_cache(tmp, cache)
    return len(cached)


def _extend_cache(tmp: str, cache: str) -> None:
    """New parsed answers -> one more cache file per write task (distinct keys within this run)."""

    files = [
        f for f in storage.expand_inputs([tmp], suffixes=(".parquet",)) if os.path.basename(f).startswith("judged_")
    ]
    if not files:
        return
    fresh = (
        _light(read_parquet_files(files), _only_ok)
        .groupby("judge_key", num_partitions=_partitions(files))
        .map_groups(_first_entry, batch_format="pyarrow")
    )
    staged = storage.temp_sibling(storage.join(cache, "entries"))
    _write(fresh, staged, "cache", min_rows_per_file=CACHE_ROWS_PER_FILE)
    for uri in storage.expand_inputs([staged], suffixes=(".parquet",)) if storage.exists(staged) else []:
        data = storage.read_bytes(uri)
        storage.write_bytes_atomic(storage.join(cache, os.path.basename(uri)), data)
    storage.remove_dir(staged)


def _keep_finished_answers(partial: str, cache: str) -> None:
    """An interrupted run's judged blocks go into the cache, so a resubmitted job sends only the
    rest to the model; a file cut off mid-write is dropped (its rows are judged again)."""
    import pyarrow.parquet as pq

    if not storage.exists(partial):
        return
    for uri in storage.expand_inputs([partial], suffixes=(".parquet",)):
        fs, path = storage.resolve(uri)
        try:
            pq.read_metadata(path, filesystem=fs)
        except (pa.ArrowInvalid, OSError):
            fs.delete_file(path)
    _extend_cache(partial, cache)


def _partitions(files: list, per_file: int = 1) -> int:
    """Hash-shuffle partitions sized by the input: Ray Data's default (200) costs several seconds of
    task overhead per shuffle on small inputs, and more partitions than blocks gain nothing."""
    return max(1, min(16, len(files) * per_file))


def _only_ok(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.equal(batch.column("judge_status"), "ok")).select(["judge_key", "judge_label", "judge_raw"])


def _first_entry(group: pa.Table) -> pa.Table:
    first = group.slice(0, 1)
    return pa.table(
        {
            "judge_key": first.column("judge_key"),
            "cached_label": first.column("judge_label"),
            "cached_raw": first.column("judge_raw"),
        }
    )


def _counts(tmp: str) -> dict:
    """Rows by status and label. Two narrow columns, aggregated in this process with Arrow (a Ray
    Data job here cost seconds of start-up on every run, for a few bytes per row)."""
    import pyarrow.dataset as pads

    files = storage.expand_inputs([tmp], suffixes=(".parquet",))
    fs, _ = storage.resolve(files[0])
    table = pads.dataset([storage.resolve(f)[1] for f in files], filesystem=fs, format="parquet").to_table(
        columns=["judge_status", "relevant"]
    )
    rows = table.group_by(["judge_status", "relevant"]).aggregate([([], "count_all")]).to_pylist()
    counts = {
        "rows": 0,
        "ok": 0,
        "cached": 0,
        "unparseable": 0,
        "failed": 0,
        "not_judged": 0,
        "relevant": 0,
        "irrelevant": 0,
    }
    for row in rows:
        n = row["count_all"]
        counts["rows"] += n
        counts[row["judge_status"]] += n
        counts["relevant" if row["relevant"] else "irrelevant"] += n
    return counts


def run_judge(config: JudgeConfig) -> dict:
    """Judge every pair (or browse event); writes OUTPUT/pairs (or labels) and returns the report
    (run_stage records it as OUTPUT/report.json)."""
    from ray.data import DataContext

    from lrat_ray.infra.runtime import init_ray

    started = time.time()
    if config.pairs:
        pairs_source(config.pairs)  # fail before Ray on a wrong input
    else:
        storage.expand_inputs(config.events)
    init_ray(config.address)
    # An engine that cannot be placed (no GPU, too few CPUs) fails the stage instead of waiting forever.
    DataContext.get_current().wait_for_min_actors_s = config.start_timeout_s
    final = storage.join(config.output, config.output_table)
    # A fixed place, not a fresh one: the blocks an interrupted run finished are found here again.
    tmp = storage.join(config.output, f".{config.output_table}.partial")
    if config.uses_model:
        _keep_finished_answers(tmp, config.cache or default_cache(config.output))
    storage.remove_dir(tmp)
    scratch = storage.temp_sibling(storage.join(config.output, "scratch"))
    rows, input_schema = _input(config)
    schema = output_schema(input_schema)
    items = _light(rows, add_prompts, fn_args=(config,))
    cached_entries = 0
    try:
        if config.uses_model:
            cached_entries = _judge_with_model(items, config, schema, tmp, scratch)
        else:
            _write(_light(items, label_without_model, fn_args=(config, schema)), tmp, "judged")
        if not storage.exists(tmp):  # no rows at all: an empty table still says what the columns are
            storage.write_table_atomic(storage.join(tmp, "judged_empty.parquet"), schema.empty_table())
        counts = _counts(tmp)
    finally:
        storage.remove_dir(scratch)
    storage.publish_dir(tmp, final)
    prompt_hash = hashlib.sha256(PROMPTS[config.prompt][1].encode()).hexdigest()[:16]
    report = {
        config.output_table: counts.pop("rows"),
        **counts,
        "backend": config.backend,
        "model": config.model_label,
        "prompt": config.prompt,
        "prompt_version": config.prompt_version,
        "prompt_sha256": prompt_hash,
        "on_failure": config.on_failure,
        "cache": (config.cache or default_cache(config.output)) if config.uses_model else None,
        "cache_files_before": cached_entries,
        **BACKENDS[config.backend].precision(config),
        "config": dataclasses.asdict(config),
        "wall_seconds": round(time.time() - started, 2),
    }
    return report
