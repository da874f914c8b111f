"""RunStore: DuckDB queries over a store of runs (``<root>/*/run.json`` and Parquet parts).

Everything returns pandas DataFrames. Values are always passed to DuckDB as parameters, never
formatted into SQL. Part files are listed in Python and checked for Parquet's magic bytes first,
so a zero-byte or truncated file is skipped with a warning instead of failing the query.
"""
from __future__ import annotations

import json
import os
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

import duckdb
import pandas as pd

from .sink import default_root

RUN_COLUMNS = ["run_id", "name", "status", "created_at", "heartbeat_at", "ended_at", "step", "total_steps", "progress"]
SERIES_COLUMNS = ["run_id", "step", "epoch", "wall_time", "value"]
TEXT_COLUMNS = {"run_id": "object", "layer": "object", "metric": "object"}  # dtypes of empty results


def _is_parquet(path: Path) -> bool:
    """A complete Parquet file starts and ends with b'PAR1' (a cheap check, no parse)."""
    try:
        size = path.stat().st_size
        if size < 12:
            return False
        with open(path, "rb") as f:
            head = f.read(4)
            f.seek(-4, os.SEEK_END)
            return head == b"PAR1" and f.read(4) == b"PAR1"
    except OSError:
        return False


def _age_seconds(iso: str | None) -> float:
    if not iso:
        return float("inf")
    try:
        then = datetime.fromisoformat(iso)
    except ValueError:
        return float("inf")
    if then.tzinfo is None:
        then = then.replace(tzinfo=timezone.utc)
    return (datetime.now(timezone.utc) - then).total_seconds()


