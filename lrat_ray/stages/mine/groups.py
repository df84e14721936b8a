"""One group of trajectory files -> staged (unweighted) pairs and a summary: the work of one Ray
task, pure apart from reading its files (records counted as used or skipped, judge labels joined
when mining with them)."""

from __future__ import annotations

import contextlib
import gc
import itertools
from collections import Counter

import pyarrow as pa

from lrat_ray.core.adapters import read_trajectories
from lrat_ray.core.mining import (
    BrowseEvent,
    Judge,
    LengthMeasure,
    MiningOptions,
    mine_trajectories,
)
from lrat_ray.core.pairs import pairs_to_table
from lrat_ray.core.stats import StatsAccumulator
from lrat_ray.core.weighting import LengthHistogram
from lrat_ray.infra import storage
from lrat_ray.infra.errors import LratError, RecordError

MAX_EXAMPLES = 20
MINE_CHUNK = 512  # trajectories mined (and their reasoning measured) together


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
