"""Tune a method's hyper-parameters on the validation split: one Optuna study per method, every
trial a normal run in the store (its run.json tagged with ``study`` and ``trial``).

    lawn-monitor tune --method adam-lawn --dataset mnist1d --model mlp --epochs 20 --trials 30
    lawn-monitor tune --method sgd --dataset digits --model cnn --epochs 10 --trials 20 --parallel 2
    lawn-monitor tune --method adamw --trials 20 --pruner median --root s3://bucket/runs \\
        --storage postgresql://user@db/studies
    lawn-monitor tune --show                     # every study in the storage, with its best trial
    lawn-monitor tune --show mnist1d-mlp-adam-lawn-b32-e20

The objective is the *final* validation accuracy of a trial's run (``val/acc`` after its last
epoch; a diverged run scores 0). Test accuracy is recorded beside it and never used to choose.
``--trials N`` is the number of finished (complete or pruned) trials the study should hold: run
the same command again after a stop and it carries on where the study stands. Trials left
running by a process that died are marked failed and queued again with the same parameters
(at once for a dead process on this machine, after a missed heartbeat for one elsewhere).

Storage: Optuna's RDB storage, by default ``sqlite:///<root>/studies.sqlite3`` beside the runs;
``--storage URL`` takes any database URL SQLAlchemy knows (needed when the root is ``s3://``).
``--parallel N`` starts N worker processes on the study (one torch thread each); other machines
pointed at the same ``--storage`` and ``--study`` join it too. See docs/tuning.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the retry below still applies
    fcntl = None  # type: ignore[assignment]

import optuna
from optuna.trial import FrozenTrial, TrialState

from lawn_monitor.cli import OneLineParser
from lawn_monitor.storage import default_root, is_remote

from . import signals
from .config import ConfigError, TrainConfig, add_config_arguments, config_from_record, given_fields
from .launch import add_launcher_arguments
from .launch.study import launch_study
from .optimizers import OPTIMIZERS
from .recipe import config_from
from .sweep import PROJECT_DIR, config_argv
from .train import USER_ERRORS, _alive, train

STUDIES_FILE = "studies.sqlite3"  # the default storage, in the store's root
HEARTBEAT_SECS = 30  # a running trial's heartbeat; one silent for GRACE_SECS is failed and queued again
GRACE_SECS = 120
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
SKIPPED_FLAGS = ("optimizer", "lawn", "name", "resume")  # train's flags that tune sets itself (the method, the trial)


class WorkerError(RuntimeError):
    """A --parallel worker process did not end well; it said why on its own stderr."""


@dataclass(frozen=True)
class Method:
    """A method to tune: the inner optimizer, LAWN or not, and its search space."""

    optimizer: str
    lawn: bool
    lr: tuple[float, float]  # peak LR, searched on a log scale
    weight_decay: tuple[float, float] | None  # log scale, and 0 as a choice of its own; None: fixed at 0
    about: str


# Adam-type steps are ~lr per coordinate, SGD's are lr * gradient: their LR ranges differ by
# decades. Weight decay: L2 (torch's SGD and Adam weight_decay, added to the gradient) in one
# range, AdamW's decoupled decay (multiplied by the LR each step) in a wider one.
SGD_LR, ADAM_LR = (1e-3, 1.0), (1e-4, 3e-2)
L2, DECOUPLED = (1e-5, 1e-2), (1e-3, 0.5)
METHODS: dict[str, Method] = {
    "sgd": Method("sgd", False, SGD_LR, L2, "SGD, momentum 0.9, L2 weight decay"),
    "sgd-lawn": Method("sgd", True, SGD_LR, L2, "SGD-LAWN: L2 weight decay in the free phase"),
    "adam": Method("adam", False, ADAM_LR, None, "Adam without weight decay"),
    "adam-l2": Method("adam", False, ADAM_LR, L2, "Adam with torch's weight_decay: L2 added to the gradient"),
    "adamw": Method("adamw", False, ADAM_LR, DECOUPLED, "AdamW: decoupled weight decay"),
    "adam-lawn": Method("adam", True, ADAM_LR, L2, "Adam-LAWN: L2 weight decay in the free phase"),
}
FREE_SHARES = (0.05, 0.1, 0.2, 0.4)  # LAWN's fixed free phases, as shares of the epochs (and "auto")
WARMUP_SHARE = 0.1  # warm-up: up to this share of the epochs (after the switch for LAWN)
LAWN_LR_SCALE = (0.1, 3.0)  # LAWN's peak LR after the switch, relative to the free phase's (log scale)


def method_spec(method: str) -> Method:
    """A method by name: one of METHODS, or any optimizer the trainer offers (``adamp``) or its
    LAWN form (``adamp-lawn``), searched around that optimizer's defaults."""
    if method in METHODS:
        return METHODS[method]
    optimizer = method.removesuffix("-lawn")
    if optimizer not in OPTIMIZERS:
        named = sorted({*METHODS, *OPTIMIZERS, *(f"{o}-lawn" for o in OPTIMIZERS)})
        raise ConfigError(f"unknown method {method!r}: choose from {', '.join(named)}")
    spec = OPTIMIZERS[optimizer]
    decay = (spec.weight_decay / 30, spec.weight_decay * 10) if spec.weight_decay > 0 else None
    return Method(optimizer, method != optimizer, (spec.lr / 30, spec.lr * 10), decay, f"{method} around its defaults")


