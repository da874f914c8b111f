"""One writer per run (lock.py): a second writer, a reused run id, a second resume and a compact of
a live run are refused in one line; a dead writer's lock is taken over; liveness from the beat."""

import json
import os
import signal
import socket
import time

import pytest

from lawn_monitor import RunStore
from lawn_monitor import lock as lock_module
from lawn_monitor.compact import compact_store
from lawn_monitor.lock import LOCK_NAME, RunLock, RunLockedError
from lawn_monitor.sink import ParquetSink, RunExistsError
from lawn_monitor.storage import Location
from tests.helpers import check_whole_flushes, spawn_writer, start_writer
from tests.store_writer import flush_table

INFO = {"name": "r", "config": {"optimizer": "adam"}}


def write_flushes(sink, flushes, start=0):
    for i in range(start, flushes):
        sink.write(flush_table(sink.run_id, i))


def test_second_writer_fails_in_one_line_and_the_first_keeps_its_rows(tmp_path):
    first = ParquetSink(tmp_path, "r", INFO)
    write_flushes(first, 3)
    with pytest.raises(RunLockedError) as err:
        ParquetSink(tmp_path, "r", {**INFO, "config": {"optimizer": "sgd"}})
    message = str(err.value)
    assert "\n" not in message
    assert f"run r is being written by {socket.gethostname()}:{os.getpid()} since " in message
    assert message.endswith("wait for it to end, or pass another run id")
    write_flushes(first, 6, start=3)
    first.close("finished")
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    assert info["config"] == {"optimizer": "adam"} and info["status"] == "finished"
    assert check_whole_flushes(RunStore(tmp_path), "r") == 6
    assert not (tmp_path / "r" / LOCK_NAME).exists()  # released on close


def test_two_writers_started_together_one_wins(tmp_path):
    procs = [spawn_writer(tmp_path, "r", flushes=20, pause=0.01) for _ in range(2)]
    outcomes = sorted((p.wait(timeout=60), p.stdout.read().decode(), p.stderr.read().decode()) for p in procs)
    (ok, out, _), (refused, _, err) = outcomes
    assert ok == 0 and out.startswith("ready")
    assert refused == 2 and err.count("\n") == 1 and "run r is being written by" in err
    assert check_whole_flushes(RunStore(tmp_path), "r") == 20


def test_reusing_a_run_id_is_an_error_unless_resuming(tmp_path):
    sink = ParquetSink(tmp_path, "r", INFO)
    write_flushes(sink, 2)
    sink.close("finished")
    with pytest.raises(RunExistsError, match="run r already exists .*--resume r"):
        ParquetSink(tmp_path, "r", INFO)
    assert not (tmp_path / "r" / LOCK_NAME).exists()
    resumed = ParquetSink.reopen(tmp_path, "r", INFO, keep_through_step=19)
    write_flushes(resumed, 4, start=2)
    resumed.close("finished")
    assert check_whole_flushes(RunStore(tmp_path), "r") == 4


def test_two_resumes_of_one_run_the_second_fails(tmp_path):
    sink = ParquetSink(tmp_path, "r", INFO)
    write_flushes(sink, 2)
    sink.close("interrupted")
    first = ParquetSink.reopen(tmp_path, "r", INFO, keep_through_step=19)
    with pytest.raises(RunLockedError, match="run r is being written by"):
        ParquetSink.reopen(tmp_path, "r", INFO, keep_through_step=9)
    write_flushes(first, 3, start=2)
    first.close("finished")
    assert check_whole_flushes(RunStore(tmp_path), "r") == 3


def test_a_killed_writers_lock_is_taken_over_with_a_warning(tmp_path):
    proc = start_writer(tmp_path, "r", flushes=100_000, pause=0.01)
    deadline = time.monotonic() + 30
    while json.loads((tmp_path / "r" / "run.json").read_text()).get("step", 0) < 20:  # 2 flushes at least
        assert time.monotonic() < deadline, proc.stderr.read().decode()
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with pytest.warns(UserWarning, match=rf"taking over the lock of .*:{proc.pid} .*no longer exists"):
        sink = ParquetSink.reopen(tmp_path, "r", INFO, keep_through_step=19)
    write_flushes(sink, 4, start=2)
    sink.close("finished")
    assert check_whole_flushes(RunStore(tmp_path), "r") == 4


