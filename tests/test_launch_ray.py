"""`lawn-monitor sweep --launcher ray` on a real local Ray instance (2 CPUs, one per module),
writing to an s3:// root on moto's S3 server on 127.0.0.1: runs land in the store, a killed
worker leaves its run stale and the next launch finishes it, Ctrl-C ends running runs
interrupted. The sweeps that must be signalled run as `lawn-monitor sweep` processes that join
the module's Ray instance by its address, as a user's would join a cluster."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

from lawn_monitor import RunStore  # noqa: E402
from lawn_monitor_trainers.sweep import main as sweep_main  # noqa: E402
from tests.helpers import s3_server  # noqa: E402

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
TINY = ["--dataset", "digits", "--model", "mlp", "--epochs", "1", "--no-curvature"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """moto's S3 server and a 2-CPU Ray instance whose workers see it (AWS_* in their environment)."""
    with s3_server("lawn-cluster"):
        temp = f"/tmp/lm-ray-{os.getpid()}"  # short: Ray's socket paths must fit in 107 characters
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=temp)
        try:
            yield ray.get_runtime_context().gcs_address
        finally:
            ray.shutdown()


def launch(address: str, *args: str) -> subprocess.Popen:
    """`lawn-monitor sweep --launcher ray` joining the module's Ray instance."""
    argv = [sys.executable, "-m", "lawn_monitor.cli", "sweep", "--launcher", "ray", "--ray-address", address, *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_until(check, proc: subprocess.Popen, timeout: float = 180.0, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        assert proc.poll() is None, f"the sweep ended before {what}:\n{proc.communicate()[0][-3000:]}"
        time.sleep(0.1)
    raise AssertionError(f"no {what} after {timeout:.0f} s")


def test_four_run_sweep_to_s3_is_listed_with_configs(cluster, capsys):
    root = "s3://lawn-cluster/four"
    grid = ["--optimizers", "sgd,adam", "--lawn", "both", "--free-epochs", "0.5", "--root", root]
    assert sweep_main(["--launcher", "ray", *TINY, *grid]) == 0
    out = capsys.readouterr().out
    runs = RunStore(root).runs().set_index("name")
    assert sorted(runs.index) == ["adam-b64-s0", "adam-lawn-b64-s0", "sgd-b64-s0", "sgd-lawn-b64-s0"]
    assert (runs["status"] == "finished").all(), runs["status"]
    assert runs.loc["adam-lawn-b64-s0", "optimizer"] == "adam" and bool(runs.loc["adam-lawn-b64-s0", "lawn"])
    assert set(runs["dataset"]) == {"digits"} and set(runs["model"]) == {"mlp"}
    for name in runs.index:  # one "started on <host>" and one "finished" line per run
        assert out.count(f"{name}: started on ") == 1 and out.count(f"{name}: finished on ") == 1, out
    # Launched again: every run has ended, nothing is trained twice.
    assert sweep_main(["--launcher", "ray", *TINY, *grid]) == 0
    assert capsys.readouterr().out.count("finished already") == 4
    assert len(RunStore(root).runs()) == 4


def test_killed_worker_leaves_stale_and_the_next_launch_finishes_it(cluster):
    root = "s3://lawn-cluster/killed"
    args = ["--dataset", "digits", "--model", "mlp", "--optimizers", "adam", "--lawn", "off"]
    args += ["--batch-sizes", "8", "--epochs", "4", "--flush-secs", "0.2", "--root", root]
    proc = launch(cluster, *args)
    store = RunStore(root, stale_after=5.0)

    def checkpointed_and_running():
        """A run past its first checkpoint and still running, its worker frozen (SIGSTOP) while
        that is checked again: the run cannot end between this look and the kill."""
        if not store.loc.exists():
            return None
        for run_id in store.loc.run_dirs():
            info = store.run_info(run_id) or {}
            if info.get("status") == "running" and store.loc.modified(f"{run_id}/checkpoint.pt") is not None:
                os.kill(info["pid"], signal.SIGSTOP)
                if (store.run_info(run_id) or {}).get("status") == "running":
                    return run_id, info["pid"]
                os.kill(info["pid"], signal.SIGCONT)
        return None

    run_id, pid = wait_until(checkpointed_and_running, proc, what="checkpointed run")
    os.kill(pid, signal.SIGKILL)  # the Ray worker that trains it, frozen mid-run
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 3, out  # not every run finished
    assert "adam-b8-s0: stale" in out and "launch the same sweep again" in out, out
    assert store.status(run_id) == "stale"
    first = store.run_info(run_id)["step"]

    again = launch(cluster, *args)
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out
    assert f"continuing {run_id}" in out, out
    store = RunStore(root)
    runs = store.runs()
    assert list(runs["run_id"]) == [run_id] and runs["status"].iloc[0] == "finished", runs
    steps = store.series(run_id, "train/loss", points=None)["step"].tolist()
    total = int(runs["total_steps"].iloc[0])
    assert first < total and steps == list(range(1, total + 1)), (first, total, steps[:5], len(steps))


def test_ctrl_c_of_the_launcher_ends_running_runs_interrupted(cluster):
    root = "s3://lawn-cluster/ctrl-c"
    args = ["--dataset", "synthetic", "--model", "mlp", "--epochs", "1000", "--flush-secs", "0.2", "--lawn", "off"]
    proc = launch(cluster, *args, "--root", root)
    store = RunStore(root)

    def both_training():
        runs = store.runs() if store.loc.exists() else None
        return runs is not None and len(runs) == 2 and (runs["step"] > 0).all()

    wait_until(both_training, proc, what="two runs training")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    runs = store.runs()
    assert len(runs) == 2 and (runs["status"] == "interrupted").all(), (runs[["name", "status"]], out)
    assert out.count(": interrupted on ") == 2, out


def test_two_worker_study_on_one_sqlite_storage_through_ray(cluster, tmp_path, capsys):
    optuna = pytest.importorskip("optuna")
    from lawn_monitor_trainers.tune import main as tune_main

    root, storage = tmp_path / "runs", f"sqlite:///{tmp_path / 'studies.sqlite3'}"
    argv = ["--method", "adam", "--trials", "4", "--parallel", "2", "--study", "digits-adam", "--storage", storage]
    argv += [*TINY, "--val-fraction", "0.2", "--root", str(root), "--launcher", "ray"]
    assert tune_main(argv) == 0
    out = capsys.readouterr().out
    trials = [t for t in optuna.load_study(study_name="digits-adam", storage=storage).trials if t.state.is_finished()]
    assert len(trials) >= 4 and all(t.state.name == "COMPLETE" for t in trials), out
    assert len({t.params["lr"] for t in trials}) == len(trials)  # distinct trials, not one drawn twice
    assert len({t.user_attrs["pid"] for t in trials}) == 2, out  # both workers took trials
    store = RunStore(root)
    runs = store.runs()
    assert sorted(runs["run_id"]) == sorted(t.user_attrs["run_id"] for t in trials)
    tags = [(store.run_info(r)["study"], store.run_info(r)["trial"]) for r in runs["run_id"]]
    assert sorted(tags) == sorted(("digits-adam", t.number) for t in trials), tags
    assert out.count(": started on ") == len(trials) and out.count(": complete on ") == len(trials), out
