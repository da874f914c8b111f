"""Compaction: merge a run's many small part files into a few large sorted ones.

A flush every 2 s makes thousands of small files over a long run, and DuckDB pays per file
(10,000 files of 1k rows take seconds per query; the same rows in 20 files, milliseconds). So
segments are merged, log-structured:

* while the run is live (in the writer's background thread, after each flush): size-tiered, as
  in log-structured stores: every ``FANOUT`` one-flush parts into one file, every ``FANOUT`` of
  those into one, and so on, so each row is rewritten about log_FANOUT(flushes) times and a run
  never has more than a few dozen files;
* when the run ends (``final``), and on demand for a whole store (``lawn-monitor compact``):
  everything into one file.

Merged files are sorted by (metric, layer, step) with row groups of ``ROW_GROUP`` rows, so that
DuckDB skips every row group whose min/max statistics exclude the metric a chart asks for.

Readers never see a row twice or miss one: the merged file is written whole first, and a file
is read only when no wider segment covers it (``storage.live_files``); the covered files are
deleted afterwards. A reader that listed a file just before it was deleted retries (RunStore
does).
"""
from __future__ import annotations

import warnings

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .sink import SCHEMA, parquet_bytes
from .storage import Location, Segment, compact_name, live_files

FANOUT = 16  # segments of one level merged into one of the next
ROW_GROUP = 16_384  # small enough that a chart query decodes little beyond its own rows
SORT_KEYS = [("metric", "ascending"), ("layer", "ascending"), ("step", "ascending")]


TEXT = ["run_id", "layer", "metric"]
DICT_SCHEMA = pa.schema([pa.field(f.name, pa.dictionary(pa.int32(), pa.string())) if f.name in TEXT else f
                         for f in SCHEMA])


def _read(loc: Location, rel: str) -> pa.Table:
    """A segment with its text columns as dictionaries (cheap to read, sort and write)."""
    table = pq.read_table(pa.BufferReader(loc.read_bytes(rel)), read_dictionary=TEXT)
    return table.select(SCHEMA.names).cast(DICT_SCHEMA)


def _ranks(column: pa.ChunkedArray) -> np.ndarray:
    """Integer codes for a (dictionary) text column whose order is the strings' order."""
    encoded = column.combine_chunks() if pa.types.is_dictionary(column.type) else \
        pc.dictionary_encode(column).combine_chunks()
    order = pc.sort_indices(encoded.dictionary).to_numpy()
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank[encoded.indices.to_numpy(zero_copy_only=False)]


def sort_rows(table: pa.Table) -> pa.Table:
    """Sort by (metric, layer, step).

    Segments hold consecutive flushes and a writer flushes steps in order, so a stable sort on
    one integer key for (metric, layer) already leaves steps in order; that is several times
    faster than a three-key sort on strings. If steps turn out not to be in order within a group
    (rows written by hand), fall back to the full sort.
    """
    if table.num_rows == 0:
        return table
    metric, layer = _ranks(table["metric"]), _ranks(table["layer"])
    key = metric * (layer.max() + 1) + layer
    order = np.argsort(key, kind="stable")
    step = table["step"].to_numpy()[order]
    same_group = key[order][1:] == key[order][:-1]
    if np.any(same_group & (step[1:] < step[:-1])):
        return table.sort_by(SORT_KEYS)
    return table.take(pa.array(order))


def merge(loc: Location, run_id: str, segments: list[Segment], cache: dict[str, pa.Table] | None = None) -> Segment:
    """Write one sorted file holding the rows of ``segments`` (contiguous flush ranges).

    ``cache`` maps file names to tables the caller still holds (the writer's recent parts);
    those are taken from it (and removed) instead of being read back.
    """
    folder = f"{run_id}/metrics"
    cache = {} if cache is None else cache
    parts = []
    for seg in sorted(segments, key=lambda s: s.lo):
        held = cache.pop(seg.name, None)
        parts.append(held.cast(DICT_SCHEMA) if held is not None else _read(loc, f"{folder}/{seg.name}"))
    table = sort_rows(pa.concat_tables(parts).unify_dictionaries().combine_chunks())
    lo, hi = min(s.lo for s in segments), max(s.hi for s in segments)
    name = compact_name(lo, hi)
    loc.write_atomic(f"{folder}/{name}", parquet_bytes(table, row_group_size=ROW_GROUP))
    return Segment(name, lo, hi)


def level(seg: Segment) -> int:
    """0 for one flush, 1 for up to FANOUT**2 - 1 flushes merged once, and so on."""
    span, lvl = seg.hi - seg.lo + 1, 0
    while span >= FANOUT:
        span //= FANOUT
        lvl += 1
    return lvl


def plan(live: list[Segment]) -> list[Segment]:
    """The next live merge: the last FANOUT segments, when they are all of one level."""
    tail = live[-FANOUT:]
    if len(tail) == FANOUT and len({level(s) for s in tail}) == 1:
        return tail
    return []


def compact_run(loc: Location, run_id: str, final: bool = False,
                cache: dict[str, pa.Table] | None = None) -> int:
    """Merge this run's segments as the policy above says; returns the number of files merged.

    Only the run's own writer (or, for a run that has ended, anyone) may call this: two
    compactors on one live run could write overlapping segments.
    """
    folder = f"{run_id}/metrics"
    live, covered, other = live_files([name for name, _ in loc.listdir(folder)])
    for seg in covered:  # left behind by a compactor that was killed between merge and delete
        loc.remove(f"{folder}/{seg.name}")
    if other:
        warnings.warn(f"{run_id}: leaving files compaction does not own: {', '.join(other)}", stacklevel=2)
    merged = 0
    while True:
        if final:
            todo = live if len(live) > 1 or any(not s.compacted for s in live) else []
        else:
            todo = plan(live)
        if not todo:
            return merged
        new = merge(loc, run_id, todo, cache)
        # A listing is one snapshot of the folder (one getdents call for a folder this small, one
        # list page on object storage), so a reader sees the new file or all the old ones.
        for seg in todo:
            loc.remove(f"{folder}/{seg.name}")
        merged += len(todo)
        live = [s for s in live if s not in todo] + [new]
        live.sort(key=lambda s: s.lo)


def compact_store(loc: Location, run_ids: list[str]) -> dict[str, int]:
    """``lawn-monitor compact``: merge every given run into one file and remove temp files that
    killed writers left (only for runs that have ended: a live run is left to its writer)."""
    merged = {}
    for run_id in run_ids:
        for name in loc.stray_temps(f"{run_id}/metrics", older_than=0.0):  # the run has ended
            loc.remove(f"{run_id}/metrics/{name}")
        merged[run_id] = compact_run(loc, run_id, final=True)
    return merged
