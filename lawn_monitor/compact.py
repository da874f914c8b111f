"""Compaction: merge a run's many small part files into a few large sorted ones.

A flush every 2 s makes thousands of small files over a long run, and DuckDB pays per file
(10,000 files of 1k rows take seconds per query; the same rows in 20 files, milliseconds). So
segments are merged, log-structured:

* while the run is live (called by the writer after each flush): every ``PARTS_PER_MERGE``
  flushes into one ``compact-<lo>-<hi>`` file; once ``COMPACTS_PER_MERGE`` of those exist, all
  of them into one;
* when the run ends (``final``), and on demand for a whole store (``lawn-monitor compact``):
  everything into one file.

Merged files are sorted by (metric, layer, step) with row groups of ``ROW_GROUP`` rows, so that
DuckDB skips every row group whose min/max statistics exclude the metric a chart asks for.

Readers never see a row twice or miss one: the merged file is written whole first, and a file
is read only when no wider segment covers it (``storage.live_files``); the covered files are
deleted afterwards, after ``grace`` seconds, by which time no listing can miss the new file.
A reader that listed a file just before it was deleted retries (RunStore does).
"""
from __future__ import annotations

import time
import warnings

import pyarrow as pa
import pyarrow.parquet as pq

from .sink import SCHEMA, parquet_bytes
from .storage import Location, Segment, compact_name, live_files

PARTS_PER_MERGE = 32
COMPACTS_PER_MERGE = 8
ROW_GROUP = 65_536
SORT_KEYS = [("metric", "ascending"), ("layer", "ascending"), ("step", "ascending")]


def _read(loc: Location, rel: str) -> pa.Table:
    return pq.read_table(pa.BufferReader(loc.read_bytes(rel))).cast(SCHEMA)


def merge(loc: Location, run_id: str, segments: list[Segment]) -> Segment:
    """Write one sorted file holding the rows of ``segments`` (contiguous flush ranges)."""
    folder = f"{run_id}/metrics"
    table = pa.concat_tables([_read(loc, f"{folder}/{s.name}") for s in segments])
    table = table.sort_by(SORT_KEYS)
    lo, hi = min(s.lo for s in segments), max(s.hi for s in segments)
    name = compact_name(lo, hi)
    loc.write_atomic(f"{folder}/{name}", parquet_bytes(table, row_group_size=ROW_GROUP))
    return Segment(name, lo, hi)


def compact_run(loc: Location, run_id: str, final: bool = False, grace: float = 0.25) -> int:
    """Merge this run's segments as the policy above says; returns the number of files merged.

    Only the run's own writer (or, for a run that has ended, anyone) may call this: two
    compactors on one live run could write overlapping segments.
    """
    folder = f"{run_id}/metrics"
    live, covered, other = live_files([name for name, _ in loc.listdir(folder)])
    # Files covered since an earlier pass are old enough now that no listing can miss their cover.
    for seg in covered:
        loc.remove(f"{folder}/{seg.name}")
    if other:
        warnings.warn(f"{run_id}: leaving files compaction does not own: {', '.join(other)}", stacklevel=2)
    if final:
        todo = live if len(live) > 1 or any(not s.compacted for s in live) else []
    else:
        parts = [s for s in live if not s.compacted]
        compacts = [s for s in live if s.compacted]
        if len(compacts) >= COMPACTS_PER_MERGE:
            todo = live
        elif len(parts) >= PARTS_PER_MERGE:
            todo = parts
        else:
            todo = []
    if not todo:
        return 0
    merge(loc, run_id, todo)
    if final:  # nobody will come back to delete them later
        time.sleep(grace)
        for seg in todo:
            loc.remove(f"{folder}/{seg.name}")
    return len(todo)


def compact_store(loc: Location, run_ids: list[str], grace: float = 0.25) -> dict[str, int]:
    """``lawn-monitor compact``: merge every given run into one file (runs still being written
    are left to their own writer)."""
    return {run_id: compact_run(loc, run_id, final=True, grace=grace) for run_id in run_ids}
