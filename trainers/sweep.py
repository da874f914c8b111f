"""Run a small grid: optimizers x LAWN on/off x batch sizes x seeds, one run after another or
N at a time.

    lawn-monitor sweep --dataset digits --model cnn --optimizers sgd,adam --lawn both \
        --batch-sizes 64,256 --seeds 0,1 --epochs 4 --free-epochs 1
    lawn-monitor sweep --recipes 'cifar10-*' --seeds 3 --data-root data
    lawn-monitor sweep --optimizers sgd,adam --lawn both --parallel 4      # all four at once

With ``--recipes`` the grid is every matching recipe (trainers/recipes/, fnmatch) x seeds, and
other flags override the recipes. ``--seeds 3`` means seeds 0, 1, 2; ``--seeds 0,5`` those two.
Every run is a normal ``train`` run in the same store; a run that fails or diverges is recorded
as such and the sweep goes on.

``--parallel 1`` (the default) trains the runs one after another in this process, with their
progress bars. ``--parallel N`` keeps N runs going at once, each its own ``lawn-monitor train``
process with one torch thread (so N runs share the cores instead of fighting over them), and
prints a line when a run starts, where it writes, when it ends, and every half minute how far
each one is; each line of a run's own output is prefixed with its place in the sweep.

Ctrl-C or SIGTERM stops the sweep: no further run starts, and every run already training ends
``interrupted`` with what it logged kept; the sweep waits until each has written its status and
exits 130 (SIGINT) or 143 (SIGTERM).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lawn_monitor.cli import OneLineParser
from lawn_monitor.optim import OPTIMIZERS
from lawn_monitor.storage import Location

from . import signals
from .config import FLAGS, ConfigError, TrainConfig, add_config_arguments, config_from_flags, flag_values, given_fields
from .recipe import config_from, match_recipes
from .train import USER_ERRORS, _check_root, train

STATUS_SECS = 30.0  # --parallel: how often the sweep says how far each run is
POLL_SECS = 0.2
PROJECT_DIR = Path(__file__).resolve().parent.parent  # holds trainers/ and lawn_monitor/


def _csv(kind):
    def parse(text: str):
        try:
            return [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"expected a comma-separated list of {kind.__name__}, got {text!r}") from None

    parse.__name__ = f"list of {kind.__name__}"
    return parse


def seed_list(text: str) -> list[int]:
    """``3`` -> [0, 1, 2] (a count); ``0,5`` or ``7,`` -> those seeds."""
    try:
        if "," not in text:
            count = int(text)
            if count < 1:
                raise ValueError
            return list(range(count))
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"expected a count of seeds (3) or a comma-separated list (0,1,2), got {text!r}") from None


seed_list.__name__ = "seeds"


def recipe_grid(pattern: str, given: dict, seeds: list[int]) -> list[TrainConfig]:
    """Every recipe matching ``pattern`` x seeds (seed outermost), flags in ``given`` on top."""
    names = match_recipes(pattern)
    return [config_from({**given, "seed": seed}, name).resolved() for seed in seeds for name in names]


def grid(
    base: TrainConfig, optimizers: list[str], lawn: str, batch_sizes: list[int], seeds: list[int]
) -> list[TrainConfig]:
    """The sweep's configs, in the order they run (seed outermost, so a partial sweep covers all methods)."""
    for name in optimizers:
        if name not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {name!r} in --optimizers: choose from {', '.join(OPTIMIZERS)}")
    lawn_values = {"both": [False, True], "on": [True], "off": [False]}[lawn]
    configs = []
    for seed, batch_size, name, use_lawn in itertools.product(seeds, batch_sizes, optimizers, lawn_values):
        cfg = dataclasses.replace(base, optimizer=name, lawn=use_lawn, batch_size=batch_size, seed=seed, name=None)
        configs.append(cfg.resolved())  # validate every cell before the first run starts
    return configs


