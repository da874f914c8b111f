"""The command line's edges: --version, plain --help, a closed pipe, what `runs` says when it
shows nothing, bad output paths, bad numbers, a full disk, a damaged or abandoned lock, and a
dashboard that stops when told to."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import pytest
import torch

from lawn_monitor import Monitor, RunStore, __version__
from lawn_monitor.cli import main as cli_main
from lawn_monitor.compact import compact_store
from lawn_monitor.lock import LOCK_NAME
from lawn_monitor.storage import Location
from tests.helpers import write_run

REPO = Path(__file__).resolve().parent.parent
COMMANDS = ["runs", "compare", "compact", "import", "export", "dashboard", "train", "sweep"]
CONFIG = {"optimizer": "adam", "lawn": False, "batch_size": 64, "seed": 0}


def lawn_monitor(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lawn_monitor.cli", *args], capture_output=True, text=True, cwd=REPO, **kw
    )


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = cli_main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def one_run(tmp_path: Path) -> tuple[Path, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tmp_path / "runs", write_run(tmp_path / "runs", "a", CONFIG, [1.0, 0.5], accs=[0.5])


def test_version_and_help_without_markup(capsys):
    assert cli(["--version"], capsys)[:2] == (0, f"lawn-monitor {__version__}\n")
    for argv in (["--help"], *([c, "--help"] for c in COMMANDS)):
        with pytest.raises(SystemExit) if argv != ["--help"] else contextlib.nullcontext():
            cli_main(argv)
        out = capsys.readouterr().out
        assert out and "``" not in out, argv


@pytest.mark.slow
def test_help_into_a_closed_pipe_is_no_traceback():
    read, write = os.pipe()
    os.close(read)  # `| head` that has already left
    try:
        for args in (["--help"], ["train", "--help"], ["runs", "--help"]):
            done = subprocess.run(
                [sys.executable, "-m", "lawn_monitor.cli", *args], stdout=write, stderr=subprocess.PIPE, text=True
            )
            assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, args
    finally:
        os.close(write)


def test_runs_tells_no_runs_from_no_such_status_and_from_an_unreadable_root(one_run, tmp_path, capsys):
    root, _ = one_run
    rc, out, _ = cli(["runs", "--root", str(root), "--status", "running"], capsys)
    assert rc == 0 and out.strip() == f"no running runs in {root} (1 finished)"
    rc, out, _ = cli(["runs", "--root", str(tmp_path / "nowhere")], capsys)
    assert rc == 0 and out.startswith(f"no runs in {tmp_path / 'nowhere'} (no such folder yet)")
    (tmp_path / "empty").mkdir()
    rc, out, _ = cli(["runs", "--root", str(tmp_path / "empty")], capsys)
    assert rc == 0 and out.startswith(f"no runs in {tmp_path / 'empty'}: start one")
    with pytest.raises(SystemExit) as exit_:
        cli_main(["runs", "--root", str(root), "--status", "bogus"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "invalid choice: 'bogus'" in err and len(err.splitlines()) == 1
    os.symlink("loop", tmp_path / "loop")  # a root no one can list, root included
    rc, _, err = cli(["runs", "--root", str(tmp_path / "loop")], capsys)
    assert rc == 2 and err.startswith(f"lawn-monitor: error: cannot read --root {tmp_path / 'loop'}")


def test_export_to_a_path_that_cannot_be_written_is_one_line(one_run, tmp_path, capsys):
    root, _ = one_run
    (tmp_path / "a-file").write_text("")
    for target in (tmp_path / "a-file" / "tb", Path("/proc/no-such-dir/tb")):
        rc, _, err = cli(["export", "--to", "tensorboard", str(target), "--root", str(root)], capsys)
        assert rc == 2 and err.startswith("lawn-monitor export: error: cannot write") and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--lr", "inf"], "--lr must be a finite number, got inf"),
        (["--seed", "-1"], "--seed must be in [0, 2**32), got -1"),
        (["--warmup-epochs", "inf"], "--warmup-epochs must be a finite number, got inf"),
    ],
)
@pytest.mark.slow
def test_bad_numbers_are_flag_errors(flags, words, tmp_path):
    done = lawn_monitor("train", "--root", str(tmp_path / "runs"), *flags, timeout=300)
    assert done.returncode == 2 and done.stderr.strip() == f"lawn-monitor train: error: {words}"
    assert not (tmp_path / "runs").exists()  # refused before anything is written


@pytest.fixture
def full_disk(tmp_path: Path):
    """A 256 kB tmpfs filled to the last byte (needs root and mount; skipped elsewhere)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        fd = os.open(mount / "fill", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:  # ENOSPC: full
            pass
        finally:
            os.close(fd)
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_monitor_on_a_full_disk_fails_in_one_line_and_leaves_nothing(full_disk):
    model = torch.nn.Linear(2, 2)
    with pytest.raises(OSError, match=r"^cannot start run .* No space left on device; free space there"):
        Monitor(model, torch.optim.SGD(model.parameters(), lr=0.1), root=full_disk / "runs", name="x")
    assert list((full_disk / "runs").iterdir()) == []  # no run folder, no empty metrics/, no lock


def dead_pid() -> int:
    gone = subprocess.Popen(["true"])
    gone.wait()
    return gone.pid


def test_a_dead_run_with_a_garbage_lock_is_not_running(one_run):
    root, run_id = one_run
    info = json.loads((root / run_id / "run.json").read_text())
    (root / run_id / "run.json").write_text(json.dumps({**info, "status": "running", "pid": dead_pid()}))
    (root / run_id / LOCK_NAME).write_bytes(b"\x00garbage")
    assert RunStore(root).runs()["status"].tolist() == ["stale"]


def test_compact_marks_a_run_whose_lock_it_took_over_interrupted(one_run, capsys):
    root, run_id = one_run
    info = json.loads((root / run_id / "run.json").read_text())
    (root / run_id / "run.json").write_text(json.dumps({**info, "status": "running", "pid": dead_pid()}))
    lock = {"host": os.uname().nodename, "pid": dead_pid(), "token": "x", "beat": 3}
    lock["pid_ns"] = os.readlink("/proc/self/ns/pid") if os.path.exists("/proc/self/ns/pid") else ""
    (root / run_id / LOCK_NAME).write_text(json.dumps(lock))
    with pytest.warns(UserWarning, match="taking over the lock"):
        merged, skipped = compact_store(Location(root), [run_id])
    assert run_id in merged and not skipped
    after = json.loads((root / run_id / "run.json").read_text())
    assert (
        after["status"] == "interrupted" and after["ended_at"] == info["heartbeat_at"] and "stopped" in after["error"]
    )
    assert RunStore(root).runs()["status"].tolist() == ["interrupted"]


@pytest.mark.slow
def test_sigterm_stops_the_dashboard_and_its_server(one_run, tmp_path):
    from tests.browser import free_port, wait_healthy

    root, _ = one_run
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lawn_monitor.cli", "dashboard", "--root", str(root), "--port", str(port)]
        + ["--server.headless", "true", "--server.fileWatcherType", "none"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc)
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read()  # a session, as a browser's
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        assert time.monotonic() - start < 10
        with pytest.raises(OSError):  # nothing listens there any more: the server went too
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
