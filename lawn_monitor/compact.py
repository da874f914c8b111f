"""Compaction: merge a run's many small part files into a few large sorted ones.

A flush every 2 s makes thousands of small files over a long run, and DuckDB pays per file
(10,000 files of 1k rows take seconds per query; the same rows in 20 files, milliseconds). So
segments are merged, log-structured:

* while the run is live (in the writer's background thread, after each flush): size-tiered, as
  in log-structured stores: every ``FANOUT`` one-flush parts into one file, every ``FANOUT`` of
  those into one, and so on, so each row is rewritten about log_FANOUT(flushes) times and a run
  at rest has at most FANOUT - 1 files per level (the digits of its flush count in base
  FANOUT). A backlog (flushes faster than merges) is merged oldest first, and past
  ``sink.MAX_FILES`` files the writer merges itself instead of waiting for the thread;
* when the run ends (``final``), and on demand for a whole store (``lawn-monitor compact``):
  everything into one file.

Merged files are sorted by (metric, layer, step) with row groups of ``ROW_GROUP`` rows, so that
DuckDB skips every row group whose min/max statistics exclude the metric a chart asks for.

Readers never see a row twice or miss one: the merged file is written whole first (fsynced with
its folder on disk), and a file is read only when no wider segment covers it
(``storage.live_files``); the covered files are deleted afterwards: by a live writer GRACE
seconds after the merge, so that a reader that listed them just before still reads them whole;
by a run's final merge and by ``lawn-monitor compact`` at once (a reader that listed them just
before retries once: RunStore does).

A file that cannot be read (zero bytes, truncated, garbage, no permission) is renamed
``<name>.corrupt`` with a warning and the rest are merged: readers skip such names (they list only
``*.parquet``), and the file stays for a person to look at. A data-file name that is not a
regular file (a FIFO, a folder, a socket, a symlink loop) is renamed the same way, never opened.
Only the holder of the run's lock compacts it (lock.py): its writer, or ``lawn-monitor compact``
for a run that no live process holds.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .lock import LOCK_TIMEOUT, RunLock, RunLockedError
from .schema import SCHEMA, parquet_bytes
from .storage import RUN_JSON_LIMIT, Location, Segment, compact_name, contiguous, list_metrics, live_files, now_iso

FANOUT = 16  # segments of one level merged into one of the next
GRACE = 30.0  # seconds a live merge's inputs stay after it, for readers that listed them just before
ROW_GROUP = 16_384  # small enough that a chart query decodes little beyond its own rows


class Unreadable(Exception):
    """A segment that is not a readable Parquet file of the run's schema."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name, self.reason = name, reason


TEXT = ["run_id", "layer", "metric"]
DICT_SCHEMA = pa.schema(
    [pa.field(f.name, pa.dictionary(pa.int32(), pa.string())) if f.name in TEXT else f for f in SCHEMA]
)


