"""`lawn-monitor sweep --parallel N` and how runs end when SIGINT or SIGTERM arrives: directly, through
the sweep, and through `make demo`. Every run here is a real `lawn-monitor train` process."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from lawn_monitor import RunStore
from lawn_monitor_trainers.config import config_from_flags, given_fields
from lawn_monitor_trainers.recipe import config_from
from lawn_monitor_trainers.sweep import config_argv
from lawn_monitor_trainers.train import build_parser, config_for_cli

REPO = Path(__file__).resolve().parent.parent
# Runs that train until stopped: synthetic data, a small MLP, flushing every 0.2 s.
ENDLESS = ["--dataset", "synthetic", "--model", "mlp", "--epochs", "1000", "--flush-secs", "0.2"]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "lawn_monitor.cli", *args]


def start(argv: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        argv,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        **kwargs,
    )


def wait_for_steps(root: Path, runs: int, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Until ``runs`` runs in ``root`` have logged steps (fails early if ``proc`` ends)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if root.is_dir():
            listed = RunStore(root).runs()
            if len(listed) >= runs and (listed["step"] > 0).sum() >= runs:
                return
        time.sleep(0.3)
    raise AssertionError(f"fewer than {runs} runs were training in {root} after {timeout:.0f} s")


def assert_interrupted_and_readable(root: Path, count: int) -> None:
    store = RunStore(root)
    runs = store.runs()
    assert len(runs) == count, runs[["name", "status"]]
    assert (runs["status"] == "interrupted").all(), runs[["name", "status"]]
    for run in runs.itertuples():
        loss = store.series(run.run_id, "train/loss", points=None)
        # What was flushed is kept: rows up to (at most) the step run.json records.
        assert 0 < len(loss) <= run.step and loss["step"].max() <= run.step, run.name


@pytest.mark.parametrize(
    "given",
    [
        {
            "optimizer": "sgd",
            "lawn": True,
            "batch_size": 32,
            "seed": 3,
            "free_epochs": 2.5,
            "lr": 0.05,
            "curvature": False,
            "progress": False,
            "root": "/tmp/x y",
            "threads": 1,
        },
        {"optimizer": "adam", "warmup_epochs": 0.1, "decay": "none", "tangent": True, "epochs": 10},
    ],
)
def test_config_argv_rebuilds_the_config_exactly(given):
    cfg = config_from_flags(given).resolved()
    rebuilt = config_for_cli(given_fields(build_parser().parse_args(config_argv(cfg)))).resolved()
    assert rebuilt == cfg


def test_config_argv_keeps_a_flag_over_its_recipe():
    # The recipe says 300 epochs; the sweep's flag says 10, which is the field's default: the
    # child must still train 10, so every value is passed whatever the recipe holds.
    cfg = config_from({"epochs": 10, "free_epochs": 1.0, "seed": 1}, "cifar10-adam-lawn-b256").resolved()
    argv = config_argv(cfg)
    assert "--recipe" in argv
    assert config_for_cli(given_fields(build_parser().parse_args(argv))).resolved() == cfg


def test_parallel_must_be_positive(capsys, tmp_path):
    from lawn_monitor.cli import main

    assert main(["sweep", "--parallel", "0", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--parallel must be at least 1" in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--nice", "25"], "--nice must be 1-19"),
        (["--nice", "-5"], "--nice must be 1-19"),
        (["--nice", "5", "--launcher", "ray"], "--nice is for --launcher local"),
    ],
)
def test_a_nice_that_cannot_apply_is_one_line(capsys, tmp_path, flags, says):
    from lawn_monitor.cli import main

    assert main(["sweep", *flags, "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def sweep(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        cli("sweep", *args, "--root", str(root)),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


@pytest.mark.slow
def test_parallel_sweep_trains_runs_side_by_side_one_thread_each(tmp_path):
    # Long enough (a few seconds each) that the two first runs overlap however unevenly their
    # processes start on a loaded machine.
    proc = sweep(
        tmp_path,
        "--dataset",
        "digits",
        "--model",
        "mlp",
        "--optimizers",
        "sgd,adam,adamw",
        "--lawn",
        "off",
        "--epochs",
        "12",
        "--parallel",
        "2",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = RunStore(tmp_path).runs().sort_values("created_at", ignore_index=True)
    assert (runs["status"] == "finished").all() and len(runs) == 3
    created, ended = runs["created_at"].map(pd.Timestamp), runs["ended_at"].map(pd.Timestamp)
    assert created[1] < ended[0]  # the first two trained at the same time
    assert created[2] >= min(ended[0], ended[1])  # the third took the first free place
    for run_id in runs["run_id"]:  # one torch thread each, no progress bars (the sweep reports)
        config = json.loads((tmp_path / run_id / "run.json").read_text())["config"]
        assert config["threads"] == 1 and config["progress"] is False
    for run in runs.itertuples():  # the output says which run is where and how it ended
        assert f"{run.name}: writing to {tmp_path}/{run.run_id}" in proc.stdout
        assert f"{run.name}: finished after" in proc.stdout
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_parallel_sweep_goes_on_after_runs_diverge(tmp_path):
    proc = sweep(
        tmp_path,
        *ENDLESS[:4],
        "--epochs",
        "3",
        "--lr",
        "1e4",
        "--optimizers",
        "sgd,adam,adamw",
        "--lawn",
        "off",
        "--parallel",
        "2",
    )
    assert proc.returncode == 3, proc.stdout + proc.stderr  # not every run finished
    status = RunStore(tmp_path).runs().set_index("name")["status"].to_dict()
    # SGD at lr 1e4 blows up; all three runs started (the third after one of the first two ended)
    # and each has its ending recorded.
    assert status["sgd-b64-s0"] == "diverged" and len(status) == 3
    assert set(status.values()) <= {"diverged", "finished"}, status
    for name, ending in status.items():
        assert f"{name}: {ending} after" in proc.stdout


def interrupt(proc, root: Path, runs: int, send) -> tuple[str, str]:
    """Once ``runs`` runs under ``root`` have logged steps, ``send()`` a signal; wait for the exit
    and return the process's output (killed if it outlives the wait)."""
    try:
        wait_for_steps(root, runs, proc)
        send()
        return proc.communicate(timeout=120)
    finally:
        proc.kill()