def config_argv(cfg: TrainConfig, skip: tuple[str, ...] = ()) -> list[str]:
    """The ``lawn-monitor train`` flags that rebuild ``cfg`` exactly: every value given
    explicitly (so a recipe named in it cannot bring back a value the sweep overrode), booleans
    as their flag where they differ from the default; none for the fields in ``skip``."""
    argv = []
    for name, value in flag_values(cfg).items():
        flag = FLAGS[name]
        if value is None or name in skip:
            continue
        if isinstance(value, bool):
            if value != flag.default:
                argv.append(flag.flag)
            continue
        argv += [flag.flag, repr(value) if isinstance(value, float) else str(value)]
    return argv


def build_parser(prog: str = "lawn-monitor sweep") -> OneLineParser:
    parser = OneLineParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--recipes",
        help="run the recipes matching this pattern, e.g. 'cifar10-*' or 'cpu-*' "
        "(instead of --optimizers/--lawn/--batch-sizes)",
    )
    parser.add_argument("--optimizers", type=_csv(str), help="comma-separated (default: sgd,adam)")
    # dest lawn_mode: "lawn" is a TrainConfig field, and given_fields() must not mistake this for it.
    parser.add_argument(
        "--lawn", dest="lawn_mode", choices=("both", "on", "off"), help="LAWN off, on, or both (default)"
    )
    parser.add_argument("--batch-sizes", type=_csv(int), help="comma-separated (default: 64)")
    parser.add_argument(
        "--seeds",
        type=seed_list,
        default=[0],
        help="a count (3: seeds 0,1,2) or a comma-separated list (default: seed 0)",
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=1,
        metavar="N",
        help="train N runs at once, one process and one torch thread each (default: 1, "
        "one after another in this process)",
    )
    add_config_arguments(parser, skip=("optimizer", "lawn", "batch_size", "seed", "name", "recipe", "resume"))
    return parser


@dataclass
class Outcome:
    name: str
    status: str  # a run status, or "not started" / "error" (bad input: no run was made)
    test_acc: float | None = None
    run_dir: str | None = None


# --- one after another, in this process ----------------------------------------------------------


