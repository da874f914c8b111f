"""One writer per run: the lock file ``<root>/<run_id>/writer.lock``.

Two processes writing one run would interleave two experiments in it, or (with the same part
numbers) hide half of each other's rows. So whatever writes a run's files takes its lock first:
the Monitor's sink when it opens a run, ``--resume`` when it reopens one, and
``lawn-monitor compact`` for the time it compacts one. The lock is a small JSON file (host, pid,
a random token, when it was taken, a beat counter) created only if no such file exists: with
``O_EXCL`` on disk, with a conditional put (``If-None-Match: *``) on object storage, so exactly
one of two processes starting together gets it. The other fails at once with
:class:`RunLockedError`, one line naming the holder.

The holder rewrites the file every ``HEARTBEAT_SECS`` from a timer thread, whatever the training
loop is doing (a long evaluation writes no rows but still beats), and checks on each beat that
the file still carries its token. A lock is stale, and is taken over with a warning, when its
holder is a process of this machine that no longer exists, or when the storage has not seen the
file rewritten for ``timeout`` seconds (its holder died on another machine). Ages are read from
the storage's modification time on the reader's clock, never from the time the holder wrote into
the file, so a holder whose clock is off cannot make its lock look fresh or stale.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
import warnings

from .storage import LOCK_LIMIT, Location, now_iso

LOCK_NAME = "writer.lock"
HEARTBEAT_SECS = 5.0  # how often a holder rewrites its lock
LOCK_TIMEOUT = 120.0  # seconds without a rewrite after which a lock on another machine is stale


class RunLockedError(RuntimeError):
    """Another live process holds the run's lock (or took it over from this one)."""


