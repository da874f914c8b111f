"""Where a store lives: a local folder, or object storage (``s3://bucket/prefix``) via fsspec.

Both the writer (sink) and the reader (RunStore) go through :class:`Location`, so the atomic-write
rule is in one place:

* local disk: write a temporary name that no reader lists (``.<name>.<nonce>.tmp``), fsync,
  ``os.replace`` into place;
* object storage: upload the object whole (``fs.pipe``); an object store makes an object visible
  only once its upload completes, which is the same guarantee.

It also names the part files (:func:`part_name`, :func:`compact_name`) and decides which of the
files in a ``metrics/`` folder make up a consistent view (:func:`live_files`): the rule that lets
compaction run while a reader reads, with every row seen exactly once.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

PART_RE = re.compile(r"^part-(\d+)-[0-9a-f]+\.parquet$")
COMPACT_RE = re.compile(r"^compact-(\d+)-(\d+)-[0-9a-f]+\.parquet$")
RUN_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
RUN_JSON_LIMIT = 1 << 20  # bytes: a bigger run.json is not one the sink wrote (reading it is refused)
LOCK_LIMIT = 1 << 16  # bytes: the same for writer.lock


class StoreBusyError(RuntimeError):
    """A folder or a query's files kept changing under every attempt to read them."""


class NotAFileError(OSError):
    """A FIFO, device, socket or folder where the store expects a regular file. Never opened for
    reading: a FIFO would block the reader, ``/dev/zero`` would never end."""


class TooLargeError(OSError):
    """A file larger than the reader's limit for it (a run.json of gigabytes is not the sink's)."""


def _kind(mode: int) -> str:
    """What a file that is not a regular file is, in words."""
    for test, words in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a device"),
        (stat.S_ISBLK, "a device"),
    ):
        if test(mode):
            return words
    return "a file" if stat.S_ISREG(mode) else "not a regular file"


def _megabytes(n: int) -> str:
    return f"{n / (1 << 20):g} MB"


def open_regular(path: str, limit: int | None = None) -> int:
    """A read-only descriptor of ``path``, which must be a regular file (of at most ``limit``
    bytes); raises NotAFileError or TooLargeError otherwise. The type is checked before the open
    (a FIFO is never opened) and again on the descriptor (in case the name changed between)."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise NotAFileError(errno.EINVAL, f"{_kind(st.st_mode)}, not a file", path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotAFileError(errno.EINVAL, f"{_kind(st.st_mode)}, not a file", path)
        if limit is not None and st.st_size > limit:
            raise TooLargeError(errno.EFBIG, f"larger than {_megabytes(limit)} ({_megabytes(st.st_size)})", path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_run_id(run_id: object) -> str:
    """A run id the writer may use as a folder name: 1 to 128 letters, digits, ``_ . -``, not
    starting with ``.`` or ``-`` and without ``..``, so it names one folder inside the root and
    never reaches outside it (``../x``), a hidden name or a temp file's. Raises ValueError."""
    if not isinstance(run_id, str) or not RUN_ID_RE.match(run_id) or ".." in run_id:
        raise ValueError(
            f"run id {run_id!r} is not allowed: use 1-128 letters, digits, '_', '.' or '-', "
            f"starting with a letter, digit or '_', without '..' or a path separator"
        )
    return run_id


def plain_name(name: str) -> bool:
    """Whether a reader may take ``name`` as one folder of the root: no separator, not ``.``/``..``
    or hidden. Looser than check_run_id: a folder renamed by hand (``my run (copy)``) is read."""
    return bool(name) and "/" not in name and "\\" not in name and not name.startswith(".")


def is_remote(root: str | os.PathLike) -> bool:
    return "://" in str(root) and not str(root).startswith("file://")


def part_name(seq: int) -> str:
    """One flush: ``part-<seq>-<nonce>.parquet`` (seq counts flushes from 0)."""
    return f"part-{seq:08d}-{secrets.token_hex(3)}.parquet"