def run_in_process(configs: list[TrainConfig]) -> tuple[list[Outcome], int | None]:
    """Today's sweep: each run in turn in this process. Returns the outcomes and, if the sweep
    stopped early, its exit code."""
    outcomes = []
    try:
        with signals.interrupt_on_signals():
            for i, cfg in enumerate(configs, 1):
                print(f"[{i}/{len(configs)}] {cfg.name}", flush=True)
                try:
                    result = train(cfg)
                    outcomes.append(Outcome(cfg.name, result.status, result.test_acc, str(result.run_dir)))
                except USER_ERRORS as exc:
                    print(f"lawn-monitor sweep: error: {exc}", file=sys.stderr)
                    return outcomes, 2
                except KeyboardInterrupt as exc:
                    run_dir = getattr(exc, "run_dir", None)
                    outcomes.append(
                        Outcome(
                            cfg.name,
                            "interrupted" if run_dir else "not started",
                            run_dir=str(run_dir) if run_dir else None,
                        )
                    )
                    raise
                except Exception as exc:  # noqa: BLE001 - recorded in run.json; the sweep goes on
                    print(f"  failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                    outcomes.append(Outcome(cfg.name, "failed"))
                if signals.received():  # came while a run was writing its status: start no more
                    raise signals.Interrupted(signals.received())
    except KeyboardInterrupt as exc:
        current = outcomes[-1] if outcomes else None
        stopped = f"{current.name} is marked 'interrupted'; " if current and current.status == "interrupted" else ""
        print(
            f"sweep interrupted by {signals.signal_name(exc)}: {stopped}"
            f"{len(configs) - len(outcomes)} more runs not started",
            file=sys.stderr,
        )
        outcomes += [Outcome(cfg.name, "not started") for cfg in configs[len(outcomes) :]]
        return outcomes, signals.exit_code(exc)
    return outcomes, None


# --- N at a time, one process each ------------------------------------------------------------


@dataclass
class Child:
    """One run of a parallel sweep: a ``lawn-monitor train`` process."""

    place: str  # "[2/4] adam-b64-s0", the prefix of its lines
    cfg: TrainConfig
    proc: subprocess.Popen
    started: float
    run_id: str | None = None
    signalled: bool = False
    pumps: list[threading.Thread] = field(default_factory=list)


class ParallelSweep:
    """Keeps ``parallel`` runs going until the grid is done or a signal stops it.

    Runs are processes, not threads: each has its own interpreter (no GIL shared between four
    training loops) and its own signal handling, so SIGINT/SIGTERM forwarded to it ends exactly
    that run as ``interrupted`` (trainers/signals.py); a run that fails or diverges ends its own
    process and nothing else. The children stay in this process group, so a kill of the group
    takes them too; the signal they get twice (terminal and forwarded) is ignored the second time.
    """

    def __init__(self, configs: list[TrainConfig], parallel: int) -> None:
        self.configs = configs
        self.parallel = parallel
        self.loc = Location(_check_root(configs[0].root))
        self.pids = {run_id: 0 for run_id in self._run_dirs()}  # run folder -> the pid its run.json names
        self.signum: int | None = None  # the signal that stops the sweep
        self.stopping_since = 0.0
        self.repeated = False  # another signal came well after the first
        self.user_error = False  # a run stopped on bad input (exit 2): start no more
        self.lock = threading.Lock()
        self.started = time.monotonic()

    def _run_dirs(self) -> list[str]:
        return self.loc.run_dirs() if self.loc.exists() else []

    def _info(self, run_id: str) -> dict:
        try:
            return json.loads(self.loc.read_bytes(f"{run_id}/run.json"))
        except (OSError, ValueError):  # not written yet (the folder comes first)
            return {}

    def _find_runs(self, children: list[Child]) -> None:
        """Match new run folders to children by the pid their run.json records."""
        waiting = {c.proc.pid: c for c in children if c.run_id is None}
        if not waiting:
            return
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

    def start(self, index: int) -> Child:
        cfg = self.configs[index]
        # No progress bars: four of them would garble the terminal; the sweep reports instead.
        cfg = dataclasses.replace(cfg, progress=False, threads=cfg.threads or 1)
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(cfg.threads),
            "MKL_NUM_THREADS": str(cfg.threads),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_DIR), os.environ.get("PYTHONPATH")])),
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "lawn_monitor.cli", "train", *config_argv(cfg)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        place = f"[{index + 1}/{len(self.configs)}] {cfg.name}"
        child = Child(place, cfg, proc, time.monotonic())
        for pipe, err in ((proc.stdout, False), (proc.stderr, True)):
            pump = threading.Thread(target=self._pump, args=(place, pipe, err), daemon=True)
            pump.start()
            child.pumps.append(pump)
        self.say(f"{place}: started (pid {proc.pid})")
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
            status = "killed"
        self.user_error |= child.run_id is None and rc == 2
        outcome = Outcome(
            child.cfg.name, status, info.get("test_acc"), f"{self.loc.url}/{child.run_id}" if child.run_id else None
        )
        acc = "" if outcome.test_acc is None else f", test_acc {outcome.test_acc:.4f}"
        self.say(f"{child.place}: {status} after {time.monotonic() - child.started:.0f} s{acc} (exit {rc})")
        return outcome

    def report(self, running: list[Child], done: int, queued: int) -> None:
        parts = []
        for child in running:
            info = self._info(child.run_id) if child.run_id else {}
            total, step = info.get("total_steps"), info.get("step") or 0
            parts.append(f"{child.cfg.name} {100 * step / total:.0f}%" if total else f"{child.cfg.name} starting")
        self.say(
            f"sweep, {time.monotonic() - self.started:.0f} s: {done} of {len(self.configs)} ended; "
            f"training: {', '.join(parts) or 'none'}; waiting to start: {queued}"
        )

    def _on_signal(self, signum: int, frame) -> None:
        # Only records it: the main loop forwards it (it knows every child, even one started a
        # moment ago) and prints; printing here could interleave with a line being written.
        if self.signum is None:
            self.signum, self.stopping_since = signum, time.monotonic()
        elif time.monotonic() - self.stopping_since > 2.0:  # not the usual echo (terminal, then make's trap)
            self.repeated = True

    def _forward(self, running: dict[int, Child]) -> None:
        """Pass the signal on to every run not yet told. A child that has not created its run is
        still starting Python and may not handle signals yet: SIGTERM ends it quietly (SIGINT
        would print a KeyboardInterrupt traceback), and there is nothing of it to mark."""
        for child in running.values():
            if not child.signalled:
                child.proc.send_signal(self.signum if child.run_id else signal.SIGTERM)
                child.signalled = True

    def run(self) -> tuple[list[Outcome], int | None]:
        outcomes: dict[int, Outcome] = {}
        running: dict[int, Child] = {}
        queue = list(range(len(self.configs)))
        previous = {s: signal.getsignal(s) for s in signals.SIGNALS}
        for s in signals.SIGNALS:
            signal.signal(s, self._on_signal)
        next_report = time.monotonic() + STATUS_SECS
        announced = False
        try:
            while queue or running:
                while queue and len(running) < self.parallel and self.signum is None and not self.user_error:
                    index = queue.pop(0)
                    running[index] = self.start(index)
                self._find_runs(list(running.values()))
                if self.signum is not None:
                    if not announced:
                        announced = True
                        self.say(
                            f"sweep: {signal.Signals(self.signum).name}: stopping {len(running)} runs (each "
                            f"ends 'interrupted', what it logged kept); {len(queue)} not started",
                            err=True,
                        )
                    self._forward(running)
                    if self.repeated:
                        self.repeated = False
                        self.say(
                            "sweep: still waiting for "
                            + ", ".join(c.cfg.name for c in running.values())
                            + " to write their status",
                            err=True,
                        )
                if self.user_error and queue:
                    self.say(
                        "sweep: a run stopped on bad input (above); starting no more, letting the "
                        f"{len(running)} running ones finish",
                        err=True,
                    )
                if self.signum is not None or self.user_error:
                    outcomes.update({i: Outcome(self.configs[i].name, "not started") for i in queue})
                    queue = []
                for index, child in list(running.items()):
                    if child.proc.poll() is not None:
                        outcomes[index] = self.finish(running.pop(index))
                if time.monotonic() >= next_report and running:
                    self.report(list(running.values()), len(outcomes), len(queue))
                    next_report = time.monotonic() + STATUS_SECS
                time.sleep(POLL_SECS)
        finally:
            if self.signum is not None:
                signals.ignore_signals()  # stopping: a second signal must not cut the summary short
            else:
                for s, handler in previous.items():
                    signal.signal(s, handler)
        code = 128 + self.signum if self.signum is not None else 2 if self.user_error else None
        return [outcomes[i] for i in range(len(self.configs))], code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.parallel < 1:
            raise ConfigError(f"--parallel must be at least 1 (runs at once), got {args.parallel}")
        if args.recipes:
            grid_flags = [
                f
                for f, v in (
                    ("--optimizers", args.optimizers),
                    ("--lawn", args.lawn_mode),
                    ("--batch-sizes", args.batch_sizes),
                )
                if v is not None
            ]
            if grid_flags:
                raise ConfigError(f"{', '.join(grid_flags)} cannot be combined with --recipes: the recipes set them")
            configs = recipe_grid(args.recipes, given_fields(args), args.seeds)
        else:
            configs = grid(
                config_from_flags(given_fields(args)),
                args.optimizers or ["sgd", "adam"],
                args.lawn_mode or "both",
                args.batch_sizes or [64],
                args.seeds,
            )
        if args.parallel > 1:
            _check_root(configs[0].root)
    except ConfigError as exc:
        print(f"lawn-monitor sweep: error: {exc}", file=sys.stderr)
        return 2
    parallel = min(args.parallel, len(configs))
    if parallel > 1:
        print(f"sweep: {len(configs)} runs, {parallel} at a time (one process and one torch thread each)", flush=True)
        outcomes, code = ParallelSweep(configs, parallel).run()
    else:
        print(f"sweep: {len(configs)} runs", flush=True)
        outcomes, code = run_in_process(configs)
    if outcomes:
        width = max(len(o.name) for o in outcomes)
        for o in outcomes:
            acc = "n/a" if o.test_acc is None else f"{o.test_acc:.4f}"
            print(f"  {o.name:<{width}}  {o.status:<11} test_acc={acc}" + (f"  {o.run_dir}" if o.run_dir else ""))
    if code is not None:
        return code
    return 0 if all(o.status == "finished" for o in outcomes) else 3


if __name__ == "__main__":
    sys.exit(main())