def pid_namespace() -> str:
    """This process's pid namespace: two containers may share a host name but not their pids."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def read_lock(loc: Location, run_id: str) -> tuple[dict | None, float | None]:
    """The run's lock record and when the storage last saw it written; (None, None) if unlocked.
    A lock file that is not a small JSON object (being created this instant, or damaged: garbage,
    a FIFO, a link to /dev/zero) reads as ``{}``, without blocking on it."""
    rel = f"{run_id}/{LOCK_NAME}"
    modified = loc.modified(rel)
    if modified is None:
        return None, None
    try:
        record = json.loads(loc.read_bytes(rel, limit=LOCK_LIMIT))
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError, RecursionError):
        record = {}
    return (record if isinstance(record, dict) else {}), modified


def describe(record: dict) -> str:
    """``host:pid since <time>``: who holds a lock, for an error message."""
    if not record.get("host"):
        return "an unknown process (its lock file is unreadable)"
    return f"{record['host']}:{record.get('pid')} since {record.get('started_at')}"


def holder_gone(record: dict) -> bool:
    """True when the holder was a process of this machine that no longer exists (exact: no
    timeout needed). False for a live process, or one on another machine."""
    if record.get("host") != socket.gethostname() or record.get("pid_ns") != pid_namespace():
        return False
    pid = record.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, another user's
        return False
    return False


def stale_reason(record: dict, modified: float, timeout: float) -> str | None:
    """Why a lock may be taken over, or None while its holder may still be writing."""
    if holder_gone(record):
        return f"process {record.get('pid')} no longer exists"
    age = time.time() - modified
    if age > timeout:
        return f"its lock was last rewritten {age:.0f} s ago (timeout {timeout:.0f} s)"
    return None


class RunLock:
    """The lock of one run, held by this process from :meth:`acquire` to :meth:`release`.

    Args:
        loc: the store root.
        run_id: the run.
        purpose: ``write``, ``resume`` or ``compact``; shown to whoever finds the run locked.
        timeout: a lock not rewritten for this long (by the storage's clock) is stale.
        heartbeat_secs: how often the holder rewrites it (default ``HEARTBEAT_SECS``).
    """

    def __init__(
        self,
        loc: Location,
        run_id: str,
        purpose: str = "write",
        timeout: float = LOCK_TIMEOUT,
        heartbeat_secs: float | None = None,
    ) -> None:
        heartbeat_secs = HEARTBEAT_SECS if heartbeat_secs is None else heartbeat_secs
        if heartbeat_secs * 2 >= timeout:
            raise ValueError(f"lock timeout ({timeout} s) must be more than twice the heartbeat ({heartbeat_secs} s)")
        self.loc, self.run_id, self.purpose = loc, run_id, purpose
        self.rel = f"{run_id}/{LOCK_NAME}"
        self.timeout, self.heartbeat_secs = timeout, heartbeat_secs
        self.token = secrets.token_hex(8)
        self.beat = 0
        self.started_at = now_iso()
        self.lost: str | None = None  # set by a beat that found another holder's token
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> bytes:
        return json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "pid_ns": pid_namespace(),
                "token": self.token,
                "purpose": self.purpose,
                "started_at": self.started_at,
                "beat": self.beat,
                "heartbeat_at": now_iso(),
            }
        ).encode()

    def acquire(self) -> RunLock:
        """Take the lock, or raise :class:`RunLockedError` naming its live holder."""
        self.loc.makedirs(self.run_id)
        for _ in range(50):
            if self.loc.create_exclusive(self.rel, self._record()):
                self._thread = threading.Thread(target=self._beat_loop, name=f"lock-{self.run_id}", daemon=True)
                self._thread.start()
                return self
            record, modified = read_lock(self.loc, self.run_id)
            if record is None or modified is None:  # released since: try again
                continue
            if not record and time.time() - modified < 2.0:  # created this instant, content coming
                time.sleep(0.02)
                continue
            reason = stale_reason(record, modified, self.timeout)
            if reason is None:
                doing = "compacted" if record.get("purpose") == "compact" else "written"
                raise RunLockedError(
                    f"run {self.run_id} is being {doing} by {describe(record)}; "
                    f"wait for it to end, or pass another run id"
                )
            warnings.warn(f"run {self.run_id}: taking over the lock of {describe(record)}: {reason}", stacklevel=3)
            self._remove_stale(record)
        raise RunLockedError(f"run {self.run_id}: its lock kept changing hands; try again")

    def _remove_stale(self, record: dict) -> None:
        """Remove the stale lock ``record``, and only that one (another process may be taking
        it over at the same moment and have created a fresh lock already)."""
        if self.loc.remote:  # no atomic rename: a beat of the loser reports the lost lock
            self.loc.remove(self.rel)
            return
        aside = f"{self.rel}.{self.token}.stale"
        try:
            self.loc.rename(self.rel, aside)  # atomic: of two takers, one moves a given file
        except FileNotFoundError:
            return
        try:
            data = self.loc.read_bytes(aside, limit=LOCK_LIMIT)
            moved = json.loads(data)
        except (OSError, ValueError, RecursionError):  # the damaged lock it was
            data, moved = b"", {}
        if not isinstance(moved, dict):
            moved = {}
        if moved.get("token") != record.get("token"):  # a fresh lock of another taker: put it back
            self.loc.create_exclusive(self.rel, data)
        self.loc.remove(aside)

    def _beat_loop(self) -> None:
        while not self._stop.wait(self.heartbeat_secs):
            try:
                self.heartbeat()
            except OSError as exc:  # storage hiccup: the next beat tries again
                warnings.warn(f"run {self.run_id}: could not rewrite its lock ({exc})", stacklevel=1)
            if self.lost:
                return

    def heartbeat(self) -> None:
        """Rewrite the lock with the next beat, after checking it is still ours."""
        record, _ = read_lock(self.loc, self.run_id)
        if record is None or record.get("token") != self.token:
            self.lost = (
                f"run {self.run_id}: this process lost its lock to "
                f"{describe(record) if record else 'nobody (the lock file was removed)'}; "
                f"another process may be writing the run"
            )
            return
        self.beat += 1
        self.loc.write_atomic(self.rel, self._record(), durable=False)

    def check(self) -> None:
        """Raise :class:`RunLockedError` if a beat found the lock taken over."""
        if self.lost:
            raise RunLockedError(self.lost)

    def release(self) -> None:
        """Stop beating and remove the lock, if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        record, _ = read_lock(self.loc, self.run_id)
        if record is not None and record.get("token") == self.token:
            self.loc.remove(self.rel)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