def compact_name(lo: int, hi: int) -> str:
    """The rows of parts ``lo..hi`` (inclusive), merged and sorted by (metric, layer, step)."""
    return f"compact-{lo:08d}-{hi:08d}-{secrets.token_hex(3)}.parquet"


def now_iso() -> str:
    """Now, in UTC, as run.json and the lock write times (ISO 8601, milliseconds)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def default_root() -> str:
    """``$LAWN_MONITOR_ROOT`` if set, else ``./runs``."""
    return os.environ.get("LAWN_MONITOR_ROOT", "runs")


@dataclass(frozen=True)
class Segment:
    """A data file in ``metrics/`` and the range of flush numbers whose rows it holds."""

    name: str
    lo: int
    hi: int

    @property
    def compacted(self) -> bool:
        return self.name.startswith("compact-")


def parse(name: str) -> Segment | None:
    """The segment a file name stands for; ``None`` for anything else (temp files, strays)."""
    m = PART_RE.match(name)
    if m:
        seq = int(m.group(1))
        return Segment(name, seq, seq)
    m = COMPACT_RE.match(name)
    if m:
        return Segment(name, int(m.group(1)), int(m.group(2)))
    return None


def live_files(names: list[str]) -> tuple[list[Segment], list[Segment], list[str]]:
    """Split one listing of a ``metrics/`` folder into (live, covered, other).

    Compaction first writes the merged file, then deletes what it merged. So a listing may hold
    both a compacted file and (some of) the files it covers; keeping only segments not covered by
    a wider one gives every flush exactly once, whichever moment the listing was taken. Other
    ``*.parquet`` names (written by hand or by an older version) are returned as-is to be read.
    """
    segments, other = [], []
    for name in names:
        seg = parse(name)
        if seg is not None:
            segments.append(seg)
        elif name.endswith(".parquet") and not name.startswith("."):
            other.append(name)
    # Widest first; a segment is covered when a kept one spans its whole range.
    segments.sort(key=lambda s: (s.lo, -(s.hi - s.lo), s.name))
    live, covered = [], []
    reach = -1
    for seg in segments:
        if seg.hi <= reach:
            covered.append(seg)
        else:
            live.append(seg)
            reach = max(reach, seg.hi)
    return live, covered, other


def contiguous(segments: list[Segment]) -> bool:
    """Whether ``segments`` (sorted by ``lo``) hold every flush from the first to the last."""
    return all(b.lo == a.hi + 1 for a, b in zip(segments, segments[1:], strict=False))


def has_hole(names: list[str]) -> bool:
    """Whether a listing of a ``metrics/`` folder lacks a flush between two it holds, other than
    one set aside as ``<name>.corrupt``: the sign of a listing taken while parts were added (see
    :func:`list_metrics`)."""
    set_aside = [n.removesuffix(".corrupt") for n in names if n.endswith(".parquet.corrupt")]
    return not contiguous(live_files(names + set_aside)[0])


RELISTS = 3  # listings more of a metrics/ folder whose flushes have a hole, before taking it as it is


def list_metrics(loc: Location, folder: str, skipped: list[tuple[str, str]] | None = None) -> dict[str, int]:
    """(name -> size) of a run's ``metrics/`` folder, listed again (up to RELISTS times) while
    a flush is missing between two that it holds.

    A directory listing is not a snapshot: ext4 returns names in hash order, so a listing taken
    while the writer adds parts can hold part 101, written during it, and miss part 100, written
    just before (an object store's paged listing can do the same). Listed again, the missing
    part is there. A hole that stays (a part deleted by hand) is taken as it is.
    """
    for attempt in range(RELISTS + 1):
        found: list[tuple[str, str]] = []
        listing = dict(loc.listdir(folder, found))
        if attempt == RELISTS or not has_hole(list(listing)):
            break
    if skipped is not None:
        skipped.extend(found)
    return listing


class Location:
    """A store root: a local directory or an fsspec URL such as ``s3://bucket/prefix``.

    Paths given to the methods are relative to the root and use ``/``.
    """

    def __init__(self, root: str | os.PathLike, storage_options: dict | None = None) -> None:
        self.url = str(root).rstrip("/") if is_remote(root) else str(root)
        self.remote = is_remote(root)
        if self.remote:
            import fsspec  # only needed for object storage

            self.fs, self.base = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
            self.protocol = self.url.split("://", 1)[0]
        else:
            self.fs, self.base, self.protocol = None, str(root), "file"

    def __str__(self) -> str:
        return self.url

    def _full(self, rel: str) -> str:
        return f"{self.base}/{rel}" if rel else self.base

    # --- reading ------------------------------------------------------------------------------

    def check_root(self) -> None:
        """Raise ``NotADirectoryError`` if the root is a file (a common slip: ``--root run.json``)."""
        if not self.remote:
            p = Path(self.base)
            if p.exists() and not p.is_dir():
                raise NotADirectoryError(f"run root {p} is a file: pass a directory as --root")

    def exists(self) -> bool:
        return self.fs.exists(self.base) if self.remote else Path(self.base).is_dir()

    def run_dirs(self) -> list[str]:
        """Names of the sub-folders that hold a ``run.json``."""
        if self.remote:
            try:
                found = self.fs.glob(f"{self.base}/*/run.json", refresh=True)
            except FileNotFoundError:
                return []
            return sorted(p.rsplit("/", 2)[-2] for p in found)
        root = Path(self.base)
        if not root.is_dir():
            return []
        return sorted(p.parent.name for p in root.glob("*/run.json"))

    def run_folders(self, skipped: list[tuple[str, str]] | None = None) -> list[str]:
        """Names of the sub-folders that are runs: those with a ``run.json``, and those with data
        files (``metrics/*.parquet``) but no run.json (a reader lists those as damaged). Raises
        OSError if the root itself cannot be listed. An entry that cannot be looked into (a
        symlink loop, no permission) is added to ``skipped`` as (name, why)."""
        if self.remote:
            try:
                found = self.fs.glob(f"{self.base}/*/run.json", refresh=True)
                found += self.fs.glob(f"{self.base}/*/metrics/*.parquet", refresh=True)
            except FileNotFoundError:
                return []
            return sorted({p[len(self.base) :].lstrip("/").split("/", 1)[0] for p in found})
        if not os.path.isdir(self.base):
            return []
        names, odd = [], []
        with os.scandir(self.base) as it:
            for entry in it:
                if not plain_name(entry.name):
                    continue
                try:
                    if _is_run_folder(entry):
                        names.append(entry.name)
                except OSError as exc:
                    odd.append((entry.name, f"cannot be read ({exc.strerror or exc})"))
        if skipped is not None:
            skipped.extend(odd)
        return sorted(names)

    def listdir(self, rel: str, skipped: list[tuple[str, str]] | None = None) -> list[tuple[str, int]]:
        """(name, size) of the regular files directly in ``rel``; empty if it does not exist.
        Raises OSError if ``rel`` cannot be listed (a symlink loop, no permission, not a folder). A data file
        name (``*.parquet``) that is not a readable regular file (a FIFO, a folder, a socket, a
        symlink loop or to nothing) is left out, and added to ``skipped`` as (name, why)."""
        if self.remote:
            try:
                entries = self.fs.ls(self._full(rel), detail=True, refresh=True)
            except FileNotFoundError:
                return []
            return [(e["name"].rsplit("/", 1)[-1], int(e.get("size") or 0)) for e in entries if e["type"] == "file"]
        # A file deleted before we stat it means the listing is already out of date (compaction
        # replaced it), so take a new one rather than return a listing with a hole in it. (A
        # listing is no snapshot either way: see list_metrics.)
        for _ in range(100):
            try:
                return self._scan(self._full(rel), skipped)
            except FileNotFoundError:
                if not os.path.isdir(self._full(rel)):
                    return []
            except NotADirectoryError:  # say what it is instead: a FIFO, a file
                kind = _kind(os.stat(self._full(rel)).st_mode)
                raise NotADirectoryError(errno.ENOTDIR, f"{kind}, not a folder", self._full(rel)) from None
        raise StoreBusyError(f"{self._full(rel)} kept changing while being listed")

    @staticmethod
    def _scan(path: str, skipped: list[tuple[str, str]] | None) -> list[tuple[str, int]]:
        """One pass of listdir; FileNotFoundError when an entry vanished during it."""
        out, odd = [], []
        with os.scandir(path) as it:
            for entry in it:
                size, why = _regular_size(entry)
                if size is not None:
                    out.append((entry.name, size))
                elif entry.name.endswith(".parquet") and not entry.name.startswith("."):
                    odd.append((entry.name, why))
        if skipped is not None:
            skipped.extend(odd)
        return out

    def stray_temps(self, rel: str, older_than: float) -> list[str]:
        """Temp files (``.<name>.tmp``) in ``rel`` not touched for ``older_than`` seconds: left by
        a writer killed mid-write (a live write takes milliseconds). Object stores have none."""
        if self.remote:
            return []
        now, found = time.time(), []
        try:
            with os.scandir(self._full(rel)) as it:
                for entry in it:
                    if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                        try:
                            if now - entry.stat().st_mtime > older_than:
                                found.append(entry.name)
                        except FileNotFoundError:
                            continue
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(found)

    def read_bytes(self, rel: str, limit: int | None = None) -> bytes:
        """A whole file. Raises NotAFileError for a FIFO, device, socket or folder (never opened),
        TooLargeError past ``limit`` bytes, and what the system raises otherwise (missing, no
        permission, a symlink loop)."""
        full = self._full(rel)
        if self.remote:
            if limit is not None and self.fs.size(full) > limit:
                raise TooLargeError(errno.EFBIG, f"larger than {_megabytes(limit)}", full)
            return self.fs.cat_file(full)
        with os.fdopen(open_regular(full, limit), "rb") as f:
            data = f.read() if limit is None else f.read(limit + 1)
        if limit is not None and len(data) > limit:  # grew since it was checked
            raise TooLargeError(errno.EFBIG, f"larger than {_megabytes(limit)}", full)
        return data

    def head_tail(self, rel: str, size: int, n: int = 4) -> tuple[bytes, bytes]:
        """The first and last ``n`` bytes of a file of known ``size`` (Parquet's magic check)."""
        if self.remote:
            full = self._full(rel)
            return self.fs.cat_file(full, start=0, end=n), self.fs.cat_file(full, start=size - n, end=size)
        with os.fdopen(open_regular(self._full(rel)), "rb") as f:
            head = f.read(n)
            f.seek(-n, os.SEEK_END)
            return head, f.read(n)

    def query_path(self, rel: str) -> str:
        """The path DuckDB reads (``s3://...`` goes through the fsspec filesystem registered by
        :meth:`register`)."""
        return f"{self.protocol}://{self._full(rel)}" if self.remote else self._full(rel)

    def register(self, con) -> None:
        """Let a DuckDB connection read this location (object storage through fsspec; DuckDB's
        own httpfs extension would need a download, which these machines cannot do)."""
        if self.remote:
            con.register_filesystem(self.fs)

    # --- writing ------------------------------------------------------------------------------

    def makedirs(self, rel: str) -> None:
        if not self.remote:  # object stores have no folders
            Path(self._full(rel)).mkdir(parents=True, exist_ok=True)

    def write_atomic(self, rel: str, data: bytes, durable: bool = True) -> None:
        """Write a whole file so that readers see the old content, the new, or nothing.

        ``durable`` also fsyncs the file before the rename and the folder after it, so the file
        survives a power cut, not only a killed process. Part files skip it (a reader skips an
        empty or truncated file anyway, and it costs milliseconds per flush); files that replace
        others (compacted segments, run.json) keep it: compaction deletes the parts it merged
        only once the merged file is on disk.
        """
        full = self._full(rel)
        if self.remote:
            self.fs.pipe_file(full, data)
            return
        path = Path(full)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if durable:
            _fsync_dir(path.parent)

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        """Create a file only if no file has that name; False if one has. On disk ``O_EXCL``
        (atomic, also on NFSv3+); on object storage a conditional put (``If-None-Match: *``,
        which S3 and moto honour)."""
        full = self._full(rel)
        if self.remote:
            try:
                self.fs.pipe_file(full, data, mode="create")
            except FileExistsError:
                return False
            return True
        try:
            fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, data)
            os.fsync(fd)
        except BaseException:  # a full disk: leave no empty file behind
            os.close(fd)
            os.unlink(full)
            raise
        os.close(fd)
        return True

    def modified(self, rel: str) -> float | None:
        """When the storage last saw the file written (seconds since the Unix epoch, by the
        storage's clock: the local kernel's, or the object store's ``LastModified``); None if
        there is no such file."""
        full = self._full(rel)
        try:
            if not self.remote:
                return os.stat(full).st_mtime
            info = self.fs.info(full, refresh=True)
        except FileNotFoundError:
            return None
        stamp = info.get("LastModified") or info.get("mtime")
        return stamp.timestamp() if hasattr(stamp, "timestamp") else float(stamp) if stamp else None

    def rename(self, rel: str, new_rel: str) -> None:
        """Move a file to a new name (on disk atomically; on object storage copy, then delete)."""
        if self.remote:
            self.fs.mv(self._full(rel), self._full(new_rel))
        else:
            os.replace(self._full(rel), self._full(new_rel))

    def sync(self, rels: list[str], folder: str) -> None:
        """fsync files written with ``durable=False`` (those still there) and their folder, so
        that they survive a power cut too; a no-op on object storage."""
        if self.remote:
            return
        for rel in rels:
            try:
                fd = os.open(self._full(rel), os.O_RDONLY)
            except FileNotFoundError:  # merged into a compacted file, which was written durably
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(self._full(folder)))

    def remove(self, rel: str) -> None:
        try:
            if self.remote:
                self.fs.rm_file(self._full(rel))
            else:
                os.unlink(self._full(rel))
        except FileNotFoundError:
            pass