def thread_nices(pid: int) -> set[int]:
    """The nice value of every thread of a process (Linux: a priority is per thread)."""
    return {os.getpriority(os.PRIO_PROCESS, int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}


@pytest.mark.slow
def test_a_niced_parallel_sweep_and_sigint_leaves_every_started_run_interrupted(tmp_path):
    proc = start(
        cli(
            "sweep",
            *ENDLESS,
            "--optimizers",
            "sgd,adam",
            "--lawn",
            "both",
            "--parallel",
            "2",
            "--nice",
            "7",
            "--root",
            str(tmp_path),
        )
    )
    ours, seen = os.getpriority(os.PRIO_PROCESS, 0), {}

    def look_then_interrupt():
        # Only looks (asserted below): the SIGINT must come whatever the look finds, or the runs
        # would outlive the test.
        try:
            pids = [json.loads((tmp_path / r / "run.json").read_text())["pid"] for r in RunStore(tmp_path).run_ids()]
            seen["runs"] = [thread_nices(pid) for pid in pids]
            seen["sweep"] = thread_nices(proc.pid)
        finally:
            proc.send_signal(signal.SIGINT)

    out, err = interrupt(proc, tmp_path, 2, look_then_interrupt)
    # Every thread of each run (torch's included, started after the launcher lowered the run's
    # priority) yields to a dashboard beside it; the sweep itself does not.
    assert seen == {"runs": [{min(19, ours + 7)}] * 2, "sweep": {ours}}
    assert proc.returncode == 130, err
    assert "Traceback" not in out + err
    assert "2 not started" in err
    assert_interrupted_and_readable(tmp_path, 2)  # the two that started; the other two never did


@pytest.mark.slow
def test_ctrl_c_in_a_terminal_reaches_sweep_and_runs_at_once(tmp_path):
    """A terminal's Ctrl-C signals the whole process group: every run gets SIGINT twice (from the
    terminal and from the sweep) and still ends interrupted, the sweep exits 130."""
    proc = start(
        cli("sweep", *ENDLESS, "--optimizers", "sgd,adam", "--lawn", "off", "--parallel", "2", "--root", str(tmp_path)),
        start_new_session=True,
    )
    out, err = interrupt(proc, tmp_path, 2, lambda: os.killpg(proc.pid, signal.SIGINT))
    assert proc.returncode == 130, err
    assert_interrupted_and_readable(tmp_path, 2)


@pytest.mark.slow
def test_sigterm_to_train_marks_the_run_interrupted(tmp_path):
    proc = start(cli("train", *ENDLESS, "--root", str(tmp_path), "--no-progress"))
    out, err = interrupt(proc, tmp_path, 1, lambda: proc.send_signal(signal.SIGTERM))
    assert proc.returncode == 143, err
    assert len(err.strip().splitlines()) == 1 and "interrupted by SIGTERM" in err and "Traceback" not in err
    assert_interrupted_and_readable(tmp_path, 1)


@pytest.mark.slow
def test_sigterm_to_an_in_process_sweep(tmp_path):
    """--parallel 1 trains in the sweep's own process: SIGTERM ends the current run, starts no other."""
    proc = start(
        cli("sweep", *ENDLESS, "--optimizers", "sgd,adam", "--lawn", "off", "--root", str(tmp_path), "--no-progress")
    )
    out, err = interrupt(proc, tmp_path, 1, lambda: proc.send_signal(signal.SIGTERM))
    assert proc.returncode == 143, err
    assert "sweep interrupted by SIGTERM: sgd-b64-s0 is marked 'interrupted'; 1 more runs not started" in err
    assert_interrupted_and_readable(tmp_path, 1)


def fake_venv(path: Path) -> Path:
    """A stand-in for `make`'s .venv that runs this interpreter and this tree: `make demo` then
    skips its install step and starts the same commands (lawn-monitor, streamlit) it always does."""
    bin_dir = path / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)
    for name, module in (("lawn-monitor", "lawn_monitor.cli"), ("streamlit", "streamlit")):
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m {module} "$@"\n')
        script.chmod(0o755)
    (bin_dir / ".installed").touch()
    os.utime(bin_dir / ".installed", (time.time() + 3600, time.time() + 3600))  # newer than pyproject.toml
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")
def test_ctrl_c_on_make_demo_ends_its_runs_interrupted(tmp_path):
    """`make demo` as a user runs it, then Ctrl-C: the terminal's SIGINT reaches make, the dashboard,
    the sweep and its runs (one process group); make returns once every run has written its status."""
    root = tmp_path / "runs"
    port = free_port()
    demo_args = " ".join([*ENDLESS, "--optimizers", "sgd,adam", "--lawn", "both", "--parallel", "4"])
    proc = start(
        [
            "make",
            "--no-print-directory",
            "demo",
            f"VENV={fake_venv(tmp_path / 'venv')}",
            f"ROOT={root}",
            f"PORT={port}",
            f"DEMO_ARGS={demo_args}",
        ],
        start_new_session=True,
    )
    try:
        wait_for_steps(root, 4, proc)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    log = (root / "demo-sweep.log").read_text()
    assert_interrupted_and_readable(root, 4)
    assert "sweep: SIGINT: stopping 4 runs" in log, log
    assert f"http://127.0.0.1:{port}" in out
    info = json.loads(next(root.glob("*/run.json")).read_text())
    assert info["config"]["threads"] == 1


