"""RunStore: DuckDB queries over a store of runs (``<root>/*/run.json`` and Parquet files).

Results are pandas DataFrames, or Arrow tables or Polars frames with ``RunStore(root,
output="arrow" | "polars")``; ``RunStore.sql`` runs your own SQL over every row. Values are always passed to DuckDB as
parameters, never formatted into SQL. The files of a run are listed in Python first: of a run's part and compacted
files only those not covered by a wider one are read (storage.live_files: every row exactly
once while compaction runs), and each is checked for Parquet's magic bytes, so a zero-byte or
truncated file is skipped with a warning instead of failing the query. ``root`` may be a local
folder or an ``s3://`` URL (read through fsspec).

Damage is read around, never fatal to the store: a run whose run.json is unusable (see
runinfo.py) is listed with status ``damaged`` and the reason in ``damage``, and its Parquet
data is still read (a run.json over 1 MB, nested too deeply, or that is a FIFO, a device or a
folder is unusable, and never opened or read whole); a folder name that is not UTF-8, a symlink
loop, a file or folder without permission, a FIFO, socket or device where a data file should be,
or a Parquet file of another schema in ``metrics/`` is skipped. Each is one warning, kept in ``RunStore.warnings``
for the dashboard to show. A row belongs to the run whose folder holds its file (not to the
``run_id`` written in it), so a renamed or copied run folder counts as itself.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import duckdb
import numpy as np
import pandas as pd

from .lock import holder_gone, read_lock
from .runinfo import RunInfo, check_run_info
from .schema import SCHEMA
from .storage import (
    RUN_JSON_LIMIT,
    Location,
    NotAFileError,
    StoreBusyError,
    TooLargeError,
    default_root,
    list_metrics,
    live_files,
    plain_name,
)

if TYPE_CHECKING:
    import polars as pl
    import pyarrow as pa

# What a query returns: a pandas DataFrame by default; an Arrow table or a Polars frame with
# RunStore(output="arrow" | "polars").
Frame: TypeAlias = "pd.DataFrame | pa.Table | pl.DataFrame"

RUN_COLUMNS = [
    "run_id",
    "name",
    "status",
    "damage",
    "created_at",
    "heartbeat_at",
    "ended_at",
    "step",
    "total_steps",
    "progress",
    "study",  # a tuning study's name (lawn-monitor tune) and the trial's number in it
    "trial",
    "val_acc",  # the latest val/acc: a study's objective
    "best",  # True for the run of the study's winning trial
]
SERIES_COLUMNS = ["run_id", "step", "epoch", "wall_time", "x", "value", "min", "max", "smoothed"]
SUMMARY_STATS = ["mean", "std", "stderr", "count", "min", "max"]
SUMMARY_COLUMNS = [*SUMMARY_STATS, "seeds"]  # what summary() returns after the grouping columns
# Config keys that say where and how a run ran, or what was measured beside it, not what it
# computed: runs that differ only in these and the seed are repeats of one experiment, which
# summary() averages. Every other key splits a group (a key nobody declares splits too: when in
# doubt, never pool). The keys belong to whoever writes the config: a package declares its own
# as a collection of names in the entry-point group below (the project's trainers do, in
# pyproject.toml), so the core never imports it and names none of them.
NOT_COMPUTED_GROUP = "lawn_monitor.not_computed"


@functools.cache
def not_computed() -> frozenset[str]:
    """Every config key an installed package declares in ``NOT_COMPUTED_GROUP`` (see above). A
    declaration that cannot be loaded is warned about once and left out: its keys then split."""
    from importlib.metadata import entry_points

    keys: set[str] = set()
    for entry in entry_points(group=NOT_COMPUTED_GROUP):
        try:
            keys |= set(entry.load())
        except Exception as e:  # a broken plug-in must not break reading the store
            warnings.warn(f"config keys {entry.value} ({NOT_COMPUTED_GROUP}) not loaded: {e}", stacklevel=2)
    return frozenset(keys)


TEXT_COLUMNS = {"run_id": "object", "layer": "object", "metric": "object"}  # dtypes of empty results
X_AXES = ("step", "epoch", "time")
OUTPUTS = ("pandas", "arrow", "polars")
READ_ATTEMPTS = 10  # listings a query may read from before it gives up (see _query)
_calls = threading.local()  # depth of RunStore calls on this thread: only the outermost converts


def _output(method):
    """Return ``method``'s DataFrame in the store's ``output`` format. Calls the store makes to
    itself (summary reads runs) stay in pandas, and only the caller's result is converted."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        depth = getattr(_calls, "depth", 0)
        _calls.depth = depth + 1
        try:
            result = method(self, *args, **kwargs)
        finally:
            _calls.depth = depth
        return result if depth or self.output == "pandas" else _convert(result, self.output)

    return wrapper


def _convert(df: pd.DataFrame, output: str):
    """A pandas result as an Arrow table or a Polars frame. Config columns may hold values of
    several types across runs (a number in one run.json, text in another): those become text."""
    import pyarrow as pa

    index = df.index.name is not None  # layer_matrix: the layer names are the index
    try:
        table = pa.Table.from_pandas(df, preserve_index=index)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        mixed = {
            c: df[c].map(
                lambda v: None if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)) else str(v)
            )
            for c in df.columns
            if df[c].dtype == object
        }
        table = pa.Table.from_pandas(df.assign(**mixed), preserve_index=index)
    if output == "arrow":
        return table
    import polars as pl

    return pl.from_arrow(table)


