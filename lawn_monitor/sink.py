"""Where rows go: complete Parquet part files and an atomically replaced ``run.json``.

Layout (the storage contract in DESIGN.md)::

    <root>/<run_id>/run.json
    <root>/<run_id>/metrics/part-<seq>-<nonce>.parquet

Every file is written whole under a temporary name that no reader globs (``.*.tmp``) and then
``os.replace``d into place, so a reader sees either the old file, the new one, or nothing: never
half a file. A killed writer leaves at most a stray temp file and loses at most the rows it had
not flushed yet.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

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


def default_root() -> Path:
    """``$LAWN_MONITOR_ROOT`` if set, else ``./runs``."""
    return Path(os.environ.get("LAWN_MONITOR_ROOT", "runs"))


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def new_run_id(name: str) -> str:
    """A sortable, readable, unique id: ``20261128-174512-adam-lawn-3f2a``."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")[:48] or "run"
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{slug}-{secrets.token_hex(2)}"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_run_json(path: Path, info: dict[str, Any]) -> None:
    atomic_write_bytes(path, json.dumps(info, indent=2, default=str).encode())


class ParquetSink:
    """Writes one run's rows as Parquet part files and keeps its ``run.json`` current."""

    def __init__(self, root: str | os.PathLike, run_id: str, info: dict[str, Any]) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise NotADirectoryError(f"run root {self.root} is a file: pass a directory as --root")
        self.run_id = run_id
        self.run_dir = self.root / run_id
        self.metrics_dir = self.run_dir / "metrics"
        self.metrics_dir.mkdir(parents=True, exist_ok=True)
        self.seq = len(list(self.metrics_dir.glob("part-*.parquet")))  # continue after a resume
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
        write_run_json(self.run_dir / "run.json", self.info)

    def heartbeat(self, **fields: Any) -> None:
        self.info.update(fields, heartbeat_at=now_iso())
        self.write_info()

    def write(self, table: pa.Table) -> None:
        """Write one complete part file; a reader sees all of its rows or none."""
        if table.num_rows == 0:
            return
        table = table.cast(SCHEMA)
        name = f"part-{self.seq:06d}-{secrets.token_hex(3)}.parquet"
        tmp = self.metrics_dir / f".{name}.tmp"
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, self.metrics_dir / name)
        self.seq += 1
        self.rows_written += table.num_rows

    def close(self, status: str, error: str | None = None, **fields: Any) -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}: use one of {', '.join(STATUSES)}")
        self.info.update(fields, status=status, ended_at=now_iso(), heartbeat_at=now_iso())
        if error:
            self.info["error"] = error
        self.write_info()
