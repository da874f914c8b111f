"""Tuning on the validation split: val/* recorded at every evaluation; `tune` runs its trials as
runs tagged with their study and trial; two processes on one SQLite study take distinct trials; a
study whose process was killed resumes without losing or repeating a trial; bad input is one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from lawn_monitor import RunStore
from lawn_monitor.optim import lawn_factor
from lawn_monitor.probes import ProbeConfig
from lawn_monitor_trainers import tune as tune_module
from lawn_monitor_trainers.config import ConfigError, TrainConfig
from lawn_monitor_trainers.train import train
from lawn_monitor_trainers.tune import METHODS, best_config, best_trial, method_config, study_name, tune

PROJECT = Path(__file__).resolve().parent.parent
TINY_FLAGS = ["--dataset", "digits", "--model", "mlp", "--batch-size", "256", "--no-progress", "--no-curvature"]
optuna.logging.set_verbosity(optuna.logging.WARNING)


def tiny(**kw) -> TrainConfig:
    """digits, an MLP, batches of 256 (6 steps an epoch), no curvature probes."""
    values = {"dataset": "digits", "model": "mlp", "epochs": 1, "batch_size": 256, "progress": False}
    return TrainConfig(**{**values, **kw}, probes=ProbeConfig(curvature=False))


def storage(root: Path) -> str:
    return f"sqlite:///{root / 'studies.sqlite3'}"


def tune_command(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "lawn_monitor_trainers.tune", "--root", str(root), *TINY_FLAGS, *args]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(PROJECT), "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_val_metrics_at_every_evaluation_and_pruned_runs(tmp_path):
    result = train(tiny(epochs=2, root=str(tmp_path)))
    store = RunStore(tmp_path)
    val, test = (store.series(result.run_id, m, points=None) for m in ("val/acc", "test/acc"))
    assert len(val) == 2 and val["step"].tolist() == test["step"].tolist()  # beside test/*, each epoch
    assert len(store.series(result.run_id, "val/loss", points=None)) == 2
    row = store.runs().set_index("run_id").loc[result.run_id]
    assert row["val_acc"] == pytest.approx(val["value"].iloc[-1]) == pytest.approx(result.val_acc)
    assert row["num_val"] == 144 and row["num_train"] == 1293
    # A run a tuner stops after its first epoch ends "pruned", a status the store lists.
    seen = []
    pruned = train(tiny(epochs=2, root=str(tmp_path)), on_epoch=lambda e, acc: seen.append((e, acc)) or True)
    assert pruned.status == "pruned" and [e for e, _ in seen] == [1] and "val_acc" in seen[0][1]
    assert store.runs(status="pruned")["run_id"].tolist() == [pruned.run_id]
    off = train(tiny(root=str(tmp_path), val_fraction=0.0))  # no split: no val rows
    assert off.val_acc is None and store.series(off.run_id, "val/acc").empty


def test_lawn_lr_after_the_switch_is_scaled():
    assert lawn_factor(5, 100, 10, 0, "none", after_scale=0.3) == 1.0  # free phase: the LR as given
    assert lawn_factor(10, 100, 10, 0, "none", after_scale=0.3) == pytest.approx(0.3)
    assert lawn_factor(10, 100, 10, 4, "none", after_scale=0.3) == pytest.approx(0.3 / 4)  # warm-up to it


def test_methods_and_their_configs():
    assert {"sgd", "sgd-lawn", "adam", "adam-l2", "adamw", "adam-lawn"} <= set(METHODS)
    base = tiny(weight_decay=0.1)
    assert method_config("adam", base).weight_decay == 0.0  # Adam: no weight decay at all
    assert method_config("adam-l2", base).optimizer == "adam" and method_config("adamw", base).optimizer == "adamw"
    assert method_config("sgd-lawn", base).lawn and not method_config("sgd", base).lawn
    lamb = method_config("lamb-lawn", base)  # any optimizer the trainer offers, and its LAWN form
    assert lamb.optimizer == "lamb" and lamb.lawn
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        method_config("nope", base)
    assert study_name(base, "adam") == "digits-mlp-adam-b256-e1"


@pytest.mark.slow
def test_tune_runs_trials_as_tagged_runs(tmp_path):
    study = tune(tiny(), "adam-lawn", trials=2, root=str(tmp_path))
    assert study.study_name == "digits-mlp-adam-lawn-b256-e1"
    runs = RunStore(tmp_path).runs().sort_values("trial")
    assert runs["study"].tolist() == [study.study_name] * 2 and runs["trial"].tolist() == [0, 1]
    assert runs["status"].tolist() == ["finished"] * 2
    for trial, (_, run) in zip(study.trials, runs.iterrows()):
        assert trial.user_attrs["run_id"] == run["run_id"] and trial.value == pytest.approx(run["val_acc"])
        assert run["lr"] == pytest.approx(trial.params["lr"]) and run["free_epochs"] == trial.params["free_epochs"]
        assert run["lawn_lr_scale"] == pytest.approx(trial.params["lawn_lr_scale"])
    # The store's winner is the study's best trial; best_config gives back its whole config.
    winner = best_trial(study.study_name, str(tmp_path))
    assert runs.loc[runs["best"], "trial"].tolist() == [winner.number]
    cfg = best_config(study.study_name, str(tmp_path))
    assert cfg.lr == pytest.approx(winner.params["lr"]) and cfg.optimizer == "adam" and cfg.lawn
    assert cfg.epochs == 1 and cfg.name is None
    # Asking for more trials carries the same study on.
    assert len(tune(tiny(), "adam-lawn", trials=3, root=str(tmp_path)).trials) == 3
    # The same name on another setting is refused, in one line.
    with pytest.raises(ConfigError, match="other settings.*batch_size=256"):
        tune(tiny(batch_size=128), "adam-lawn", trials=1, root=str(tmp_path), study=study.study_name)


def wait_for_running_trial(proc: subprocess.Popen, study: str, root: Path) -> optuna.trial.FrozenTrial:
    """The first trial ``proc`` has started (its process recorded), once there is one."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.3)
        try:
            trials = optuna.load_study(study_name=study, storage=storage(root)).trials
        except KeyError:  # not created yet
            continue
        running = [t for t in trials if t.state == TrialState.RUNNING and "host" in t.user_attrs]
        if running:
            return running[0]
    raise AssertionError(f"no trial started (exit {proc.poll()})")


