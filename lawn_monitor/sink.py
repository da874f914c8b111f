"""Where rows go: complete Parquet files and an atomically replaced ``run.json``.

Layout (the storage contract; docs/architecture.md has the whole map)::

    <root>/<run_id>/run.json
    <root>/<run_id>/metrics/part-<seq>-<nonce>.parquet         one per flush
    <root>/<run_id>/metrics/compact-<lo>-<hi>-<nonce>.parquet  flushes lo..hi merged (compact.py)

Every file is written whole (a temp name + ``os.replace`` on disk, a whole-object upload on
object storage: see storage.py), so a reader sees either the old file, the new one, or nothing:
never half a file. A killed writer leaves at most a stray temp file and loses at most the rows
it had not flushed yet. ``root`` may be a local folder or an ``s3://bucket/prefix`` URL.
"""
from __future__ import annotations

import io
import json
import os
import re
import secrets
import socket
import threading
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .storage import Location, check_run_id, live_files, part_name

SCHEMA_VERSION = 1

SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("step", pa.int64()),
        ("epoch", pa.float64()),
        ("wall_time", pa.float64()),
        ("layer", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
    ]
)

STATUSES = ("running", "finished", "failed", "diverged", "interrupted")


def default_root() -> str:
    """``$LAWN_MONITOR_ROOT`` if set, else ``./runs``."""
    return os.environ.get("LAWN_MONITOR_ROOT", "runs")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def new_run_id(name: str) -> str:
    """A sortable, readable, unique id: ``20261128-174512-adam-lawn-3f2a``."""
    slug = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9_.-]+", "-", name)).strip("-.")[:48] or "run"
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{slug}-{secrets.token_hex(2)}"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a local file whole (temp name, fsync, ``os.replace``)."""
    Location(path.parent).write_atomic(path.name, data)


def write_run_json(path: Path, info: dict[str, Any]) -> None:
    atomic_write_bytes(path, json.dumps(info, indent=2, default=str).encode())