class RunStore:
    """Read-side view of a store root.

    Args:
        root: the store root; default ``$LAWN_MONITOR_ROOT`` or ``./runs``.
        stale_after: seconds without a heartbeat after which a ``running`` run shows as ``stale``
            (its process most likely died).
    """

    def __init__(self, root: str | os.PathLike | None = None, stale_after: float = 120.0) -> None:
        self.root = Path(default_root() if root is None else root)
        self.stale_after = stale_after
        self._con = duckdb.connect()
        self._warned: set[str] = set()

    # --- files --------------------------------------------------------------------------------

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            warnings.warn(message, stacklevel=3)

    def run_ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.parent.name for p in self.root.glob("*/run.json"))

    def files(self, run_ids: Iterable[str] | None = None) -> list[str]:
        """The complete part files of these runs (all runs by default); broken ones are skipped."""
        if not self.root.is_dir():
            return []
        ids = self.run_ids() if run_ids is None else list(run_ids)
        found = []
        for run_id in ids:
            for path in sorted((self.root / run_id / "metrics").glob("*.parquet")):
                if _is_parquet(path):
                    found.append(str(path))
                else:
                    self._warn_once(f"skipping {path}: not a complete Parquet file (empty or truncated)")
        return found

    def _query(self, sql: str, params: Sequence, files: list[str], columns: list[str]) -> pd.DataFrame:
        if not files:
            return pd.DataFrame({c: pd.Series(dtype=TEXT_COLUMNS.get(c, "float64")) for c in columns})
        cur = self._con.cursor()
        try:
            return cur.execute(sql, [files, *params]).df()
        except duckdb.Error as exc:
            # A file that looked whole but is not (corrupt footer): drop the bad ones and retry.
            good = [f for f in files if self._readable(cur, f)]
            if len(good) == len(files):
                raise
            return cur.execute(sql, [good, *params]).df() if good else self._query(sql, params, [], columns)
        finally:
            cur.close()

    def _readable(self, cur, path: str) -> bool:
        try:
            cur.execute("SELECT count(*) FROM read_parquet(?)", [path]).fetchall()
            return True
        except duckdb.Error as exc:
            self._warn_once(f"skipping {path}: unreadable Parquet ({str(exc).splitlines()[0]})")
            return False

    # --- runs ---------------------------------------------------------------------------------

    def run_info(self, run_id: str) -> dict | None:
        path = self.root / run_id / "run.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            self._warn_once(f"skipping {path}: unreadable run.json ({exc})")
            return None

    def _status(self, info: dict) -> str:
        """The recorded status, or ``stale`` for a ``running`` run whose heartbeat stopped."""
        status = info.get("status", "running")
        if status == "running" and _age_seconds(info.get("heartbeat_at")) > self.stale_after:
            return "stale"
        return status

    def status(self, run_id: str) -> str | None:
        """One run's status as ``runs()`` shows it (None if its run.json is unreadable).

        Reads only that run's run.json, so it is cheap enough to poll (the dashboard's live view).
        """
        info = self.run_info(run_id)
        return None if info is None else self._status(info)

    def runs(self, status: str | Iterable[str] | None = None, **config_filters) -> pd.DataFrame:
        """One row per run: id, name, status (``stale`` for a silent running run), progress, every
        config key as a column, and ``test_acc`` (latest) / ``best_test_acc``.

        Filter by status and by config values, e.g. ``runs(status="running", optimizer="adam")``.
        """
        rows = []
        for run_id in self.run_ids():
            info = self.run_info(run_id)
            if info is None:
                continue
            status_now = self._status(info)
            total = info.get("total_steps")
            step = info.get("step") or 0
            row = {
                "run_id": run_id,
                "name": info.get("name", run_id),
                "status": status_now,
                "created_at": info.get("created_at"),
                "heartbeat_at": info.get("heartbeat_at"),
                "ended_at": info.get("ended_at"),
                "step": step,
                "total_steps": total,
                "progress": min(step / total, 1.0) if total else None,
            }
            for key, value in (info.get("config") or {}).items():
                row.setdefault(key, value)
            rows.append(row)
        df = pd.DataFrame(rows, columns=None if rows else RUN_COLUMNS)
        if df.empty:
            return df
        if status is not None:
            wanted = [status] if isinstance(status, str) else list(status)
            df = df[df["status"].isin(wanted)]
        for key, value in config_filters.items():
            if key not in df.columns:
                return df.iloc[0:0]
            df = df[df[key] == value]
        acc = self._query(
            """SELECT run_id, arg_max(value, (step, wall_time)) AS test_acc, max(value) AS best_test_acc
               FROM read_parquet(?) WHERE metric = 'test/acc' AND layer = '' GROUP BY run_id""",
            [], self.files(df["run_id"]), ["run_id", "test_acc", "best_test_acc"],
        )
        df = df.merge(acc, on="run_id", how="left")
        return df.sort_values("created_at", ascending=False, ignore_index=True)

    # --- series -------------------------------------------------------------------------------

    def series(self, run_ids: str | Iterable[str], metric: str, layer: str = "") -> pd.DataFrame:
        """``metric`` at ``layer`` ("" = whole model) for these runs, by step."""
        ids = [run_ids] if isinstance(run_ids, str) else list(run_ids)
        return self._query(
            """SELECT run_id, step, epoch, wall_time, value FROM read_parquet(?)
               WHERE metric = ? AND layer = ? ORDER BY run_id, step""",
            [metric, layer], self.files(ids), SERIES_COLUMNS,
        )

    def layers(self, run_id: str, metric: str) -> pd.DataFrame:
        """``metric`` for every layer of one run (long format: layer, step, value)."""
        return self._query(
            """SELECT layer, step, value FROM read_parquet(?)
               WHERE metric = ? AND layer <> '' ORDER BY layer, step""",
            [metric], self.files([run_id]), ["layer", "step", "value"],
        )

    def metrics(self, run_ids: str | Iterable[str]) -> list[str]:
        """The metric names these runs have written."""
        ids = [run_ids] if isinstance(run_ids, str) else list(run_ids)
        df = self._query(
            "SELECT DISTINCT metric FROM read_parquet(?) ORDER BY metric", [], self.files(ids), ["metric"]
        )
        return df["metric"].tolist()

    def switch_steps(self, run_ids: str | Iterable[str]) -> pd.DataFrame:
        """The step at which each LAWN run entered its constrained phase (runs without one: none)."""
        ids = [run_ids] if isinstance(run_ids, str) else list(run_ids)
        return self._query(
            """SELECT run_id, min(step) AS step, min(epoch) AS epoch FROM read_parquet(?)
               WHERE metric = 'phase' AND layer = '' AND value >= 1 GROUP BY run_id ORDER BY run_id""",
            [], self.files(ids), ["run_id", "step", "epoch"],
        )

    # --- tables -------------------------------------------------------------------------------

    def summary(
        self,
        metric: str = "test/acc",
        by: Sequence[str] = ("optimizer", "lawn", "batch_size"),
        reduce: str = "final",
        status: str | Iterable[str] | None = "finished",
    ) -> pd.DataFrame:
        """Group runs by config keys and aggregate the ``final`` (or ``best``) value of ``metric``
        over the runs of each group (seeds): mean, std, count, min, max. The paper's Table 2."""
        if reduce not in ("final", "best"):
            raise ValueError(f"reduce must be 'final' or 'best', got {reduce!r}")
        runs = self.runs(status=status)
        out_cols = [*by, "mean", "std", "count", "min", "max"]
        if runs.empty or any(k not in runs.columns for k in by):
            return pd.DataFrame(columns=out_cols)
        agg = "arg_max(value, (step, wall_time))" if reduce == "final" else "max(value)"
        per_run = self._query(
            f"SELECT run_id, {agg} AS value FROM read_parquet(?) "  # agg is one of two literals
            "WHERE metric = ? AND layer = '' GROUP BY run_id",
            [metric], self.files(runs["run_id"]), ["run_id", "value"],
        )
        merged = runs[["run_id", *by]].merge(per_run, on="run_id")
        if merged.empty:
            return pd.DataFrame(columns=out_cols)
        table = merged.groupby(list(by), dropna=False)["value"].agg(["mean", "std", "count", "min", "max"])
        return table.reset_index()