def method_config(method: str, base: TrainConfig) -> TrainConfig:
    """``base`` set up for ``method`` (optimizer, LAWN, weight decay 0 where the method has none),
    before any searched value is drawn."""
    spec = method_spec(method)
    cfg = dataclasses.replace(base, optimizer=spec.optimizer, lawn=spec.lawn, name=None, resume=None)
    if spec.weight_decay is None:
        cfg.weight_decay = 0.0
    return cfg


def study_name(base: TrainConfig, method: str) -> str:
    """The default study name: data set, model, method, batch size and epochs."""
    return f"{base.dataset}-{base.model}-{method}-b{base.batch_size}-e{base.epochs}"


def free_choices(epochs: int) -> list[float | str]:
    return ["auto", *sorted({round(epochs * share, 3) for share in FREE_SHARES})]


def suggest(trial: optuna.Trial, method: str, start: TrainConfig) -> TrainConfig:
    """The trial's config: ``start`` (method_config's) with the searched values drawn."""
    spec = method_spec(method)
    cfg = dataclasses.replace(start)
    cfg.lr = trial.suggest_float("lr", *spec.lr, log=True)
    if spec.weight_decay is not None:
        use = trial.suggest_categorical("weight_decay_on", [True, False])
        cfg.weight_decay = trial.suggest_float("weight_decay", *spec.weight_decay, log=True) if use else 0.0
    cfg.warmup_epochs = trial.suggest_float("warmup_epochs", 0.0, WARMUP_SHARE * cfg.epochs)
    if spec.lawn:
        cfg.free_epochs = trial.suggest_categorical("free_epochs", free_choices(cfg.epochs))
        cfg.lawn_lr_scale = trial.suggest_float("lawn_lr_scale", *LAWN_LR_SCALE, log=True)
        if cfg.free_epochs == "auto":
            cap = cfg.auto_max_epochs if cfg.auto_max_epochs is not None else min(10.0, cfg.epochs / 2)
            cfg.auto_max_epochs, cfg.auto_min_epochs = cap, min(cfg.auto_min_epochs, cap)
    cfg.name = f"{trial.study.study_name}-t{trial.number}"
    return cfg.resolved()


def make_objective(
    base: TrainConfig, method: str, root: str, tags: dict[str, Any] | None = None
) -> Callable[[optuna.Trial], float]:
    """The study's objective: train the trial's config as a run in ``root`` and return its final
    validation accuracy (0 for a diverged run). With a pruner, the validation accuracy after each
    epoch is reported and a hopeless run stops with status ``pruned``."""
    start = dataclasses.replace(method_config(method, base), root=root)
    if start.val_fraction <= 0:
        raise ConfigError("tuning chooses on the validation split: give --val-fraction > 0 (e.g. 0.1)")

    def objective(trial: optuna.Trial) -> float:
        cfg = suggest(trial, method, start)
        # pid before host: recover() judges a trial by its host only once its pid is there too.
        for key, value in {"pid": os.getpid(), "host": socket.gethostname(), "config": dataclasses.asdict(cfg)}.items():
            trial.set_user_attr(key, value)

        def on_epoch(epoch: int, accuracies: dict[str, float]) -> bool:
            trial.report(accuracies["val_acc"], epoch)
            return trial.should_prune()

        try:
            result = train(
                cfg, tags={"study": trial.study.study_name, "trial": trial.number, **(tags or {})}, on_epoch=on_epoch
            )
        except Exception as exc:  # a failed trial, not an interrupted one: never queued again
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            raise
        trial.set_user_attr("run_id", result.run_id)
        trial.set_user_attr("status", result.status)
        trial.set_user_attr("test_acc", result.test_acc)  # reported beside the winner, never chosen on
        if result.status == "pruned":
            raise optuna.TrialPruned(f"val_acc {result.val_acc:.4f}")
        return 0.0 if result.status == "diverged" or result.val_acc is None else result.val_acc

    return objective


