"""Where rows go: complete Parquet files and an atomically replaced ``run.json``.

Layout (the storage contract; docs/architecture.md has the whole map)::

    <root>/<run_id>/run.json
    <root>/<run_id>/metrics/part-<seq>-<nonce>.parquet         one per flush
    <root>/<run_id>/metrics/compact-<lo>-<hi>-<nonce>.parquet  flushes lo..hi merged (compact.py)

Every file is written whole (a temp name + ``os.replace`` on disk, a whole-object upload on
object storage: see storage.py), so a reader sees either the old file, the new one, or nothing:
never half a file. A killed writer leaves at most a stray temp file and loses at most the rows
it had not flushed yet. ``root`` may be a local folder or an ``s3://bucket/prefix`` URL.

One process writes a run at a time: the sink holds the run's lock (lock.py) from open to close,
and a run id that already has data is refused unless the run is resumed (:meth:`ParquetSink.reopen`).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import threading
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import compact as compaction
from .lock import LOCK_TIMEOUT, RunLock, pid_namespace
from .schema import SCHEMA, SCHEMA_VERSION, STATUSES, parquet_bytes
from .storage import Location, check_run_id, live_files, now_iso, part_name

# Data files a live run may pile up before its writer merges them itself rather than leave it to
# the background compactor (which falls behind only under flushes faster than it can merge).
MAX_FILES = 64


class RunExistsError(FileExistsError):
    """A new run was given the id of a run that already has data."""


class RunStartError(OSError):
    """A new run's folder or files could not be written (a full or read-only disk)."""

    def __str__(self) -> str:
        return str(self.strerror)


def slug(name: str) -> str:
    """``name`` as a safe piece of a run id (folder name): ``adam lawn/1`` -> ``adam-lawn-1``."""
    return re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9_.-]+", "-", name)).strip("-.")[:48] or "run"


