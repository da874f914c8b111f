"""What every launcher shares.

- ``plan``: which runs of a grid the store already has. A run is the same run when its name and
  its config (all but what a resume may change: root, device, threads, ...) are the same; a grid
  cell whose run ended (``finished``, ``diverged``, ``pruned``) is skipped, one whose run stopped
  (``interrupted``, ``failed``, or ``running`` with a dead writer: ``stale``) continues it from
  its last checkpoint, and one whose run another live process still writes is left to it.
- ``run_one``: what a worker (a Ray task, a Slurm array task) runs for one run.
- ``Watch``: the launching terminal's lines: where each run started, how it ended.

None of this imports ray or submitit: the local launcher uses it too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lawn_monitor.lock import LOCK_TIMEOUT, read_lock, stale_reason
from lawn_monitor.storage import Location

from .. import signals
from ..config import TrainConfig
from ..train import CHECKPOINT, RESUME_MAY_CHANGE, USER_ERRORS, train

ENDED = ("finished", "diverged", "pruned")  # a re-launched sweep skips these; it continues the others


@dataclass
class Outcome:
    name: str
    status: str  # a run status, or "not started" / "error" (bad input: no run was made)
    test_acc: float | None = None
    run_dir: str | None = None


@dataclass
class Job:
    """One cell of the grid as a launcher runs it: a new run, or one to continue (``cfg.resume``)."""

    index: int
    total: int
    cfg: TrainConfig
    run_id: str | None = None  # known up front when continuing; found in the store for a new run
    before: tuple = ()  # (host, pid) its run.json named before this launch
    started: float = field(default_factory=time.monotonic)
    announced: bool = False

    @property
    def place(self) -> str:
        return f"[{self.index + 1}/{self.total}] {self.cfg.name}"


def config_key(values: dict[str, Any]) -> str:
    """A run's identity: its config without what a resume may change, as canonical JSON."""
    return json.dumps({k: v for k, v in values.items() if k not in RESUME_MAY_CHANGE}, sort_keys=True, default=str)


def _cfg_key(cfg: TrainConfig) -> str:
    return config_key(json.loads(json.dumps(dataclasses.asdict(cfg), default=str)))


def _read_infos(loc: Location, run_ids: list[str]) -> dict[str, dict]:
    def read(run_id: str) -> dict:
        try:
            return json.loads(loc.read_bytes(f"{run_id}/run.json"))
        except (OSError, ValueError):
            return {}

    with ThreadPoolExecutor(16 if loc.remote else 1) as pool:
        return dict(zip(run_ids, pool.map(read, run_ids), strict=True))


def prior_runs(loc: Location, configs: list[TrainConfig]) -> dict[str, list[dict]]:
    """The store's runs of these configs, by config key, oldest first."""
    from ..config import config_from_record

    names = {cfg.name for cfg in configs}
    ids = loc.run_dirs() if loc.exists() else []
    found: dict[str, list[dict]] = {}
    for run_id, info in _read_infos(loc, ids).items():
        if info.get("name") not in names or not isinstance(info.get("config"), dict):
            continue
        try:
            key = _cfg_key(config_from_record(info["config"]))
        except (TypeError, ValueError):  # a config this trainer cannot read: not one of ours
            continue
        found.setdefault(key, []).append({**info, "run_id": run_id})
    for runs in found.values():
        runs.sort(key=lambda info: str(info.get("created_at")))
    return found


def _live_writer(loc: Location, run_id: str) -> str | None:
    """Who still writes the run, or None when nobody does (its lock is gone or stale)."""
    record, modified = read_lock(loc, run_id)
    if record is None or modified is None or stale_reason(record, modified, LOCK_TIMEOUT):
        return None
    return f"{record.get('host')} (pid {record.get('pid')})"