# --- the study and its storage ------------------------------------------------------------------


def storage_url(root: str, storage: str | None = None) -> str:
    """The study storage: ``storage`` as given, else a SQLite file in the local store root."""
    if storage:
        return storage
    if is_remote(root):
        raise ConfigError(
            f"the store root {root} is remote and cannot hold the studies' SQLite file: pass --storage URL "
            f"(any database URL, e.g. postgresql://user@host/db, or sqlite:////shared/path/{STUDIES_FILE})"
        )
    path = Path(str(root).removeprefix("file://")).resolve()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--root {path} is a file: pass the run store's directory")
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / STUDIES_FILE}"


@contextlib.contextmanager
def _creating(url: str) -> Iterator[None]:
    """Held while opening a SQLite study file: the first opening creates its tables and stamps
    their version, and two processes doing that at once collide ("table ... already exists",
    "UNIQUE constraint failed: alembic_version"). An advisory lock beside the file makes them
    take turns; other databases manage this themselves."""
    path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else None
    if not path or path.startswith(":") or fcntl is None:
        yield
        return
    with open(f"{path}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _rdb_storage(url: str, kwargs: dict[str, Any]) -> optuna.storages.RDBStorage:
    """RDBStorage, tried again while another process is creating the same new database's tables
    (where no lock serialises it: a database server shared by several machines)."""
    from sqlalchemy.exc import IntegrityError, OperationalError

    for attempt in range(5):
        try:
            with _creating(url):
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=kwargs,
                    heartbeat_interval=HEARTBEAT_SECS,
                    grace_period=GRACE_SECS,
                    heartbeat_stale_trial_callback=lambda study, trial: requeue(study, [trial]),
                )
        except (OperationalError, IntegrityError) as exc:
            collided = "already exists" in str(exc) or "alembic_version" in str(exc)
            if not collided or attempt == 4:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage with heartbeats: a trial whose process stops beating is failed and
    queued again (requeue) by whichever process looks next."""
    kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat
        try:
            return _rdb_storage(url, kwargs)
        except (ImportError, ValueError, optuna.exceptions.StorageInternalError) as exc:
            raise ConfigError(f"--storage {url}: cannot open it ({type(exc).__name__}: {exc})") from None


# What a study remembers of the settings it was made with: all but the searched values and
# where or how fast its trials run. A second run on another setting must not join it.
NOT_COMPARED = {
    "lr",
    "weight_decay",
    "warmup_epochs",
    "free_epochs",
    "lawn_lr_scale",
    "auto_max_epochs",
    "auto_min_epochs",
    "name",
    "root",
    "resume",
    "recipe",
    "device",
    "data_root",
    "download",
    "progress",
    "workers",
    "threads",
    "flush_secs",
    "compile",
    "channels_last",
    "probes",
    "probe_size",
}


def study_settings(cfg: TrainConfig, method: str) -> dict[str, Any]:
    values = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_COMPARED}
    return {**values, "method": method}


def open_study(name: str, url: str, base: TrainConfig, method: str) -> optuna.Study:
    """Create the study, or load it (several processes and machines share one); refuses one made
    for another method or other settings."""
    settings = study_settings(method_config(method, base), method)
    study = optuna.create_study(study_name=name, storage=open_storage(url), direction="maximize", load_if_exists=True)
    saved = study.user_attrs.get("settings")
    if saved is None:
        study.set_user_attr("settings", settings)
    elif saved != settings:
        differ = sorted(k for k in {*saved, *settings} if saved.get(k) != settings.get(k))
        shown = ", ".join(f"{k}={saved.get(k)!r}" for k in differ[:4])
        raise ConfigError(
            f"study {name!r} in {url} was made with other settings ({shown}): give the same ones, or --study NEW_NAME"
        )
    return study


def requeue(study: optuna.Study, failed: list[FrozenTrial]) -> None:
    """Queue again, with the same parameters, each failed trial that was stopped (killed,
    interrupted, silent) rather than broken (a raised error is kept in its ``error`` attribute),
    unless a trial already repeats it."""
    done = {t.user_attrs.get("retry_of") for t in study.get_trials(deepcopy=False)}
    for trial in failed:
        if trial.state == TrialState.FAIL and "error" not in trial.user_attrs and trial.number not in done:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            done.add(trial.number)


def recover(study: optuna.Study) -> None:
    """Fail the trials left running by a process on this machine that has died (at once: no
    waiting for the heartbeat's grace period), then queue again every stopped trial."""
    storage, host = study._storage, socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = trial.user_attrs.get("pid")
        if pid and trial.user_attrs.get("host") == host and not _alive(pid):
            try:
                storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:  # another process got there first
                pass
    requeue(study, study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))