def new_run_id(name: str) -> str:
    """A sortable, readable, unique id: ``20261128-174512-adam-lawn-3f2a``."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{slug(name)}-{secrets.token_hex(2)}"


class ParquetSink:
    """Writes one run's rows as Parquet part files and keeps its ``run.json`` current.

    Args:
        root: store root (folder or ``s3://`` URL) or a :class:`Location`.
        run_id: the run's folder name.
        info: fields for run.json (name, config, env, total_steps, ...).
        compact: merge part files while the run is live and into one file at ``close``
            (see compact.py); off only for tests and benchmarks of the raw layout.
        lock_timeout: seconds after which the lock of a writer on another machine that stopped
            beating may be taken over (lock.py).
        lock: the run's lock, already held (``reopen``); by default the sink takes it.

    Raises:
        RunLockedError: another live process writes (or compacts) this run.
        RunExistsError: the run already has data (and this is not a resume).
        RunStartError: the run could not be written (a full disk, no permission); nothing of
            it is left.
    """

    def __init__(
        self,
        root: str | os.PathLike | Location,
        run_id: str,
        info: dict[str, Any],
        compact: bool = True,
        lock_timeout: float = LOCK_TIMEOUT,
        lock: RunLock | None = None,
    ) -> None:
        self.loc = root if isinstance(root, Location) else Location(root)
        self.loc.check_root()
        self.root = Path(str(root)) if not self.loc.remote else None
        self.run_id = check_run_id(run_id)
        self.compact = compact
        resuming = lock is not None
        try:
            self.lock = lock or RunLock(self.loc, run_id, "write", timeout=lock_timeout).acquire()
        except OSError as exc:
            raise self._cannot_start(exc) from exc
        try:
            if not resuming and self._has_data():
                raise RunExistsError(
                    f"run {run_id} already exists in {self.loc.url}: resume it "
                    f"(lawn-monitor train --resume {run_id}), or pass another run id"
                )
            self._open(info)
        except OSError as exc:
            self.lock.release()
            if resuming or isinstance(exc, RunExistsError):
                raise
            raise self._cannot_start(exc) from exc
        except BaseException:
            self.lock.release()
            raise

    def _cannot_start(self, exc: OSError) -> RunStartError:
        """The error for a new run that could not be written (a full or read-only disk), after
        removing the folders it made, so that no empty run is left for readers to list."""
        if not self.loc.remote:
            for folder in (f"{self.run_id}/metrics", self.run_id):
                try:
                    os.rmdir(Path(self.loc.base) / folder)
                except OSError:  # not empty, or not there: not ours to remove
                    pass
        return RunStartError(
            exc.errno,
            f"cannot start run {self.run_id} in {self.loc.url}: {exc.strerror or exc}; "
            f"free space there (or fix its permissions), or pass another root",
        )

    def _has_data(self) -> bool:
        return self.loc.modified(f"{self.run_id}/run.json") is not None or bool(
            self.loc.listdir(f"{self.run_id}/metrics")
        )

    def _open(self, info: dict[str, Any]) -> None:
        run_id = self.run_id
        self.run_dir = self.root / run_id if self.root is not None else f"{self.loc.url}/{run_id}"
        self.metrics_rel = f"{run_id}/metrics"
        self.metrics_dir = Path(self.run_dir) / "metrics" if self.root is not None else f"{self.run_dir}/metrics"
        self.loc.makedirs(self.metrics_rel)
        live, covered, _ = live_files([name for name, _ in self.loc.listdir(self.metrics_rel)])
        self.seq = max((s.hi for s in live + covered), default=-1) + 1  # continue after a resume
        self._recent: dict[str, pa.Table] = {}  # part files written but not yet compacted
        self._files = len(live)  # data files in metrics/ (kept up to date by write and compaction)
        self._files_lock = threading.Lock()
        self._rest = 0  # files left after the last merge this thread did itself (see write)
        self._merging = threading.Lock()  # one compaction pass at a time
        self._unsynced: list[str] = []  # part files not yet fsynced (see sync)
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._stopping = False
        self.rows_written = 0
        self.closed = False
        self.info = {
            "run_id": run_id,
            "created_at": now_iso(),
            "status": "running",
            "heartbeat_at": now_iso(),
            "ended_at": None,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pid_ns": pid_namespace(),  # with host and pid: whether the writer still exists (lock.py)
            "schema_version": SCHEMA_VERSION,
            **info,
        }
        self.write_info()

    def write_info(self) -> None:
        self.loc.write_atomic(f"{self.run_id}/run.json", json.dumps(self.info, indent=2, default=str).encode())

    def heartbeat(self, **fields: Any) -> None:
        self.info.update(fields, heartbeat_at=now_iso())
        self.write_info()

    def write(self, table: pa.Table) -> None:
        """Write one complete part file; a reader sees all of its rows or none."""
        if table.num_rows == 0:
            return
        self.lock.check()
        table = table.cast(SCHEMA)
        name = part_name(self.seq)
        if self.compact:  # compaction merges these soon: spare it reading them back. Held before
            self._recent[name] = table  # the file shows, or a merge that lists it first leaves it held
        try:
            self.loc.write_atomic(f"{self.metrics_rel}/{name}", parquet_bytes(table), durable=False)
        except BaseException:
            self._recent.pop(name, None)
            raise
        self._unsynced.append(f"{self.metrics_rel}/{name}")
        self.seq += 1
        self.rows_written += table.num_rows
        self._note_accuracy(table)
        with self._files_lock:
            self._files += 1
            files = self._files
        if not self.compact:
            return

        if files > MAX_FILES and files >= self._rest + compaction.FANOUT:
            # Flushes come faster than the background thread merges them: merge here (after
            # its pass ends), so the files a reader must open stay bounded.
            self._compact(final=False)
            self._rest = self._files
        else:
            self._wake_compactor()

    def _merged(self, removed: int) -> None:
        """Called by compaction for each merge (``removed`` = files merged - 1) or quarantine (1)."""
        with self._files_lock:
            self._files -= removed

    def _note_accuracy(self, table: pa.Table) -> None:
        """Keep the latest and best ``test/acc`` and ``val/acc`` in run.json (``test_acc``,
        ``best_test_acc``, ``val_acc``, ``best_val_acc``; written at the next heartbeat or close),
        so that listing runs needs no scan of their Parquet files."""
        for split in ("test", "val"):
            mask = pc.and_(pc.equal(table["metric"], f"{split}/acc"), pc.equal(table["layer"], ""))
            if not pc.any(mask).as_py():
                continue
            rows = table.filter(mask)
            steps, values = rows["step"].to_numpy(), rows["value"].to_numpy()
            last = int(np.lexsort((np.arange(len(steps)), steps))[-1])  # highest step, then last written
            key, at = f"{split}_acc", f"{split}_acc_step"
            if self.info.get(at) is None or steps[last] >= self.info[at]:
                self.info[key], self.info[at] = float(values[last]), int(steps[last])
            finite = values[np.isfinite(values)]
            if finite.size:
                best = self.info.get(f"best_{key}")
                self.info[f"best_{key}"] = float(finite.max()) if best is None else max(best, float(finite.max()))

    def sync(self) -> None:
        """Make every part written so far survive a power cut, not only a killed process (parts
        are not fsynced one by one: it costs milliseconds per flush). The trainer calls this
        before each checkpoint, so a checkpoint never names a step whose rows could be lost."""
        pending, self._unsynced = self._unsynced, []
        self.loc.sync(pending, self.metrics_rel)

    # Live compaction runs in a background thread: pyarrow reads, sorts and writes without the
    # GIL, so on a multi-core machine the training loop does not wait for it.

    def _wake_compactor(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._compactor, name=f"compact-{self.run_id}", daemon=True)
            self._thread.start()
        self._wake.set()

    def _compactor(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            self._compact(final=False)

    def _stop_compactor(self) -> None:
        if self._thread is not None:
            self._stopping = True
            self._wake.set()
            self._thread.join()
            self._thread = None

    def _compact(self, final: bool) -> None:

        with self._merging:
            try:
                compaction.compact_run(self.loc, self.run_id, final=final, cache=self._recent, on_merge=self._merged)
            except Exception as exc:  # never let housekeeping stop training; the parts are intact
                warnings.warn(f"compaction of {self.run_id} failed, parts kept as they are: {exc}", stacklevel=3)

    def close(self, status: str, error: str | None = None, **fields: Any) -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}: use one of {', '.join(STATUSES)}")
        if self.closed:
            return
        try:
            if self.compact:
                self._stop_compactor()
                self._compact(final=True)
            self.info.update(fields, status=status, ended_at=now_iso(), heartbeat_at=now_iso())
            if error:
                self.info["error"] = error
            self.lock.check()  # a run taken over by another writer is not ours to mark
            self.write_info()
        finally:
            self.closed = True
            self.lock.release()

    @classmethod
    def reopen(
        cls,
        root: str | os.PathLike | Location,
        run_id: str,
        info: dict[str, Any],
        keep_through_step: int,
        compact: bool = True,
        lock_timeout: float = LOCK_TIMEOUT,
    ) -> ParquetSink:
        """Continue an existing run after a restart from a checkpoint taken at ``keep_through_step``.

        Rows that the earlier process wrote after that step would be written again by the
        resumed one, so every data file in ``metrics/`` (whatever its name: parts, compacted
        files, files from other versions) that holds any is rewritten without them, each whole
        under its own name (temp name + ``os.replace``): a reader sees each file before or after,
        never broken, and the covering between part and compacted files is kept (a file left
        with no rows is kept, empty). ``run.json`` keeps ``created_at`` and gains a ``resumed``
        entry; the status is ``running`` again. The run's lock is taken first: a second resume of
        the same run fails with :class:`RunLockedError`.
        """
        loc = root if isinstance(root, Location) else Location(root)
        check_run_id(run_id)
        try:
            old = json.loads(loc.read_bytes(f"{run_id}/run.json"))
        except FileNotFoundError:
            raise FileNotFoundError(
                f"no run {run_id!r} under {loc.url} (no run.json): check --root and the run id"
            ) from None
        lock = RunLock(loc, run_id, "resume", timeout=lock_timeout).acquire()
        try:
            cls._drop_after(loc, run_id, keep_through_step)
        except BaseException:
            lock.release()
            raise
        resumed = list(old.get("resumed") or []) + [{"at": now_iso(), "from_step": keep_through_step}]
        info = {**info, "created_at": old.get("created_at", now_iso()), "resumed": resumed}
        return cls(root, run_id, info, compact=compact, lock=lock)

    @staticmethod
    def _drop_after(loc: Location, run_id: str, keep_through_step: int) -> None:
        """Rewrite every data file of the run that holds rows after ``keep_through_step`` without them."""
        folder = f"{run_id}/metrics"
        for name, _ in sorted(loc.listdir(folder)):
            if not name.endswith(".parquet") or name.startswith("."):  # temp files of a killed writer
                continue
            rel = f"{folder}/{name}"
            try:
                table = pq.read_table(pa.BufferReader(loc.read_bytes(rel)))
            except (pa.ArrowInvalid, OSError) as exc:
                warnings.warn(f"reopen {run_id}: left unreadable {name} as it is ({exc})", stacklevel=2)
                continue
            steps = table.column("step").to_numpy()
            if steps.size == 0 or steps.max() <= keep_through_step:
                continue
            kept = table.filter(pc.less_equal(table.column("step"), keep_through_step))
            loc.write_atomic(rel, parquet_bytes(kept.cast(SCHEMA)))