def test_a_worker_that_died_before_the_launcher_saw_its_run_shows_stale(tmp_path, capsys):
    # A CI run once killed a Ray worker after its run had written a checkpoint but before the
    # launcher's next look at the store: the line said "not started", losing the run. The launcher
    # must look once more when told a worker died, and find the run by its name.
    from lawn_monitor import Monitor
    from lawn_monitor_trainers.config import TrainConfig
    from lawn_monitor_trainers.launch.common import Job, Watch

    cfg = TrainConfig(dataset="digits", model="mlp", optimizer="adam", batch_size=8, progress=False)
    cfg.name = "adam-b8-s0"
    job = Job(0, 1, cfg)
    watch = Watch(str(tmp_path), [job])
    model = torch.nn.Linear(2, 2)
    monitor = Monitor(model, torch.optim.Adam(model.parameters()), root=tmp_path, name=cfg.name, flush_secs=0.1)
    monitor.flush()  # running, its writer (this process) never ends it
    outcome = watch.ended(job, None, "its worker died: WorkerCrashedError")
    assert outcome.status == "stale" and outcome.run_dir == f"{watch.loc.url}/{job.run_id}"
    out = capsys.readouterr().out
    assert "adam-b8-s0: stale" in out and "launch the same sweep again" in out, out
    monitor.close()