# What every query reads in place of ``read_parquet(?)``: the files, with each row's run_id
# taken from the folder its file is in (<run_id>/metrics/<file>), not from the file. A run
# folder renamed or copied by hand keeps the old id inside its files; by folder it still counts
# as the run the store lists. The folder is a per-file constant, so this costs nothing measurable.
FILES_BY_FOLDER = (
    "(SELECT * EXCLUDE (filename) REPLACE (string_split(filename, '/')[-3] AS run_id) "
    "FROM read_parquet(?, filename = true))"
)
TEXT_TYPES = {"VARCHAR"}
NUMBER_TYPES = {"BIGINT", "INTEGER", "SMALLINT", "TINYINT", "UBIGINT", "UINTEGER", "DOUBLE", "FLOAT"}


def _printable(name: str) -> str:
    """A file name as text that can be shown anywhere (bytes that are not UTF-8 as \\xNN)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _age_seconds(iso: str | None) -> float:
    if not iso:
        return float("inf")
    try:
        then = datetime.fromisoformat(iso)
    except ValueError:
        return float("inf")
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    return (datetime.now(UTC) - then).total_seconds()


def _timestamp(iso: str | None) -> float:
    try:
        then = datetime.fromisoformat(iso)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    return then.timestamp()


def ema(values: pd.Series, weight: float) -> pd.Series:
    """TensorBoard's debiased exponential moving average (its "smoothing" slider).

    ``s_n = sum_i w^i x_(n-i) / sum_i w^i`` over the finite values so far, which is what
    TensorBoard computes as ``last / (1 - w^n)``; NaN and inf are passed through unsmoothed and
    do not enter the average (pandas' ``ewm(adjust=True)`` is exactly this average).
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"smoothing weight must be in [0, 1], got {weight}")
    out = values.astype("float64").copy()
    if weight == 0.0 or values.empty:
        return out
    finite = np.isfinite(out.to_numpy())
    if finite.any():
        if weight == 1.0:  # TensorBoard: no debiasing, the first finite value forever
            out[finite] = out[finite].iloc[0]
        else:
            out[finite] = out[finite].ewm(alpha=1.0 - weight, adjust=True).mean()
    return out


def _ids(run_ids: str | Iterable[str]) -> list[str]:
    return [run_ids] if isinstance(run_ids, str) else list(run_ids)


def canonical(value) -> str:
    """A config value as a text key for grouping: equal values give equal keys (30 and 30.0 too:
    pandas makes a column of ints float where some run lacks the key), lists and dicts as JSON,
    and a missing key (NaN in the frame) is ``null``."""
    if isinstance(value, (float, np.floating)):
        value = None if np.isnan(value) else int(value) if float(value).is_integer() else float(value)
    elif isinstance(value, np.integer):
        value = int(value)
    elif isinstance(value, np.bool_):
        value = bool(value)
    return json.dumps(value, sort_keys=True, default=str)


def _study_winners(runs: pd.DataFrame) -> pd.Series:
    """True for each study's winning run: the finished one with the highest final ``val_acc``
    (the first trial among equals), which is the trial the study's storage names best."""
    best = pd.Series(False, index=runs.index)
    done = runs[runs["study"].notna() & (runs["status"] == "finished") & runs["val_acc"].notna()]
    if not done.empty:
        ranked = done.sort_values(["study", "val_acc", "trial"], ascending=[True, False, True])
        best[ranked.drop_duplicates("study").index] = True
    return best


