"""``--launcher local``: the runs on this machine, one after another in this process
(``--parallel 1``) or N at a time, each its own ``lawn-monitor train`` process.

With ``--parallel N`` each run gets one torch thread (so N runs share the cores instead of
fighting over them), and the sweep prints a line when a run starts, where it writes, when it
ends, and every half minute how far each one is; each line of a run's own output is prefixed
with its place in the sweep.

Ctrl-C or SIGTERM stops the sweep: no further run starts, and every run already training ends
``interrupted`` with what it logged kept; the sweep waits until each has written its status and
exits 130 (SIGINT) or 143 (SIGTERM).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from lawn_monitor.storage import Location

from .. import signals
from ..config import FLAGS, ConfigError, TrainConfig, flag_values
from ..train import RESUME_MAY_CHANGE, USER_ERRORS, check_root, train
from .common import Job, Outcome, Stop, project_dir

STATUS_SECS = 30.0  # --parallel: how often the sweep says how far each run is
POLL_SECS = 0.2


def config_argv(cfg: TrainConfig, skip: tuple[str, ...] = ()) -> list[str]:
    """The ``lawn-monitor train`` flags that rebuild ``cfg`` exactly: every value given
    explicitly (so a recipe named in it cannot bring back a value the sweep overrode), booleans
    as their flag where they differ from the default; none for the fields in ``skip``. For a run
    to continue (``cfg.resume``) only the flags a resume may change."""
    argv = []
    for name, value in flag_values(cfg).items():
        flag = FLAGS[name]
        if value is None or name in skip or (cfg.resume and name not in RESUME_MAY_CHANGE):
            continue
        if isinstance(value, bool):
            if value != flag.default:
                argv.append(flag.flag)
            continue
        argv += [flag.flag, repr(value) if isinstance(value, float) else str(value)]
    return argv


# --- one after another, in this process ----------------------------------------------------------


def run_in_process(jobs: list[Job]) -> tuple[dict[int, Outcome], int | None]:
    """Each run in turn in this process. Returns the outcomes by grid place and, if the sweep
    stopped early, its exit code."""
    outcomes: dict[int, Outcome] = {}
    try:
        with signals.interrupt_on_signals():
            for job in jobs:
                cfg = job.cfg
                print(f"{job.place}" + (f": continuing {cfg.resume}" if cfg.resume else ""), flush=True)
                try:
                    result = train(cfg)
                    outcomes[job.index] = Outcome(cfg.name, result.status, result.test_acc, str(result.run_dir))
                except USER_ERRORS as exc:
                    print(f"lawn-monitor sweep: error: {exc}", file=sys.stderr)
                    return outcomes, 2
                except KeyboardInterrupt as exc:
                    run_dir = getattr(exc, "run_dir", None)
                    status = "interrupted" if run_dir else "not started"
                    outcomes[job.index] = Outcome(cfg.name, status, run_dir=str(run_dir) if run_dir else None)
                    raise
                except Exception as exc:  # noqa: BLE001 - recorded in run.json; the sweep goes on
                    print(f"  failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                    outcomes[job.index] = Outcome(cfg.name, "failed")
                if signals.received():  # came while a run was writing its status: start no more
                    raise signals.Interrupted(signals.received())
    except KeyboardInterrupt as exc:
        current = outcomes[max(outcomes)] if outcomes else None
        stopped = f"{current.name} is marked 'interrupted'; " if current and current.status == "interrupted" else ""
        left = [job for job in jobs if job.index not in outcomes]
        print(
            f"sweep interrupted by {signals.signal_name(exc)}: {stopped}{len(left)} more runs not started",
            file=sys.stderr,
        )
        outcomes.update({job.index: Outcome(job.cfg.name, "not started") for job in left})
        return outcomes, signals.exit_code(exc)
    return outcomes, None


# --- N at a time, one process each ------------------------------------------------------------


@dataclass
class Child:
    """One run of a parallel sweep: a ``lawn-monitor train`` process."""

    job: Job
    proc: subprocess.Popen
    started: float
    run_id: str | None = None
    signalled: bool = False
    pumps: list[threading.Thread] = field(default_factory=list)

    @property
    def place(self) -> str:
        return self.job.place

    @property
    def cfg(self) -> TrainConfig:
        return self.job.cfg


class ParallelSweep:
    """Keeps ``parallel`` runs going until the jobs are done or a signal stops it.

    Runs are processes, not threads: each has its own interpreter (no GIL shared between four
    training loops) and its own signal handling, so SIGINT/SIGTERM forwarded to it ends exactly
    that run as ``interrupted`` (trainers/signals.py); a run that fails or diverges ends its own
    process and nothing else. The children stay in this process group, so a kill of the group
    takes them too; the signal they get twice (terminal and forwarded) is ignored the second time.
    """

    def __init__(self, jobs: list[Job], parallel: int, nice: int = 0) -> None:
        self.jobs = jobs
        self.nice = nice
        self.total = jobs[0].total if jobs else 0
        self.parallel = parallel
        self.loc = Location(check_root(jobs[0].cfg.root))
        self.pids = {run_id: 0 for run_id in self._run_dirs()}  # run folder -> the pid its run.json names
        self.stop = Stop()
        self.announced = False
        self.user_error = False  # a run stopped on bad input (exit 2): start no more
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self.outcomes: dict[int, Outcome] = {}
        self.running: dict[int, Child] = {}
        self.queue = list(jobs)

    def _run_dirs(self) -> list[str]:
        return self.loc.run_dirs() if self.loc.exists() else []

    def _info(self, run_id: str) -> dict:
        try:
            return json.loads(self.loc.read_bytes(f"{run_id}/run.json"))
        except (OSError, ValueError):  # not written yet (the folder comes first)
            return {}

    def _find_runs(self, children: list[Child]) -> None:
        """Match new run folders to children by the pid their run.json records (a run being
        continued keeps its folder: its run.json names the child's pid once it has taken it up)."""
        waiting = {c.proc.pid: c for c in children if c.run_id is None}
        if not waiting:
            return
        for child in [c for c in waiting.values() if c.cfg.resume]:
            if self._info(child.cfg.resume).get("pid") == child.proc.pid:
                child.run_id = child.cfg.resume
                self.say(f"{child.place}: continuing {self.loc.url}/{child.run_id}")
        for run_id in self._run_dirs():
            if run_id in self.pids:  # from before this sweep, or matched already
                continue
            pid = self._info(run_id).get("pid")
            if pid is None:  # its run.json is not written yet: look again next time
                continue
            self.pids[run_id] = pid
            child = waiting.get(pid)
            if child is not None:
                child.run_id = run_id
                self.say(f"{child.place}: writing to {self.loc.url}/{run_id}")

    def say(self, line: str, err: bool = False) -> None:
        with self.lock:
            stream = sys.stderr if err else sys.stdout
            stream.write(line + "\n")
            stream.flush()

    def _pump(self, place: str, pipe, err: bool) -> None:
        for line in pipe:
            self.say(f"  {place} | {line.rstrip()}", err)
        pipe.close()

    def start(self, job: Job) -> Child:
        # No progress bars: four of them would garble the terminal; the sweep reports instead.
        cfg = dataclasses.replace(job.cfg, progress=False, threads=job.cfg.threads or 1)
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(cfg.threads),
            "MKL_NUM_THREADS": str(cfg.threads),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(project_dir()), os.environ.get("PYTHONPATH")])),
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "lawn_monitor.cli", "train", *config_argv(cfg)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        # The child is still starting Python: its one thread now is the one that starts the rest.
        lower_priority(self.nice, proc.pid)
        child = Child(job, proc, time.monotonic())
        for pipe, err in ((proc.stdout, False), (proc.stderr, True)):
            pump = threading.Thread(target=self._pump, args=(job.place, pipe, err), daemon=True)
            pump.start()
            child.pumps.append(pump)
        self.say(f"{job.place}: started on this machine (pid {proc.pid})")
        return child

    def finish(self, child: Child) -> Outcome:
        for pump in child.pumps:
            pump.join(timeout=5)
        self._find_runs([child])
        rc = child.proc.returncode
        info = self._info(child.run_id) if child.run_id else {}
        status = info.get("status")
        if child.run_id is None:
            status = "error" if rc == 2 else "not started" if rc in (130, 143) or rc < 0 else "failed"
        elif status == "running":  # the process died without writing its end (SIGKILL, OOM)
            status = "stale"
        self.user_error |= child.run_id is None and rc == 2
        outcome = Outcome(
            child.cfg.name, status, info.get("test_acc"), f"{self.loc.url}/{child.run_id}" if child.run_id else None
        )
        acc = "" if outcome.test_acc is None else f", test_acc {outcome.test_acc:.4f}"
        self.say(f"{child.place}: {status} after {time.monotonic() - child.started:.0f} s{acc} (exit {rc})")
        return outcome

    def report(self) -> None:
        parts = []
        for child in self.running.values():
            info = self._info(child.run_id) if child.run_id else {}
            total, step = info.get("total_steps"), info.get("step") or 0
            parts.append(f"{child.cfg.name} {100 * step / total:.0f}%" if total else f"{child.cfg.name} starting")
        self.say(
            f"sweep, {time.monotonic() - self.started:.0f} s: {len(self.outcomes)} of {len(self.jobs)} ended; "
            f"training: {', '.join(parts) or 'none'}; waiting to start: {len(self.queue)}"
        )

    def _forward(self) -> None:
        """Pass the signal on to every run not yet told. A child that has not created its run is
        still starting Python and may not handle signals yet: SIGTERM ends it quietly (SIGINT
        would print a KeyboardInterrupt traceback), and there is nothing of it to mark."""
        for child in self.running.values():
            if not child.signalled:
                child.proc.send_signal(self.stop.signum if child.run_id else signal.SIGTERM)
                child.signalled = True

    def _on_stop(self) -> None:
        """After a signal: say so once, pass it on, and say who is still writing on a repeat."""
        if not self.announced:
            self.announced = True
            self.say(
                f"sweep: {signal.Signals(self.stop.signum).name}: stopping {len(self.running)} runs (each "
                f"ends 'interrupted', what it logged kept); {len(self.queue)} not started",
                err=True,
            )
        self._forward()
        if self.stop.repeated:
            self.stop.repeated = False
            names = ", ".join(c.cfg.name for c in self.running.values())
            self.say(f"sweep: still waiting for {names} to write their status", err=True)

    def _drop_queue(self) -> None:
        if self.user_error and self.queue:
            self.say(
                "sweep: a run stopped on bad input (above); starting no more, letting the "
                f"{len(self.running)} running ones finish",
                err=True,
            )
        self.outcomes.update({job.index: Outcome(job.cfg.name, "not started") for job in self.queue})
        self.queue = []

    def _tick(self) -> None:
        """One pass of the loop: start what may start, react to a signal, collect ended runs."""
        while self.queue and len(self.running) < self.parallel and self.stop.signum is None and not self.user_error:
            job = self.queue.pop(0)
            self.running[job.index] = self.start(job)
        self._find_runs(list(self.running.values()))
        if self.stop.signum is not None:
            self._on_stop()
        if self.stop.signum is not None or self.user_error:
            self._drop_queue()
        for index, child in list(self.running.items()):
            if child.proc.poll() is not None:
                self.outcomes[index] = self.finish(self.running.pop(index))

    def run(self) -> tuple[dict[int, Outcome], int | None]:
        next_report = time.monotonic() + STATUS_SECS
        with self.stop:
            while self.queue or self.running:
                self._tick()
                if time.monotonic() >= next_report and self.running:
                    self.report()
                    next_report = time.monotonic() + STATUS_SECS
                time.sleep(POLL_SECS)
        code = self.stop.code if self.stop.code is not None else 2 if self.user_error else None
        return self.outcomes, code