def make_pruner(pruner: str) -> optuna.pruners.BasePruner:
    if pruner == "median":  # stop a trial whose val/acc is below the median of earlier trials at that epoch
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1)
    if pruner == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"--pruner {pruner!r}: choose median or none")


def work(study: optuna.Study, objective: Callable[[optuna.Trial], float], trials: int) -> None:
    """Run trials one at a time until the study holds ``trials`` finished or running ones."""
    while True:
        if signals.received():  # came while a run was writing its status: start no further trial
            raise signals.Interrupted(signals.received())
        recover(study)
        counted = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
        if len(counted) >= trials:
            return
        try:
            study.optimize(objective, n_trials=1)
        except ValueError as exc:
            # Another process failed this trial while it ran (its heartbeat seemed lost: a stalled
            # machine) and queued it again: its run is kept, the queued copy stands for it.
            if "Cannot tell a FAIL trial" not in str(exc):
                raise
            warnings.warn(f"a trial of {study.study_name} was marked failed by another process: {exc}", stacklevel=2)


# --- the public entry points ----------------------------------------------------------------------


def tune(
    base: TrainConfig,
    method: str,
    *,
    trials: int,
    root: str,
    study: str | None = None,
    storage: str | None = None,
    parallel: int = 1,
    pruner: str = "none",
    seed: int = 0,
    worker: int = 0,
) -> optuna.Study:
    """Tune ``method`` on ``base``'s setting until its study holds ``trials`` finished trials, in
    this process (``parallel`` 1) or in ``parallel`` worker processes. ``seed`` seeds the sampler
    (each worker, and each restart, its own stream). Raises ConfigError for bad input.

    A launcher that places workers itself (other machines, a cluster) runs ``tune(...,
    parallel=1, worker=i)`` in each, with one ``storage`` URL they all reach."""
    if trials < 1 or parallel < 1:
        raise ConfigError(f"--trials and --parallel must be >= 1, got {trials} and {parallel}")
    name = study or study_name(base, method)
    url = storage_url(root, storage)
    objective = make_objective(base, method, root)  # checks the method and the validation split first
    handle = open_study(name, url, base, method)
    if parallel > 1:
        run_workers(base, method, trials, root, name, url, parallel, pruner, seed)
        return load(name, url)
    handle.pruner = make_pruner(pruner)
    # Distinct per worker and per restart: a restarted process must not draw its first trials again.
    handle.sampler = optuna.samplers.TPESampler(seed=seed * 1_000_003 + 7_919 * len(handle.trials) + worker)
    work(handle, objective, trials)
    return handle


def run_workers(
    base: TrainConfig, method: str, trials: int, root: str, name: str, url: str, parallel: int, pruner: str, seed: int
) -> None:
    """``parallel`` processes of ``lawn-monitor tune`` on one study, one torch thread each. A
    signal here is passed on to each; each ends its trial's run ``interrupted``."""
    cfg = dataclasses.replace(base, progress=False, threads=base.threads or 1, root=root, name=None, recipe=None)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(cfg.threads),
        "MKL_NUM_THREADS": str(cfg.threads),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_DIR), os.environ.get("PYTHONPATH")])),
    }
    common = ["--method", method, "--trials", str(trials), "--study", name, "--storage", url, "--pruner", pruner]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", f"{__package__}.tune", *common, "--sampler-seed", str(seed), "--worker", str(i)]
            + config_argv(cfg, skip=SKIPPED_FLAGS),
            env=env,
        )
        for i in range(1, parallel + 1)  # worker 0 is this process
    ]
    try:
        with signals.interrupt_on_signals():
            codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            p.wait()
        raise
    if any(codes):
        raise WorkerError(f"tune workers exited with {codes}: their messages are above; run again to carry on")