@pytest.mark.slow
def test_processes_opening_a_new_study_file_at_once(tmp_path):
    # The first opening of a SQLite file creates its tables and stamps their version; eight
    # processes doing it at the same moment once failed on the version row ("UNIQUE constraint
    # failed: alembic_version") in a CI run. Each must open it, and the file must then be usable.
    url = storage(tmp_path)
    start = time.time() + 20  # all imports done by then: the eight openings meet
    code = (
        "import time; from lawn_monitor_trainers.tune import open_storage; "
        f"time.sleep(max(0, {start} - time.time())); open_storage({url!r}); print('ok')"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=env(), stdout=subprocess.PIPE, text=True) for _ in range(8)
    ]
    outs = [proc.communicate(timeout=120)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 8 and outs == ["ok\n"] * 8
    study = optuna.create_study(study_name="after", storage=tune_module.open_storage(url))
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    assert len(optuna.load_study(study_name="after", storage=url).trials) == 2


@pytest.mark.slow
def test_two_processes_share_one_study(tmp_path):
    # A `--parallel 2` command (its two worker processes), and this process joining the study
    # once a worker has a trial running: three real processes on one SQLite file.
    args = ["--method", "adam", "--trials", "6", "--parallel", "2", "--epochs", "1", "--batch-size", "128"]
    proc = subprocess.Popen(tune_command(tmp_path, *args), env=env(), stdout=subprocess.PIPE, text=True)
    name = "digits-mlp-adam-b128-e1"
    first = wait_for_running_trial(proc, name, tmp_path)
    tune(tiny(batch_size=128), "adam", trials=6, root=str(tmp_path), seed=1)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0
    trials = optuna.load_study(study_name=name, storage=storage(tmp_path)).trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) >= 6 and len(complete) == len(trials)  # none failed, none lost
    assert sorted(t.number for t in trials) == list(range(len(trials)))  # each number once
    pids = {t.user_attrs["pid"] for t in complete}
    assert first.user_attrs["pid"] in pids and os.getpid() in pids  # a worker's trials and this process's
    assert len({tuple(sorted(t.params.items())) for t in complete}) == len(complete)  # no two drew the same
    runs = RunStore(tmp_path).runs()
    assert sorted(runs["trial"].tolist()) == sorted(t.number for t in trials) and runs["best"].sum() == 1
    assert f"{name}: best trial" in out and "lr = " in out