def launch(jobs: list[Job], parallel: int, nice: int = 0) -> tuple[dict[int, Outcome], int | None]:
    if parallel > 1:
        print(f"sweep: {len(jobs)} runs, {parallel} at a time (one process and one torch thread each)", flush=True)
        return ParallelSweep(jobs, parallel, nice).run()
    lower_priority(nice)
    return run_in_process(jobs)


# --- CPU priority ---------------------------------------------------------------------------------
# A sweep on a laptop or a shared node takes every core; the dashboard watching it (and the
# browser drawing it) then waits its turn behind the trainers. ``--nice N`` makes the runs yield:
# an idle dashboard costs them nothing, a busy one is served first.

MAX_NICE = 19


def check_nice(nice: int, launcher: str) -> None:
    """ConfigError for a ``--nice`` this launcher or system cannot apply."""
    if nice == 0:
        return
    if not 0 < nice <= MAX_NICE:
        raise ConfigError(f"--nice must be 1-{MAX_NICE} (how much to lower the runs' CPU priority), got {nice}")
    if launcher != "local":
        raise ConfigError(f"--nice is for --launcher local: {launcher} places runs on its own workers")
    if not hasattr(os, "setpriority"):
        raise ConfigError("--nice needs a Unix system (os.setpriority); leave it out here")


def _tids(pid: int | None = None) -> list[int]:
    """The threads of a process (Linux: /proc/<pid>/task), or just the process elsewhere."""
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid or 'self'}/task")]
    except OSError:
        return [pid or 0]


def lower_priority(nice: int, pid: int | None = None) -> None:
    """Lower the CPU priority of a process (this one by default) by ``nice``: each of its threads
    on Linux, where a priority is per thread (threads it starts later take their creator's)."""
    if nice == 0:
        return
    for tid in _tids(pid):
        try:
            os.setpriority(os.PRIO_PROCESS, tid, min(MAX_NICE, os.getpriority(os.PRIO_PROCESS, tid) + nice))
        except ProcessLookupError:  # a thread that ended meanwhile
            continue