def plan(configs: list[TrainConfig], root: str, fresh: bool = False) -> tuple[list[Job], dict[int, Outcome], list[str]]:
    """The jobs to launch, the outcomes of the cells that need no job (ended, or still running
    elsewhere) and one line for each decision that is not "start a new run"."""
    loc = Location(root)
    prior = {} if fresh else prior_runs(loc, configs)
    jobs, done, notes = [], {}, []
    for i, cfg in enumerate(configs):
        place = f"[{i + 1}/{len(configs)}] {cfg.name}"
        runs = prior.get(_cfg_key(cfg), [])
        ended = [r for r in runs if r.get("status") in ENDED]
        if ended:
            r = ended[-1]
            done[i] = Outcome(cfg.name, r["status"], r.get("test_acc"), f"{loc.url}/{r['run_id']}")
            notes.append(f"{place}: {r['status']} already ({loc.url}/{r['run_id']}): skipped")
            continue
        last = runs[-1] if runs else None
        if last is not None and last.get("status") == "running" and (holder := _live_writer(loc, last["run_id"])):
            done[i] = Outcome(cfg.name, "running", run_dir=f"{loc.url}/{last['run_id']}")
            notes.append(f"{place}: still being written by {holder}: left to it")
            continue
        if last is not None and loc.modified(f"{last['run_id']}/{CHECKPOINT}") is not None:
            was = "stale" if last.get("status") == "running" else last.get("status")
            jobs.append(
                Job(
                    i,
                    len(configs),
                    dataclasses.replace(cfg, resume=last["run_id"]),
                    last["run_id"],
                    (last.get("host"), last.get("pid")),
                )
            )
            notes.append(f"{place}: {was} at step {last.get('step', '?')}: continuing {last['run_id']}")
            continue
        if last is not None:
            notes.append(f"{place}: {last['run_id']} stopped before its first checkpoint: starting it anew")
        jobs.append(Job(i, len(configs), cfg))
    return jobs, done, notes


# --- on the worker -------------------------------------------------------------------------------


def run_one(cfg: TrainConfig, catch_signals: bool = False) -> dict[str, Any]:
    """Train one run on a worker and say how it ended. ``catch_signals``: SIGINT and SIGTERM end
    it ``interrupted`` (a process of its own: a Slurm array task); a Ray task is stopped by
    ``ray.cancel``, which raises KeyboardInterrupt in it."""
    where = {"host": socket.gethostname(), "pid": os.getpid()}
    try:
        with worker_signals(catch_signals):
            result = train(cfg)
    except USER_ERRORS as exc:
        return {**where, "status": "error", "error": str(exc)}
    except KeyboardInterrupt as exc:
        run_dir = getattr(exc, "run_dir", None)
        return {**where, "status": "interrupted" if run_dir else "not started", "run_id": _name(run_dir)}
    except Exception as exc:  # noqa: BLE001 - its traceback is in run.json; the launcher goes on
        return {**where, "status": "failed", "error": f"{type(exc).__name__}: {exc}", "run_id": _name(exc)}
    return {**where, "status": result.status, "run_id": result.run_id, "test_acc": result.test_acc}


@contextmanager
def worker_signals(catch: bool) -> Iterator[None]:
    """``catch``: SIGINT and SIGTERM (``scancel``), and SIGUSR2 (submitit's warning before Slurm's
    time limit) end the run ``interrupted``; otherwise nothing changes (a Ray task)."""
    if not catch:
        # ray.cancel interrupts the task through Python's SIGINT handler; a worker started from a
        # process that ignored SIGINT (a shell's background job) inherited SIG_IGN and would not stop.
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) in (
            signal.SIG_IGN,
            signal.SIG_DFL,
        ):
            signal.signal(signal.SIGINT, signal.default_int_handler)
        yield
        return
    with signals.interrupt_on_signals():
        usr2 = getattr(signal, "SIGUSR2", None)
        previous = signal.signal(usr2, signal.getsignal(signal.SIGTERM)) if usr2 else None
        try:
            yield
        finally:
            if usr2:
                signal.signal(usr2, previous)


def _name(obj: Any) -> str | None:
    run_dir = getattr(obj, "run_dir", obj)
    return None if run_dir is None else str(run_dir).rstrip("/").rsplit("/", 1)[-1]


# --- on the launching terminal -------------------------------------------------------------------