class RunStore:
    """Read-side view of a store root.

    Args:
        root: the store root (folder or ``s3://bucket/prefix``); default ``$LAWN_MONITOR_ROOT``
            or ``./runs``.
        stale_after: seconds without a heartbeat after which a ``running`` run shows as ``stale``
            (its process most likely died). The heartbeat is the beat counter of the run's lock,
            which the writer advances from a timer thread (lock.py), flushing or not.
        storage_options: passed to fsspec for a remote root (endpoint, credentials).
        output: what queries return: ``"pandas"`` DataFrames (default), ``"arrow"`` tables or
            ``"polars"`` frames (needs polars).
    """

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        stale_after: float = 120.0,
        storage_options: dict | None = None,
        output: str = "pandas",
    ) -> None:
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
        self.output = output
        self.loc = Location(default_root() if root is None else root, storage_options)
        self.root = self.loc.url if self.loc.remote else Path(self.loc.url)
        self.stale_after = stale_after
        self._con = duckdb.connect()
        # Compacted files never change, so their footers can be cached between queries.
        self._con.execute("SET parquet_metadata_cache = true")
        self.loc.register(self._con)
        self._warned: set[str] = set()
        self.warnings: list[str] = []  # every warning so far, once each, oldest first (for the dashboard)
        self._unreadable: set[str] = set()  # data files found unreadable (names never get reused)
        self._signatures: dict[str, tuple] = {}
        self._per_run_cache: dict[tuple, dict[str, tuple]] = {}
        self._frames: OrderedDict[tuple, tuple[tuple | None, pd.DataFrame]] = OrderedDict()  # see _per_run_frames
        self._beats: dict[str, tuple[object, float]] = {}  # run -> (lock beat, when it last changed), see _silent

    # --- files --------------------------------------------------------------------------------

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            self.warnings.append(message)
            warnings.warn(message, stacklevel=3)

    def run_ids(self) -> list[str]:
        """The run folders: those with a run.json, and those with data files but none (listed as
        damaged). A folder whose name is not UTF-8, or that cannot be looked into (a symlink
        loop, no permission), is skipped with a warning; so is the whole root if it cannot be
        listed (no runs)."""
        skipped: list[tuple[str, str]] = []
        try:
            names = self.loc.run_folders(skipped)
        except OSError as exc:
            self._warn_once(f"cannot list the runs in {self.loc.url}: {exc.strerror or exc}; check --root")
            return []
        for name, why in skipped:
            self._warn_once(f"skipping {self.loc.url}/{_printable(name)}: {why}; remove or repair it")
        ids = []
        for name in names:
            if _utf8(name):
                ids.append(name)
            else:
                self._warn_once(
                    f"skipping {self.loc.url}/{_printable(name)}: its folder name is not UTF-8 text; "
                    f"rename it to letters, digits, '-', '_' and '.'"
                )
        return ids

    def files(self, run_ids: Iterable[str] | None = None) -> list[str]:
        """The complete data files of these runs (all runs by default); broken ones are skipped."""
        ids = self.run_ids() if run_ids is None else list(run_ids)
        found = []
        for run_id in ids:
            found.extend(self._run_files(run_id))
        return found

    def _run_files(self, run_id: str) -> list[str]:
        folder = f"{run_id}/metrics"
        if not plain_name(run_id):  # "../x" or "a/b": not a folder of this store
            return []
        for _ in range(100):
            skipped: list[tuple[str, str]] = []
            try:
                listing = list_metrics(self.loc, folder, skipped)
            except OSError as exc:  # a symlink loop, no permission
                self._warn_once(f"skipping {self.loc.url}/{folder}: cannot be listed ({exc.strerror or exc})")
                return []
            for name, why in dict.fromkeys(skipped):
                self._warn_once(f"skipping {self.loc.url}/{folder}/{_printable(name)}: {why}; remove it")
            for name in [n for n in listing if not _utf8(n)]:
                self._warn_once(
                    f"skipping {self.loc.url}/{folder}/{_printable(name)}: its name is not UTF-8 text; "
                    f"rename or remove it"
                )
                del listing[name]
            live, _, other = live_files(list(listing))
            good: list[str] = []
            try:
                for name in sorted([s.name for s in live] + other):
                    rel = f"{folder}/{name}"
                    if self.loc.query_path(rel) not in self._unreadable and self._is_parquet(rel, listing[name]):
                        good.append(rel)
            except FileNotFoundError:  # compaction replaced it since the listing: list again
                continue
            # Files are immutable under their names (a nonce in each), so names and sizes say
            # whether a run's data changed: the key of the per-run result cache.
            self._signatures[run_id] = tuple((rel, listing[rel.rsplit("/", 1)[-1]]) for rel in good)
            return [self.loc.query_path(rel) for rel in good]
        raise StoreBusyError(f"{self.loc.url}/{folder} kept changing while being listed")

    def _is_parquet(self, rel: str, size: int) -> bool:
        """Whether a file can be read and is a complete Parquet file: it starts and ends with
        b'PAR1' (a cheap check, no parse); warns once about one that is not. Raises
        FileNotFoundError if the file is gone (the caller lists again)."""
        why = "not a complete Parquet file (empty or truncated)"
        if size >= 12:
            try:
                head, tail = self.loc.head_tail(rel, size)
            except FileNotFoundError:
                raise
            except OSError as exc:  # no permission, or it became a FIFO since the listing
                head = tail = b""
                why = f"cannot be read ({exc.strerror or exc}); repair or remove it"
            if head == tail == b"PAR1":
                return True
        self._warn_once(f"skipping {self.loc.url}/{rel}: {why}")
        return False

    def _query(
        self,
        sql: str,
        params: Sequence,
        run_ids: Iterable[str] | None,
        columns: list[str],
        files: list[str] | None = None,
    ) -> pd.DataFrame:
        """Run ``sql`` (its first parameter is the file list) over the live files of ``run_ids``;
        ``read_parquet(?)`` in it reads them by folder (FILES_BY_FOLDER).

        A file deleted between listing and reading means the listing is old: list again and
        retry. A live writer deletes what it merged only GRACE seconds after the merge
        (compact.py), so a retry's files stay until it is read, unless the query itself takes
        longer than that; only runs that end (their final merge) and ``lawn-monitor compact``
        delete at once, each once. A file that looked whole but is not, or holds other columns,
        is dropped with a warning.
        """
        sql = sql.replace("read_parquet(?)", FILES_BY_FOLDER)
        ids = None if run_ids is None else list(run_ids)
        for attempt in range(READ_ATTEMPTS):
            files = files if attempt == 0 and files is not None else self.files(ids)
            if not files:
                return pd.DataFrame({c: pd.Series(dtype=TEXT_COLUMNS.get(c, "float64")) for c in columns})
            cur = self._con.cursor()
            try:
                return cur.execute(sql, [files, *params]).df()
            except duckdb.Error:
                if self._vanished(files):
                    time.sleep(min(0.05 * (attempt + 1), 0.5))
                    continue
                good = [f for f in files if self._readable(cur, f)]
                if len(good) == len(files):
                    raise
                if not good:
                    return pd.DataFrame({c: pd.Series(dtype=TEXT_COLUMNS.get(c, "float64")) for c in columns})
                return cur.execute(sql, [good, *params]).df()
            finally:
                cur.close()
        raise StoreBusyError(f"files of {self.loc.url} kept changing during {READ_ATTEMPTS} reads; try again")

    def _per_run(self, sql: str, params: Sequence, run_ids: Iterable[str], columns: list[str]) -> pd.DataFrame:
        """A ``GROUP BY run_id`` query, computed only for runs whose files changed since the last
        call with the same SQL and parameters; the others come from a cache. The runs list and
        the summary table ask this of every run on every refresh, and ended runs never change."""
        ids = list(dict.fromkeys(run_ids))
        cache = self._per_run_cache.setdefault((sql, tuple(params)), {})
        listed = {run_id: self._run_files(run_id) for run_id in ids}
        todo = [r for r in ids if r not in cache or cache[r][0] != self._signatures.get(r)]
        if todo:
            files = [f for r in todo for f in listed[r]]  # this listing, not a second one
            fresh = self._query(sql, params, todo, columns, files=files).set_index("run_id")
            for run_id in todo:
                row = tuple(fresh.loc[run_id]) if run_id in fresh.index else None
                cache[run_id] = (self._signatures.get(run_id), row)
        rows = [(run_id, *cache[run_id][1]) for run_id in ids if cache[run_id][1] is not None]
        df = pd.DataFrame(rows, columns=columns)
        if df.empty:
            return pd.DataFrame({c: pd.Series(dtype=TEXT_COLUMNS.get(c, "float64")) for c in columns})
        return df

    FRAMES = 1024  # per-run results kept by _per_run_frames (each at most a chart's points)

    def _per_run_frames(self, sql: str, params: Sequence, run_ids: Iterable[str], columns: list[str]) -> pd.DataFrame:
        """Rows of a query that computes each run's rows from that run's files alone (``series``),
        with each run's result kept until its files change: a run that has ended is read once, not
        on every page view or live refresh. Runs come out in run-id order."""
        ids = sorted(dict.fromkeys(run_ids))
        listed = {run_id: self._run_files(run_id) for run_id in ids}
        key = (sql, tuple(params))
        parts: dict[str, pd.DataFrame] = {}
        todo = []
        for run_id in ids:
            hit = self._frames.get((key, run_id))
            if hit is not None and hit[0] == self._signatures.get(run_id):
                self._frames.move_to_end((key, run_id))
                parts[run_id] = hit[1]
            else:
                todo.append(run_id)
        if todo:
            files = [f for r in todo for f in listed[r]]
            fresh = self._query(sql, params, todo, columns, files=files)
            for group, rows in fresh.groupby("run_id", sort=False):
                parts[str(group)] = rows
            for run_id in todo:
                rows = parts.setdefault(run_id, fresh.iloc[0:0])
                self._frames[(key, run_id)] = (self._signatures.get(run_id), rows)
            while len(self._frames) > self.FRAMES:
                self._frames.popitem(last=False)
        frames = [parts[r] for r in ids if not parts[r].empty]
        if not frames:
            return pd.DataFrame({c: pd.Series(dtype=TEXT_COLUMNS.get(c, "float64")) for c in columns})
        return pd.concat(frames, ignore_index=True)

    def _vanished(self, files: list[str]) -> bool:
        if self.loc.remote:
            return any(not self.loc.fs.exists(f) for f in files)
        return any(not os.path.exists(f) for f in files)

    def _readable(self, cur, path: str) -> bool:
        """Whether a file reads whole and has the metrics columns (SCHEMA); a file that does
        not is remembered, so the next listing leaves it out without a failed query first."""
        try:
            cur.execute("SELECT count(*) FROM read_parquet(?)", [path]).fetchall()
            types = dict(
                cur.execute(
                    "SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM read_parquet(?))", [path]
                ).fetchall()
            )
        except duckdb.Error as exc:
            self._unreadable.add(path)
            self._warn_once(f"skipping {path}: unreadable Parquet ({str(exc).splitlines()[0]})")
            return False
        wrong = [
            f"{f.name} ({types.get(f.name, 'missing')})"
            for f in SCHEMA
            if types.get(f.name) not in (TEXT_TYPES if str(f.type) == "string" else NUMBER_TYPES)
        ]
        if wrong:
            self._unreadable.add(path)
            self._warn_once(
                f"skipping {path}: not a lawn-monitor metrics file (columns {', '.join(wrong)}); "
                f"move it out of metrics/"
            )
            return False
        return True

    # --- runs ---------------------------------------------------------------------------------

    def _read_info(self, run_id: str) -> RunInfo:
        """A run's run.json, checked (runinfo.py); each problem is warned about once."""
        rel = f"{run_id}/run.json"
        if not plain_name(run_id):
            return RunInfo(damage=f"{run_id!r} is not a folder name")
        try:
            found = check_run_info(self.loc.read_bytes(rel, limit=RUN_JSON_LIMIT))
        except FileNotFoundError:
            dangling = not self.loc.remote and os.path.islink(Path(self.loc.base) / rel)
            found = RunInfo(
                damage="run.json is a symlink to nothing" if dangling else "no run.json (its data files are read)"
            )
        except (NotAFileError, TooLargeError) as exc:  # a FIFO, a link to /dev/zero, gigabytes
            found = RunInfo(damage=f"run.json is {exc.strerror}")
        except OSError as exc:  # a symlink loop, no permission
            found = RunInfo(damage=f"run.json cannot be read ({exc.strerror or exc})")
        if found.damage:
            self._warn_once(
                f"{self.loc.url}/{run_id}: {found.damage}; listed as damaged, its data still read: "
                f"repair its run.json or remove the folder"
            )
        for problem in found.problems:
            self._warn_once(f"{self.loc.url}/{rel}: {problem}; read as not recorded")
        return found

    def run_info(self, run_id: str) -> dict | None:
        """A run's run.json fields that are usable (runinfo.py: a field of the wrong type is left
        out), or None when there is no usable run.json."""
        found = self._read_info(run_id)
        return found.info if found.info or not found.damage else None

    def _status(self, info: dict, run_id: str | None = None) -> str:
        """The recorded status, or ``stale`` for a ``running`` run whose heartbeat stopped."""
        status = info.get("status", "running")
        if status == "running" and self._silent(run_id or info.get("run_id"), info):
            return "stale"
        return status

    def _silent(self, run_id: str | None, info: dict) -> bool:
        """Whether a ``running`` run's writer has stopped beating for ``stale_after`` seconds.

        Judged on this reader's clocks only, never on a time the writer wrote (another machine's
        clock may be off by minutes): a writer of this machine that no longer exists is silent at
        once; otherwise the silence is how long this RunStore has seen the lock's beat counter
        unchanged (its own monotonic clock), starting, on the first look, from the lock file's
        age by the storage's modification time. A run without a lock file (written by a version
        before locks), or whose lock file is damaged, is judged by its run.json: its writer's
        process (host, pid) when that was one of this machine's, else ``heartbeat_at``.
        """
        record, modified = read_lock(self.loc, run_id) if run_id else (None, None)
        if not run_id or not record or "token" not in record or modified is None:  # no lock, or a damaged one
            self._beats.pop(run_id or "", None)
            return holder_gone(info) or _age_seconds(info.get("heartbeat_at")) > self.stale_after
        if holder_gone(record):
            return True
        beat, now = (record.get("token"), record.get("beat")), time.monotonic()
        seen = self._beats.get(run_id)
        if seen is None or seen[0] != beat:
            age = 0.0 if seen is not None else max(0.0, time.time() - modified)
            seen = self._beats[run_id] = (beat, now - age)
        return now - seen[1] > self.stale_after

    def status(self, run_id: str) -> str | None:
        """One run's status as ``runs()`` shows it (``damaged`` if its run.json is unusable).

        Reads only that run's run.json, so it is cheap enough to poll (the dashboard's live view).
        """
        found = self._read_info(run_id)
        return "damaged" if found.damage else self._status(found.info, run_id)

    @_output
    def runs(self, status: str | Iterable[str] | None = None, **config_filters) -> Frame:
        """One row per run: id, name, status (``stale`` for a silent running run, ``damaged`` for
        an unusable run.json, with the reason in ``damage``), progress, every config key as a
        column, and ``test_acc`` (latest) / ``best_test_acc``.

        Filter by status and by config values, e.g. ``runs(status="running", optimizer="adam")``.
        """
        rows = [self._run_row(run_id) for run_id in self.run_ids()]
        df = pd.DataFrame(rows, columns=None if rows else RUN_COLUMNS)
        if df.empty:
            return df
        df["trial"] = df["trial"].astype("Int64")
        df["best"] = _study_winners(df)
        if status is not None:
            wanted = [status] if isinstance(status, str) else list(status)
            df = df[df["status"].isin(wanted)]
        for key, value in config_filters.items():
            if key not in df.columns:
                return df.iloc[0:0]
            df = df[df[key] == value]
        df = df.drop(columns="_acc").merge(self._test_acc(df), on="run_id", how="left")
        return df.sort_values("created_at", ascending=False, ignore_index=True)

    def _run_row(self, run_id: str) -> dict[str, Any]:
        """The runs() row of one run, from its run.json alone (its accuracy in ``_acc`` when the
        sink kept it there), warning once about temp files a killed writer left."""
        found = self._read_info(run_id)
        info = found.info
        try:
            strays = self.loc.stray_temps(f"{run_id}/metrics", older_than=60.0)
        except OSError:  # metrics/ cannot be listed: _run_files says why when it is read
            strays = []
        for name in strays:
            self._warn_once(
                f"skipping {self.loc.url}/{run_id}/metrics/{name}: a temp file left by a killed "
                f"writer (lawn-monitor compact removes it once the run has ended)"
            )
        total = info.get("total_steps")
        step = info.get("step") or 0
        row = {
            "run_id": run_id,
            "name": info.get("name", run_id),
            "status": "damaged" if found.damage else self._status(info, run_id),
            "damage": found.damage,
            "created_at": info.get("created_at"),
            "heartbeat_at": info.get("heartbeat_at"),
            "ended_at": info.get("ended_at"),
            "step": step,
            "total_steps": total,
            "progress": min(step / total, 1.0) if total else None,
            "study": info.get("study"),
            "trial": info.get("trial"),
            "val_acc": info.get("val_acc"),
            # Kept in run.json by the sink as it writes test/acc rows (None: not recorded
            # there, e.g. by an older version; then read from the Parquet files).
            "_acc": (info["test_acc"], info.get("best_test_acc")) if "test_acc" in info else None,
        }
        for key, value in (info.get("config") or {}).items():
            row.setdefault(key, value)
        return row

    def _test_acc(self, df: pd.DataFrame) -> pd.DataFrame:
        """``test_acc`` (latest) and ``best_test_acc`` of the runs in ``df``: from run.json where
        ``_acc`` has them, else from their Parquet files."""
        known = df["_acc"].notna()
        from_json = pd.DataFrame(
            [(r, *a) for r, a in zip(df.loc[known, "run_id"], df.loc[known, "_acc"])],
            columns=["run_id", "test_acc", "best_test_acc"],
        )
        from_files = self._per_run(
            """SELECT run_id, arg_max(value, (step, wall_time)) AS test_acc, max(value) AS best_test_acc
               FROM read_parquet(?) WHERE metric = 'test/acc' AND layer = '' GROUP BY run_id""",
            [],
            df.loc[~known, "run_id"],
            ["run_id", "test_acc", "best_test_acc"],
        )
        parts = [d for d in (from_json, from_files) if not d.empty]
        acc = pd.concat(parts) if parts else from_files
        return acc.astype({"test_acc": "float64", "best_test_acc": "float64"})

    # --- series -------------------------------------------------------------------------------

    @_output
    def series(
        self,
        run_ids: str | Iterable[str],
        metric: str,
        layer: str = "",
        points: int | None = 1000,
        x: str = "step",
        smooth: float = 0.0,
        with_se: bool = False,
    ) -> Frame:
        """``metric`` at ``layer`` ("" = whole model) for these runs, at most ``points`` rows per run.

        Steps are cut into ``points`` equal buckets per run; each bucket keeps its last value
        (``value``, at its last ``step``) and its ``min`` and ``max`` (NaN left out), so a spike
        survives downsampling. ``x`` is the step, the epoch, or seconds since the run was created
        (``"time"``). ``smoothed`` is TensorBoard's debiased EMA of ``value`` with weight
        ``smooth`` (0 = off). ``points=None`` returns every row. ``with_se`` adds the column
        ``se``: the standard error the estimate was written with (metric ``<metric>_se``, e.g.
        ``gn_trace_se``) at each row's step, NaN where there is none.
        """
        if x not in X_AXES:
            raise ValueError(f"x must be one of {', '.join(X_AXES)}, got {x!r}")
        if points is not None and points < 1:
            raise ValueError(f"points must be at least 1, got {points}")
        ids = _ids(run_ids)
        df = self._per_run_frames(
            """WITH s AS (SELECT run_id, step, epoch, wall_time, value FROM read_parquet(?)
                          WHERE metric = ? AND layer = ?),
                    r AS (SELECT run_id, min(step) AS lo,
                                 greatest(1, ceil((max(step) - min(step) + 1) / ?::DOUBLE))::BIGINT AS width
                          FROM s GROUP BY run_id)
               SELECT run_id, max(step) AS step,
                      arg_max(epoch, (step, wall_time)) AS epoch,
                      arg_max(wall_time, (step, wall_time)) AS wall_time,
                      arg_max(value, (step, wall_time)) AS value,
                      min(value) FILTER (WHERE NOT isnan(value)) AS min,
                      max(value) FILTER (WHERE NOT isnan(value)) AS max
               FROM s JOIN r USING (run_id)
               GROUP BY run_id, (step - lo) // width
               ORDER BY run_id, step""",
            [metric, layer, float(points) if points else float("inf")],
            ids,
            ["run_id", "step", "epoch", "wall_time", "value", "min", "max"],
        ).copy()
        df["x"] = self._x_axis(df, x)
        df["smoothed"] = (
            df.groupby("run_id", sort=False)["value"].transform(lambda v: ema(v, smooth))
            if not df.empty
            else df["value"]
        )
        if not with_se:
            return df[SERIES_COLUMNS]
        # The estimate and its SE are written at the same steps, so their buckets end on the same steps.
        se = RunStore.series.__wrapped__(self, ids, f"{metric}_se", layer, points)[["run_id", "step", "value"]]
        df = df.merge(se.rename(columns={"value": "se"}), on=["run_id", "step"], how="left")
        return df[[*SERIES_COLUMNS, "se"]]

    def _x_axis(self, df: pd.DataFrame, x: str) -> pd.Series:
        """The x column of a series: the step or epoch as floats, or seconds since each run was
        created (``"time"``; the run's first row where its run.json has no creation time)."""
        if x != "time":
            return df[x].astype("float64")
        created = {r: _timestamp((self.run_info(r) or {}).get("created_at")) for r in df["run_id"].unique()}
        start = df["run_id"].map(created)
        return df["wall_time"] - start.fillna(df.groupby("run_id")["wall_time"].transform("min"))

    @_output
    def layers(self, run_id: str, metric: str, points: int | None = 200) -> Frame:
        """``metric`` for every layer of one run, long format (layer, step, value), for a
        (layer x step) heatmap: steps cut into at most ``points`` buckets, labelled by their first
        step, each holding its last value. Layers come in the model's order (run.json ``layers``)."""
        df = self._per_run_frames(
            """WITH s AS (SELECT run_id, layer, step, wall_time, value FROM read_parquet(?)
                          WHERE metric = ? AND layer <> ''),
                    r AS (SELECT min(step) AS lo,
                                 greatest(1, ceil((max(step) - min(step) + 1) / ?::DOUBLE))::BIGINT AS width FROM s),
                    b AS (SELECT run_id, layer, value, step, wall_time, lo + (step - lo) // width * width AS bucket
                          FROM s, r)
               SELECT run_id, layer, bucket AS step, arg_max(value, (step, wall_time)) AS value
               FROM b GROUP BY run_id, layer, bucket""",
            [metric, float(points) if points else float("inf")],
            [run_id],
            ["run_id", "layer", "step", "value"],
        )
        if df.empty:
            return df[["layer", "step", "value"]]
        # Input-to-output order as the Monitor recorded it (model.named_parameters); layers it
        # did not list come after, by name.
        known = (self.run_info(run_id) or {}).get("layers") or []
        rank = {name: i for i, name in enumerate(known)}
        extra = sorted(set(df["layer"]) - set(rank))
        rank.update({name: len(known) + i for i, name in enumerate(extra)})
        df = df.assign(_rank=df["layer"].map(rank)).sort_values(["_rank", "step"], kind="stable")
        return df[["layer", "step", "value"]].reset_index(drop=True)

    def layer_names(self, run_ids: str | Iterable[str], metric: str) -> list[str]:
        """The layers these runs logged ``metric`` for, in model order (run.json ``layers``),
        layers no run.json lists last, by name."""
        ids = _ids(run_ids)
        df = self._query(
            "SELECT DISTINCT layer FROM read_parquet(?) WHERE metric = ? AND layer <> ''", [metric], ids, ["layer"]
        )
        found = set(df["layer"])
        order = [name for run_id in ids for name in (self.run_info(run_id) or {}).get("layers") or []]
        listed = [name for name in dict.fromkeys(order) if name in found]
        return listed + sorted(found - set(listed))

    @_output
    def layer_matrix(self, run_id: str, metric: str, points: int | None = 200) -> Frame:
        """The same as :meth:`layers`, pivoted: one row per layer, one column per step bucket."""
        long = self.layers(run_id, metric, points)
        order = list(dict.fromkeys(long["layer"]))
        return long.pivot(index="layer", columns="step", values="value").reindex(order)

    def metrics(self, run_ids: str | Iterable[str]) -> list[str]:
        """The metric names these runs have written."""
        df = self._query("SELECT DISTINCT metric FROM read_parquet(?) ORDER BY metric", [], _ids(run_ids), ["metric"])
        return df["metric"].tolist()

    def rows(self, run_id: str, per_layer: bool = False) -> pd.DataFrame:
        """Every whole-model row of one run (``per_layer``: every row), ordered by metric, layer,
        step and wall time: what an export to another tracker writes."""
        return self._query(
            """SELECT metric, layer, step, epoch, wall_time, value FROM read_parquet(?)
               WHERE layer = '' OR ? ORDER BY metric, layer, step, wall_time""",
            [per_layer],
            [run_id],
            ["metric", "layer", "step", "epoch", "wall_time", "value"],
        )

    @_output
    def switch_steps(self, run_ids: str | Iterable[str]) -> Frame:
        """The step at which each LAWN run entered its constrained phase (runs without one: none)."""
        return self._query(
            """SELECT run_id, min(step) AS step, min(epoch) AS epoch FROM read_parquet(?)
               WHERE metric = 'phase' AND layer = '' AND value >= 1 GROUP BY run_id ORDER BY run_id""",
            [],
            _ids(run_ids),
            ["run_id", "step", "epoch"],
        )

    # --- tables -------------------------------------------------------------------------------

    @_output
    def summary(
        self,
        metric: str = "test/acc",
        by: Sequence[str] = ("optimizer", "lawn", "batch_size"),
        reduce: str = "final",
        status: str | Iterable[str] | None = "finished",
        **config_filters,
    ) -> Frame:
        """Aggregate the ``final`` (or ``best``: max; ``min``) value of ``metric`` over the seeds
        of each experiment: mean, std, stderr, count, min, max, and the ``seeds`` counted. The
        paper's Table 2 is ``summary("test/acc", by=["dataset", "optimizer", "lawn", "batch_size"])``.

        Only repeats of one experiment are averaged: runs are grouped by ``by`` and by every
        other config key except the seed and the keys of ``not_computed()``. Keys that split a ``by``
        group (runs of one method with 12 and 30 epochs, say) come back as columns after ``by``,
        one row per value, so the table says what differs instead of pooling it. Each seed
        counts once per group: its latest run (by ``created_at``) among those of ``status``.
        A run whose config has no ``seed`` counts as its own seed.
        """
        aggs = {"final": "arg_max(value, (step, wall_time))", "best": "max(value)", "min": "min(value)"}
        if reduce not in aggs:
            raise ValueError(f"reduce must be one of {', '.join(aggs)}, got {reduce!r}")
        by = list(by)
        runs = self.runs(status=status, **config_filters)
        out_cols = [*by, *SUMMARY_COLUMNS]
        if runs.empty or any(k not in runs.columns for k in by):
            return pd.DataFrame(columns=out_cols)
        per_run = self._per_run(
            f"SELECT run_id, {aggs[reduce]} AS value FROM read_parquet(?) "  # one of three literals
            "WHERE metric = ? AND layer = '' GROUP BY run_id",
            [metric],
            runs["run_id"],
            ["run_id", "value"],
        )
        merged = runs.merge(per_run, on="run_id")
        if merged.empty:
            return pd.DataFrame(columns=out_cols)
        group, groups, seed = _seed_groups(merged, by)
        rows = []
        for members in groups:
            first, values = merged.loc[members[0]], merged.loc[members, "value"]
            seeds = sorted({s for s in seed[members] if s != "null"}, key=lambda t: (len(t), t))
            rows.append(
                {
                    **{k: first[k] for k in group},
                    "mean": values.mean(),
                    "std": values.std(),
                    "count": int(values.count()),
                    "min": values.min(),
                    "max": values.max(),
                    "seeds": ",".join(seeds),
                }
            )
        table = pd.DataFrame(rows)
        table["stderr"] = table["std"] / np.sqrt(table["count"])
        try:
            table = table.sort_values(group, kind="stable", ignore_index=True) if group else table
        except TypeError:  # values of mixed types in a column: keep the grouping's order
            pass
        return table[[*group, *SUMMARY_COLUMNS]]

    # --- your own SQL -------------------------------------------------------------------------

    def sql(self, query: str, params: Sequence | None = None, run_ids: Iterable[str] | None = None) -> Frame:
        """Run ``query`` in DuckDB over two views: ``metrics``, every row of the store's runs (or
        of ``run_ids``) read by the live-file rule (each row once, even while a writer compacts:
        see docs/storage.md), with columns run_id, step, epoch, wall_time, layer, metric, value;
        and ``runs``, the table ``runs()`` returns (one row per run, config keys as columns).
        ``params`` fill the query's ``?``. The result comes in the store's ``output`` format.

            store.sql("SELECT run_id, max(value) FROM metrics WHERE metric = 'test/acc' GROUP BY 1")
        """
        ids = None if run_ids is None else _ids(run_ids)
        runs = RunStore.runs.__wrapped__(self)  # pandas, whatever the output format
        if ids is not None and not runs.empty:
            runs = runs[runs["run_id"].isin(ids)]
        for attempt in range(READ_ATTEMPTS):  # as _query: a listing made old by compaction is made again
            files = self.files(ids)
            try:
                return self._sql(query, list(params or []), runs, files)
            except duckdb.Error:
                if not self._vanished(files):
                    raise
                time.sleep(min(0.05 * (attempt + 1), 0.5))
        raise StoreBusyError(f"files of {self.loc.url} kept changing during {READ_ATTEMPTS} reads; try again")

    def _sql(self, query: str, params: list, runs: pd.DataFrame, files: list[str]) -> Frame:
        """One attempt of :meth:`sql` over these files."""
        # A connection of its own: the views are this query's, not those of a query running on
        # another thread (the dashboard shares one store between sessions).
        con = duckdb.connect()
        try:
            self.loc.register(con)
            if files:
                # Each row's run_id from its folder, as in every other query (FILES_BY_FOLDER).
                rel = con.read_parquet(files, filename=True)
                rel.project("* EXCLUDE (filename) REPLACE (string_split(filename, '/')[-3] AS run_id)").create_view(
                    "metrics"
                )
            else:  # an empty store: the view exists, with no rows
                con.execute(
                    "CREATE VIEW metrics AS SELECT * FROM (VALUES (NULL::VARCHAR, NULL::BIGINT, NULL::DOUBLE, "
                    "NULL::DOUBLE, NULL::VARCHAR, NULL::VARCHAR, NULL::DOUBLE)) "
                    "t(run_id, step, epoch, wall_time, layer, metric, value) WHERE false"
                )
            con.register("runs", runs)
            if self.output == "pandas":
                return con.execute(query, params).df()
            # Arrow straight from a relation: from a DB-API result DuckDB would copy the rows (and warn).
            rel = con.sql(query, params=params)
            table = rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.arrow()  # DuckDB 2's name first
            if self.output == "arrow":
                return table
            import polars as pl

            return pl.from_arrow(table)
        finally:
            con.close()