def fake_holder(tmp_path, age):
    """A lock of a process on another machine, last rewritten ``age`` seconds ago."""
    path = tmp_path / "r" / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "host": "elsewhere",
                "pid": 1,
                "token": "f00d",
                "purpose": "write",
                "started_at": "2026-01-01T00:00:00+00:00",
                "beat": 7,
                # its clock is a day ahead: never read for ages
                "heartbeat_at": "2099-01-01T00:00:00+00:00",
            }
        )
    )
    os.utime(path, (time.time() - age, time.time() - age))


def test_a_lock_silent_past_its_timeout_is_taken_over(tmp_path):
    fake_holder(tmp_path, age=30)
    with pytest.raises(RunLockedError, match="being written by elsewhere:1 since 2026-01-01"):
        ParquetSink(tmp_path, "r", INFO, lock_timeout=60)
    with pytest.warns(UserWarning, match=r"elsewhere:1 .*last rewritten 30 s ago \(timeout 20 s\)"):
        sink = ParquetSink(tmp_path, "r", INFO, lock_timeout=20)
    write_flushes(sink, 1)
    sink.close("finished")


def test_a_writer_whose_lock_was_taken_stops_writing(tmp_path):
    lock = RunLock(Location(tmp_path), "r", heartbeat_secs=0.05, timeout=1.0)
    sink = ParquetSink(tmp_path, "r", INFO, lock=lock.acquire())
    write_flushes(sink, 1)
    (tmp_path / "r" / LOCK_NAME).write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "other"}))
    time.sleep(0.3)
    with pytest.raises(RunLockedError, match="lost its lock to elsewhere:1"):
        write_flushes(sink, 2, start=1)


def test_heartbeat_keeps_a_silent_writer_live_and_a_stopped_one_turns_stale(tmp_path, monkeypatch):
    monkeypatch.setattr(lock_module, "HEARTBEAT_SECS", 0.05)
    sink = ParquetSink(tmp_path, "r", INFO)
    write_flushes(sink, 1)
    sink.heartbeat(heartbeat_at="2000-01-01T00:00:00+00:00")  # the writer's clock, far off: not read
    store = RunStore(tmp_path, stale_after=0.5)
    deadline = time.monotonic() + 1.5  # a long evaluation: no flush, no run.json write
    while time.monotonic() < deadline:
        assert store.status("r") == "running"
        time.sleep(0.05)
    sink.lock._stop.set()  # the writer hangs: its beats stop, its process lives on
    sink.lock._thread.join()
    assert store.status("r") == "running"
    time.sleep(0.7)
    assert store.status("r") == "stale"
    sink.lock.release()


def test_a_fresh_reader_judges_a_lock_by_its_age_on_the_storage(tmp_path):
    (tmp_path / "r" / "metrics").mkdir(parents=True)
    (tmp_path / "r" / "run.json").write_text(
        json.dumps({"run_id": "r", "status": "running", "heartbeat_at": "2099-01-01T00:00:00+00:00"})
    )
    fake_holder(tmp_path, age=300)
    assert RunStore(tmp_path, stale_after=120).status("r") == "stale"
    fake_holder(tmp_path, age=10)
    assert RunStore(tmp_path, stale_after=120).status("r") == "running"


def test_compact_leaves_a_run_with_a_live_lock_alone(tmp_path):
    sink = ParquetSink(tmp_path, "r", INFO, compact=False)
    write_flushes(sink, 5)
    before = sorted(p.name for p in (tmp_path / "r" / "metrics").iterdir())
    merged, skipped = compact_store(Location(tmp_path), ["r"])
    assert merged == {} and "run r is being written by" in skipped["r"]
    assert sorted(p.name for p in (tmp_path / "r" / "metrics").iterdir()) == before
    sink.close("finished")
    merged, skipped = compact_store(Location(tmp_path), ["r"])
    assert merged == {"r": 5} and skipped == {}
    assert check_whole_flushes(RunStore(tmp_path), "r") == 5


def test_compact_command_names_the_run_it_skipped(tmp_path, capsys):
    from lawn_monitor.cli import main

    done = ParquetSink(tmp_path, "done", INFO, compact=False)
    write_flushes(done, 3)
    done.close("finished")
    resumed = ParquetSink.reopen(tmp_path, "done", INFO, keep_through_step=29, compact=False)
    resumed.heartbeat()
    # The resumed run says "running" only once its run.json is rewritten: compact runs before
    # that would see "finished"; the lock keeps it off the run anyway.
    resumed.info["status"] = "finished"
    resumed.write_info()
    assert main(["compact", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "skipped: run done is being written by" in out and "compacted 0 of 1 ended runs" in out
    resumed.close("finished")