class Watch:
    """Finds each job's run in the store and prints where it started; prints how each ended."""

    def __init__(self, root: str, jobs: list[Job]) -> None:
        self.loc = Location(root)
        self.known = set(self.loc.run_dirs()) if self.loc.exists() else set()
        self.lock = threading.Lock()
        self.jobs = jobs
        self.every = 2.0 if self.loc.remote else 0.5
        self.next = 0.0

    def say(self, line: str, err: bool = False) -> None:
        with self.lock:
            stream = sys.stderr if err else sys.stdout
            stream.write(line + "\n")
            stream.flush()

    def info(self, run_id: str) -> dict:
        return _read_infos(self.loc, [run_id])[run_id]

    def poll(self, active: list[Job]) -> None:
        """Say "started" for every active job whose run has appeared (or been taken up again)."""
        waiting = [j for j in active if not j.announced]
        if not waiting or time.monotonic() < self.next:
            return
        self.next = time.monotonic() + self.every
        infos = self.find([j for j in waiting if j.run_id is None])
        infos.update(_read_infos(self.loc, [j.run_id for j in waiting if j.run_id and j.run_id not in infos]))
        for job in waiting:
            if job.run_id is None:
                continue
            info = infos.get(job.run_id) or self.info(job.run_id)
            where = (info.get("host"), info.get("pid"))
            if info.get("status") != "running" or where == job.before or where[1] is None:
                continue
            job.announced = True
            how = f"continuing from step {info.get('step', 0)}" if job.cfg.resume else "started"
            self.say(f"{job.place}: {how} on {where[0]} (pid {where[1]}), writing to {self.loc.url}/{job.run_id}")

    def find(self, jobs: list[Job]) -> dict[str, dict]:
        """Give each of these jobs its run, where the store now has a new one by its name; the
        run.json of every new run read."""
        if not jobs:
            return {}
        new = [r for r in self.loc.run_dirs() if r not in self.known]
        infos = _read_infos(self.loc, new)
        for job in jobs:
            mine = [r for r in new if infos[r].get("name") == job.cfg.name and infos[r].get("pid")]
            if mine and mine[0] not in self.known:
                job.run_id = mine[0]
                self.known.add(job.run_id)
        return infos

    def ended(self, job: Job, result: dict | None, lost: str | None = None) -> Outcome:
        """The job's outcome and its line. ``result`` is what ``run_one`` returned; None when
        its worker died (``lost`` says how): the run then shows as the store sees it."""
        result = result or {}
        if lost is not None and job.run_id is None:  # it died before a look at the store saw its run
            self.find([job])
        run_id = result.get("run_id") or job.run_id
        if not job.announced and run_id and result.get("host"):  # it ran between two looks at the store
            job.announced = True
            how = "continued" if job.cfg.resume else "started"
            self.say(f"{job.place}: {how} on {result['host']} (pid {result['pid']}), wrote to {self.loc.url}/{run_id}")
        status = result.get("status")
        if lost is not None:
            status = "not started"
            if run_id:
                info = self.info(run_id)
                status = "stale" if info.get("status") == "running" else info.get("status", "not started")
        host = f" on {result['host']}" if result.get("host") else ""
        acc = result.get("test_acc")
        tail = "" if acc is None else f", test_acc {acc:.4f}"
        if lost is not None:
            tail += f" ({lost}{'; launch the same sweep again to continue it' if status == 'stale' else ''})"
        if result.get("error"):
            tail += f": {result['error']}"
        self.say(f"{job.place}: {status}{host} after {time.monotonic() - job.started:.0f} s{tail}")
        return Outcome(job.cfg.name, status, acc, f"{self.loc.url}/{run_id}" if run_id else None)


class Stop:
    """SIGINT/SIGTERM on the launching process: recorded here, acted on by the launcher's loop."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.since = 0.0
        self.repeated = False
        self.previous: dict = {}

    def handle(self, signum: int, frame) -> None:
        if self.signum is None:
            self.signum, self.since = signum, time.monotonic()
        elif time.monotonic() - self.since > 2.0:  # not the usual echo (terminal, then make's trap)
            self.repeated = True

    def __enter__(self) -> Stop:
        self.previous = {s: signal.getsignal(s) for s in signals.SIGNALS}
        for s in signals.SIGNALS:
            signal.signal(s, self.handle)
        return self

    def __exit__(self, *exc) -> None:
        if self.signum is not None:
            signals.ignore_signals()  # stopping: a second signal must not cut the summary short
        else:
            for s, handler in self.previous.items():
                signal.signal(s, handler)

    @property
    def code(self) -> int | None:
        return None if self.signum is None else 128 + self.signum


def project_dir() -> Path:
    return Path(__file__).resolve().parent.parent.parent