def _seed_groups(merged: pd.DataFrame, by: list[str]) -> tuple[list[str], list[pd.Index], pd.Series]:
    """How summary() groups its runs: the grouping columns (``by`` and any other config key
    that varies within a ``by`` group, but never the seed or a key of ``not_computed()``), each
    group's rows (one per seed: its latest run), and each row's seed ("null" where none)."""
    not_config = set(RUN_COLUMNS) | {"test_acc", "best_test_acc", "value", "seed"} | set(not_computed())
    others = [k for k in merged.columns if k not in not_config and k not in by]
    keys = pd.DataFrame({k: merged[k].map(canonical) for k in [*by, *others]}, index=merged.index)
    keys["_all"] = ""  # one group when ``by`` is empty
    varies = keys.groupby([*by, "_all"])[others].nunique().max() if others else pd.Series(dtype=int)
    group = [*by, *(k for k in others if varies[k] > 1)]
    seed = merged["seed"].map(canonical) if "seed" in merged.columns else pd.Series("null", index=merged.index)
    keys["_seed"] = seed.where(seed != "null", "run " + merged["run_id"])
    # Each seed once per group: its latest run (a rerun replaces its seed, never doubles it).
    order = merged.sort_values(["created_at", "run_id"], na_position="first").index
    latest = keys.loc[order].drop_duplicates([*group, "_all", "_seed"], keep="last").index
    groups = list(keys.loc[latest].groupby([*group, "_all"], sort=False).groups.values())
    return group, groups, seed