def _read(loc: Location, rel: str) -> pa.Table:
    """A segment with its text columns as dictionaries (cheap to read, sort and write); raises
    :class:`Unreadable` if it is not a whole Parquet file with the run's columns."""
    try:
        table = pq.read_table(pa.BufferReader(loc.read_bytes(rel)), read_dictionary=TEXT)
        return table.select(SCHEMA.names).cast(DICT_SCHEMA)
    except (pa.ArrowException, KeyError, ValueError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise Unreadable(rel.rsplit("/", 1)[-1], reason) from exc


def _ranks(column: pa.ChunkedArray) -> np.ndarray:
    """Integer codes for a (dictionary) text column whose order is the strings' order."""
    encoded = (
        column.combine_chunks()
        if pa.types.is_dictionary(column.type)
        else pc.dictionary_encode(column).combine_chunks()
    )
    order = pc.sort_indices(encoded.dictionary).to_numpy()
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank[encoded.indices.to_numpy(zero_copy_only=False)]


def sort_rows(table: pa.Table) -> pa.Table:
    """Sort by (metric, layer, step).

    Segments hold consecutive flushes and a writer flushes steps in order, so a stable sort on
    one integer key for (metric, layer) already leaves steps in order; that is several times
    faster than a three-key sort on strings. If steps turn out not to be in order within a group
    (rows written by hand, a resumed run's rows), sort on (key, step), both integers: pyarrow's
    own sort does not take the dictionary columns the table holds.
    """
    if table.num_rows == 0:
        return table
    metric, layer = _ranks(table["metric"]), _ranks(table["layer"])
    key = metric * (layer.max() + 1) + layer
    order = np.argsort(key, kind="stable")
    step = table["step"].to_numpy()
    ordered = step[order]
    same_group = key[order][1:] == key[order][:-1]
    if np.any(same_group & (ordered[1:] < ordered[:-1])):
        order = np.lexsort((step, key))  # last key first; stable, so equal rows keep their order
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
    """The next live merge: the oldest FANOUT consecutive segments of one level, with no flush
    missing between them.

    Merging the oldest such window keeps levels non-increasing from the oldest segment to the
    newest, so a backlog of one-flush parts is merged whole, FANOUT at a time, instead of being
    stranded behind a newer merged file (as merging only the newest FANOUT would leave it).

    A window with a hole is never merged: the merged file would claim the missing flush's range
    and so cover (and, GRACE later, delete) a part it does not hold. A listing taken while the
    writer adds parts can have such holes (``storage.list_metrics`` lists again, but a hole can
    outlast that).
    """
    levels = [level(s) for s in live]
    for start in range(len(live) - FANOUT + 1):
        window = live[start : start + FANOUT]
        if len(set(levels[start : start + FANOUT])) == 1 and contiguous(window):
            return window
    return []


def quarantine(loc: Location, run_id: str, name: str, reason: str) -> None:
    """Rename an unreadable data file to ``<name>.corrupt`` (readers skip it), with a warning."""
    folder = f"{run_id}/metrics"
    try:
        loc.rename(f"{folder}/{name}", f"{folder}/{name}.corrupt")
    except FileNotFoundError:
        return
    warnings.warn(
        f"{loc.url}/{folder}/{name} is not a readable Parquet file ({reason}): "
        f"renamed {name}.corrupt, the other files merged",
        stacklevel=3,
    )


def _whole(loc: Location, rel: str, size: int) -> bool:
    """Parquet's magic bytes at both ends: a cheap check that a file was written whole (one that
    cannot be opened is not)."""
    if size < 12:
        return False
    try:
        head, tail = loc.head_tail(rel, size)
    except FileNotFoundError:
        raise
    except OSError:
        return False
    return head == b"PAR1" and tail == b"PAR1"


def _covered_since(loc: Location, folder: str, seg: Segment, live: list[Segment], seen: dict[str, float]) -> float:
    """When ``seg`` became covered: the newest write time of the live segments over its range."""
    times = []
    for s in live:
        if s.lo <= seg.hi and seg.lo <= s.hi:
            if s.name not in seen:
                seen[s.name] = loc.modified(f"{folder}/{s.name}") or time.time()
            times.append(seen[s.name])
    return max(times, default=time.time())


def _drop_covered(
    loc: Location, run_id: str, listing: dict[str, int], live: list[Segment], covered: list[Segment], final: bool
) -> bool:
    """Delete the files a merged file covers, once no reader can still be reading them: GRACE
    seconds after the merge (at once for ``final``: the run is at rest, and a reader that listed
    just before retries once). False when a merged file turned out broken and was quarantined
    instead (the files it covered are live again: list again)."""
    if not covered:
        return True
    folder = f"{run_id}/metrics"
    # Left by a compactor killed between its merge and its deletes, a merged file may be cut
    # short: before deleting what it covers, make sure it is whole.
    broken = [s for s in live if s.compacted and not _whole(loc, f"{folder}/{s.name}", listing[s.name])]
    for seg in broken:
        quarantine(loc, run_id, seg.name, "empty or truncated")
    if broken:
        return False
    seen: dict[str, float] = {}
    for seg in covered:
        if final or time.time() - _covered_since(loc, folder, seg, live, seen) > GRACE:
            loc.remove(f"{folder}/{seg.name}")
    return True


def _merge_due(
    loc: Location,
    run_id: str,
    live: list[Segment],
    final: bool,
    cache: dict[str, pa.Table] | None,
    on_merge: Callable[[int], None],
) -> tuple[int, bool]:
    """Merge what the policy says is due; (files merged, done). Not done when a file was
    quarantined: the caller lists again."""
    merged = 0
    while True:
        if final:
            todo = live if len(live) > 1 or any(not s.compacted for s in live) else []
        else:
            todo = plan(live)
        if not todo:
            return merged, True
        try:
            new = merge(loc, run_id, todo, cache)
        except Unreadable as bad:
            quarantine(loc, run_id, bad.name, bad.reason)
            on_merge(1)
            return merged, False
        # The new file is whole before it is listed, so a reader sees it or all the old ones
        # (a listing is no snapshot, but the old ones outlast it). The old ones stay for GRACE
        # seconds (see _drop_covered), so a reader that listed them just before reads them whole;
        # a final merge removes them now.
        if final:
            for seg in todo:
                loc.remove(f"{run_id}/metrics/{seg.name}")
        merged += len(todo)
        on_merge(len(todo) - 1)
        live = sorted([s for s in live if s not in todo] + [new], key=lambda s: s.lo)


def _set_aside(loc: Location, run_id: str, skipped: list[tuple[str, str]]) -> None:
    """Quarantine data-file names that are not regular files (a FIFO, a folder, a socket, a
    symlink loop): renamed, never opened or followed."""
    for name, why in skipped:
        quarantine(loc, run_id, name, why)


def _set_aside_unreadable(loc: Location, run_id: str, live: list[Segment]) -> bool:
    """Quarantine live files this process cannot open (no permission), which a final pass that
    finds one file already merged would otherwise leave for every reader to skip; True if any."""
    found = False
    for seg in live:
        try:
            loc.head_tail(f"{run_id}/metrics/{seg.name}", 4)
        except FileNotFoundError:
            continue
        except OSError as exc:
            quarantine(loc, run_id, seg.name, f"cannot be read: {exc.strerror or exc}")
            found = True
    return found


def compact_run(
    loc: Location,
    run_id: str,
    final: bool = False,
    cache: dict[str, pa.Table] | None = None,
    on_merge: Callable[[int], None] | None = None,
) -> int:
    """Merge this run's segments as the policy above says; returns the number of files merged.

    Only the holder of the run's lock may call this: two compactors on one run could write
    overlapping segments. ``on_merge(n)`` is told each time the folder holds ``n`` files fewer.
    Raises OSError if ``metrics/`` cannot be listed.
    """
    folder = f"{run_id}/metrics"
    on_merge = on_merge or (lambda n: None)
    merged, warned = 0, False
    while True:  # once, or again after quarantining a file
        skipped: list[tuple[str, str]] = []
        listing = list_metrics(loc, folder, skipped)
        _set_aside(loc, run_id, skipped)
        live, covered, other = live_files(list(listing))
        if not _drop_covered(loc, run_id, listing, live, covered, final):
            continue
        if final and _set_aside_unreadable(loc, run_id, live):
            continue
        if other and not warned:
            warnings.warn(f"{run_id}: leaving files compaction does not own: {', '.join(other)}", stacklevel=2)
            warned = True
        count, done = _merge_due(loc, run_id, live, final, cache, on_merge)
        merged += count
        if done:
            return merged


def mark_abandoned(loc: Location, run_id: str) -> None:
    """For the holder of a run's lock that is not its writer: a run.json that still says
    ``running`` belongs to a writer that died without closing the run (SIGKILL, power cut).
    It is marked ``interrupted`` (resumable), ended at its last heartbeat."""
    rel = f"{run_id}/run.json"
    try:
        info = json.loads(loc.read_bytes(rel, limit=RUN_JSON_LIMIT))
    except (OSError, ValueError, RecursionError):  # no usable run.json: readers say why
        return
    if not isinstance(info, dict) or info.get("status") != "running":
        return
    info.update(
        status="interrupted",
        ended_at=info.get("heartbeat_at") or now_iso(),
        error="its writer stopped without closing the run (its lock was found stale)",
    )
    loc.write_atomic(rel, json.dumps(info, indent=2, default=str).encode())


def compact_store(
    loc: Location, run_ids: list[str], lock_timeout: float = LOCK_TIMEOUT
) -> tuple[dict[str, int], dict[str, str]]:
    """``lawn-monitor compact``: merge each given run into one file and remove the temp files
    that killed writers left, holding the run's lock meanwhile. A run whose lock a live process
    holds (its writer, a resume, another compact) is left alone.

    Returns (files merged per compacted run, why each skipped run was skipped).
    """
    merged, skipped = {}, {}
    for run_id in run_ids:
        try:
            lock = RunLock(loc, run_id, "compact", timeout=lock_timeout).acquire()
        except RunLockedError as exc:
            skipped[run_id] = str(exc)
            continue
        except OSError as exc:  # the run's folder cannot be written (no permission)
            skipped[run_id] = _cannot(loc, run_id, exc)
            continue
        try:
            mark_abandoned(loc, run_id)
            for name in loc.stray_temps(f"{run_id}/metrics", older_than=0.0):  # no writer: all strays
                loc.remove(f"{run_id}/metrics/{name}")
            merged[run_id] = compact_run(loc, run_id, final=True)
        except OSError as exc:  # metrics/ is a symlink loop, cannot be listed, or cannot be written
            skipped[run_id] = _cannot(loc, run_id, exc)
        finally:
            lock.release()
    return merged, skipped


def _cannot(loc: Location, run_id: str, exc: OSError) -> str:
    where = exc.filename or f"{loc.url}/{run_id}/metrics"
    return f"run {run_id}: {where} cannot be compacted ({exc.strerror or exc}); repair or remove it"