def best_trial(study: str, root: str, storage: str | None = None) -> FrozenTrial:
    """The study's winning trial (highest final validation accuracy)."""
    handle = load(study, storage_url(root, storage))
    try:
        return handle.best_trial
    except ValueError:
        raise ConfigError(f"study {study!r} has no completed trial yet: run lawn-monitor tune on it") from None


def best_config(study: str, root: str, storage: str | None = None) -> TrainConfig:
    """The winning trial's whole config (named afresh), to rerun it, e.g. with other seeds."""
    record = best_trial(study, root, storage).user_attrs["config"]
    return dataclasses.replace(config_from_record(record), name=None, resume=None)


# --- the command line -------------------------------------------------------------------------------


def build_parser(prog: str = "lawn-monitor tune") -> OneLineParser:
    parser = OneLineParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", help=f"what to tune: {', '.join(METHODS)}, or any optimizer (adamp, lamb-lawn)")
    parser.add_argument("--trials", type=int, default=20, help="finished trials the study should hold (default: 20)")
    parser.add_argument("--study", help="study name (default: DATASET-MODEL-METHOD-bBATCH-eEPOCHS)")
    parser.add_argument("--storage", help=f"database URL (default: sqlite:///<root>/{STUDIES_FILE})")
    parser.add_argument("--parallel", type=int, default=1, metavar="N", help="worker processes (default: 1)")
    parser.add_argument("--pruner", choices=("none", "median"), default="none", help="stop hopeless trials early")
    parser.add_argument("--sampler-seed", type=int, default=0, help="seed of the TPE sampler (default: 0)")
    parser.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)  # set for the --parallel workers
    parser.add_argument(
        "--show", nargs="?", const="", metavar="STUDY", help="print a study's best trial (no name: every study)"
    )
    add_config_arguments(parser, skip=SKIPPED_FLAGS)
    add_launcher_arguments(parser, sweep=False)  # ray, slurm: --parallel N workers there (trainers/launch/study.py)
    return parser


def load(study: str, url: str) -> optuna.Study:
    try:
        return optuna.load_study(study_name=study, storage=open_storage(url))
    except KeyError:
        raise ConfigError(f"no study {study!r} in {url}: list them with `lawn-monitor tune --show`") from None


def show(root: str, storage: str | None, name: str = "") -> int:
    """Print a study's best trial and its run (``name`` empty: every study in the storage)."""
    url = storage_url(root, storage)
    names = [name] if name else optuna.get_all_study_names(open_storage(url))
    if not names:
        print(f"no studies in {url}: start one with `lawn-monitor tune --method adam --trials 20`")
    for study in names:
        trials = load(study, url).get_trials(deepcopy=False)
        counts = ", ".join(
            f"{n} {state.name.lower()}" for state in TrialState if (n := sum(t.state == state for t in trials))
        )
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        if not complete:
            print(f"{study}: no completed trial yet ({counts or 'no trials'})")
            continue
        best = max(complete, key=lambda t: t.value)  # the first of equals, as Optuna's best_trial
        test = best.user_attrs.get("test_acc")
        test_text = "n/a" if test is None else f"{test:.4f}"
        print(f"{study}: best trial {best.number}, val_acc {best.value:.4f}, test_acc {test_text} ({counts})")
        print(f"  run {best.user_attrs.get('run_id')}")
        for key, value in best.params.items():
            print(f"  {key} = {value:.4g}" if isinstance(value, float) else f"  {key} = {value}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    given = given_fields(args)
    root = given.get("root") or default_root()
    try:
        if args.show is not None:
            return show(root, args.storage, args.show)
        if not args.method:
            raise ConfigError("--method is required: " + ", ".join(METHODS) + ", or any optimizer (adamp, lamb-lawn)")
        base = config_from({k: v for k, v in given.items() if k != "recipe"}, given.get("recipe"))
        if args.launcher != "local":
            return launch_study(base, args.method, args, root)
        with signals.interrupt_on_signals():
            study = tune(
                base,
                args.method,
                trials=args.trials,
                root=root,
                study=args.study,
                storage=args.storage,
                parallel=args.parallel,
                pruner=args.pruner,
                seed=args.sampler_seed,
                worker=args.worker,
            )
    except USER_ERRORS as exc:
        print(f"lawn-monitor tune: error: {exc}", file=sys.stderr)
        return 2
    except WorkerError as exc:
        print(f"lawn-monitor tune: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        print(f"tune interrupted by {signals.signal_name(exc)}: run it again to carry on", file=sys.stderr)
        return signals.exit_code(exc)
    if args.worker == 0:
        show(root, args.storage, study.study_name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