def stop_mid_run(proc: subprocess.Popen, root: Path) -> int:
    """Freeze ``proc`` (SIGSTOP) at a moment one of its trials' runs has started and not ended, and
    return that trial's number. Looked at while frozen, so the answer cannot go stale: a trial on
    a slow machine may finish between a look and a kill (a CI run did exactly that). A trial is
    running in the study from before its run starts until after it ends."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
        proc.send_signal(signal.SIGSTOP)
        for path in root.glob("*/run.json"):
            info = json.loads(path.read_text() or "{}")
            if "trial" in info and info.get("status") == "running":
                return info["trial"]
        proc.send_signal(signal.SIGCONT)
    raise AssertionError(f"no trial was caught mid-run (exit {proc.poll()})")


@pytest.mark.slow
def test_a_killed_study_resumes_without_losing_a_trial(tmp_path):
    args = ["--method", "sgd", "--trials", "2", "--epochs", "2", "--batch-size", "64"]
    proc = subprocess.Popen(tune_command(tmp_path, *args), env=env(), stdout=subprocess.DEVNULL)
    name = "digits-mlp-sgd-b64-e2"
    try:
        number = stop_mid_run(proc, tmp_path)
    finally:
        proc.send_signal(signal.SIGKILL)  # frozen mid-run: killed there
        proc.wait()
    running = optuna.load_study(study_name=name, storage=storage(tmp_path)).trials[number]
    assert running.state == TrialState.RUNNING and "host" in running.user_attrs  # as the dead process left it
    # The same command again (in this process): the dead process's trial is failed at once and
    # queued again with its parameters; the study goes on to 2 completed trials.
    assert tune_module.main(["--root", str(tmp_path), *TINY_FLAGS, *args]) == 0
    trials = optuna.load_study(study_name=name, storage=storage(tmp_path)).trials
    states = {t.number: t.state for t in trials}
    assert states[running.number] == TrialState.FAIL  # the killed one, marked
    retry = [t for t in trials if t.user_attrs.get("retry_of") == running.number]
    assert len(retry) == 1 and retry[0].params == running.params  # queued again once, same parameters
    assert retry[0].state == TrialState.COMPLETE and sum(s == TrialState.COMPLETE for s in states.values()) == 2
    assert sorted(states) == list(range(len(trials)))  # numbers carry on, none repeated
    runs = RunStore(tmp_path).runs().set_index("trial")
    assert sorted(runs.index) == sorted(states)  # every trial has its run, the killed one's too
    assert runs.loc[running.number, "status"] in ("running", "stale")  # killed mid-run: until its lock goes stale


def test_bad_input_is_one_line(tmp_path, capsys):
    cases = [
        (["--method", "nope"], "unknown method 'nope'"),
        (["--method", "adam", "--root", "s3://bucket/runs"], "--storage URL"),
        (["--method", "adam", "--val-fraction", "0"], "--val-fraction > 0"),
        (["--show", "missing"], "no study 'missing'"),
        ([], "--method is required"),
    ]
    for argv, message in cases:
        root = [] if "--root" in argv else ["--root", str(tmp_path)]
        assert tune_module.main([*root, *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