def _is_run_folder(entry: os.DirEntry) -> bool:
    """Whether a folder of the root holds a run.json (of any kind: a reader says what is wrong
    with it) or data files. Raises OSError for an entry that cannot be looked into."""
    if entry.is_symlink():
        os.stat(entry.path)  # a loop raises here (is_dir would say False without a word)
    if not entry.is_dir():
        return False
    try:
        os.lstat(os.path.join(entry.path, "run.json"))
        return True
    except FileNotFoundError:
        pass
    try:
        with os.scandir(os.path.join(entry.path, "metrics")) as it:
            return any(e.name.endswith(".parquet") and not e.name.startswith(".") for e in it)
    except (FileNotFoundError, NotADirectoryError):
        return False


def _regular_size(entry: os.DirEntry) -> tuple[int | None, str]:
    """(size, "") for a regular file (symlinks followed), else (None, what it is instead).
    Raises FileNotFoundError if the entry itself is gone."""
    try:
        st = entry.stat()
    except FileNotFoundError:
        if entry.is_symlink():
            return None, "a symlink to nothing"
        raise
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or exc})"
    if stat.S_ISREG(st.st_mode):
        return st.st_size, ""
    return None, f"{_kind(st.st_mode)}, not a file"


def _fsync_dir(path: Path) -> None:
    """Make a folder's entries (a rename, a new file) survive a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