def parquet_bytes(table: pa.Table, row_group_size: int | None = None) -> bytes:
    """Encode a table as Parquet: dictionaries for the repetitive text columns only, and
    min/max statistics only on the columns queries filter by (twice as fast to write as the
    defaults, and no larger)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", row_group_size=row_group_size,
                   use_dictionary=["run_id", "layer", "metric"], write_statistics=["step", "layer", "metric"],
                   # No Arrow schema in the file: text reads back as plain strings (the storage
                   # contract), even from compacted files that were built from dictionaries.
                   store_schema=False)
    return buf.getvalue()


class ParquetSink:
    """Writes one run's rows as Parquet part files and keeps its ``run.json`` current.

    Args:
        root: store root (folder or ``s3://`` URL) or a :class:`Location`.
        run_id: the run's folder name.
        info: fields for run.json (name, config, env, total_steps, ...).
        compact: merge part files while the run is live and into one file at ``close``
            (see compact.py); off only for tests and benchmarks of the raw layout.
    """

    def __init__(self, root: str | os.PathLike | Location, run_id: str, info: dict[str, Any],
                 compact: bool = True) -> None:
        self.loc = root if isinstance(root, Location) else Location(root)
        self.loc.check_root()
        self.root = Path(str(root)) if not self.loc.remote else None
        self.run_id = check_run_id(run_id)
        self.run_dir = self.root / run_id if self.root is not None else f"{self.loc.url}/{run_id}"
        self.metrics_rel = f"{run_id}/metrics"
        self.metrics_dir = Path(self.run_dir) / "metrics" if self.root is not None else f"{self.run_dir}/metrics"
        self.loc.makedirs(self.metrics_rel)
        live, covered, _ = live_files([name for name, _ in self.loc.listdir(self.metrics_rel)])
        self.seq = max((s.hi for s in live + covered), default=-1) + 1  # continue after a resume
        self.compact = compact
        self._recent: dict[str, pa.Table] = {}  # part files written but not yet compacted
        self._unsynced: list[str] = []  # part files not yet fsynced (see sync)
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._stopping = False
        self.rows_written = 0
        self.info = {
            "run_id": run_id,
            "created_at": now_iso(),
            "status": "running",
            "heartbeat_at": now_iso(),
            "ended_at": None,
            "host": socket.gethostname(),
            "pid": os.getpid(),
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
        table = table.cast(SCHEMA)
        name = part_name(self.seq)
        self.loc.write_atomic(f"{self.metrics_rel}/{name}", parquet_bytes(table), durable=False)
        self._unsynced.append(f"{self.metrics_rel}/{name}")
        if self.compact:  # compaction merges these soon: spare it reading them back
            self._recent[name] = table
        self.seq += 1
        self.rows_written += table.num_rows
        self._note_accuracy(table)
        if self.compact:
            self._wake_compactor()

    def _note_accuracy(self, table: pa.Table) -> None:
        """Keep the latest and best ``test/acc`` in run.json (written at the next heartbeat or
        close), so that listing runs needs no scan of their Parquet files."""
        mask = pc.and_(pc.equal(table["metric"], "test/acc"), pc.equal(table["layer"], ""))
        if not pc.any(mask).as_py():
            return
        rows = table.filter(mask)
        steps, values = rows["step"].to_numpy(), rows["value"].to_numpy()
        last = int(np.lexsort((np.arange(len(steps)), steps))[-1])  # highest step, then last written
        if self.info.get("test_acc_step") is None or steps[last] >= self.info["test_acc_step"]:
            self.info["test_acc"], self.info["test_acc_step"] = float(values[last]), int(steps[last])
        finite = values[np.isfinite(values)]
        if finite.size:
            best = self.info.get("best_test_acc")
            self.info["best_test_acc"] = float(finite.max()) if best is None else max(best, float(finite.max()))

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
        from .compact import compact_run  # compact.py imports this module

        try:
            compact_run(self.loc, self.run_id, final=final, cache=self._recent)
        except Exception as exc:  # never let housekeeping stop training; the parts are intact
            warnings.warn(f"compaction of {self.run_id} failed, parts kept as they are: {exc}", stacklevel=3)

    def close(self, status: str, error: str | None = None, **fields: Any) -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}: use one of {', '.join(STATUSES)}")
        if self.compact:
            self._stop_compactor()
            self._compact(final=True)
        self.info.update(fields, status=status, ended_at=now_iso(), heartbeat_at=now_iso())
        if error:
            self.info["error"] = error
        self.write_info()

    @classmethod
    def reopen(cls, root: str | os.PathLike | Location, run_id: str, info: dict[str, Any],
               keep_through_step: int, compact: bool = True) -> "ParquetSink":
        """Continue an existing run after a restart from a checkpoint taken at ``keep_through_step``.

        Rows that the earlier process wrote after that step would be written again by the
        resumed one, so every data file in ``metrics/`` (whatever its name: parts, compacted
        files, files from other versions) that holds any is rewritten without them, each whole
        under its own name (temp name + ``os.replace``): a reader sees each file before or after,
        never broken, and the covering between part and compacted files is kept (a file left
        with no rows is kept, empty). ``run.json`` keeps ``created_at`` and gains a ``resumed``
        entry; the status is ``running`` again.
        """
        loc = root if isinstance(root, Location) else Location(root)
        check_run_id(run_id)
        try:
            old = json.loads(loc.read_bytes(f"{run_id}/run.json"))
        except FileNotFoundError:
            raise FileNotFoundError(f"no run {run_id!r} under {loc.url} (no run.json): check --root and the run id")
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
            import pyarrow.compute as pc

            kept = table.filter(pc.less_equal(table.column("step"), keep_through_step))
            loc.write_atomic(rel, parquet_bytes(kept.cast(SCHEMA)))
        resumed = list(old.get("resumed") or []) + [{"at": now_iso(), "from_step": keep_through_step}]
        info = {**info, "created_at": old.get("created_at", now_iso()), "resumed": resumed}
        return cls(root, run_id, info, compact=compact)
