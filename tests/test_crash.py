"""Crash safety and concurrent reads: SIGKILLed writers, compaction under a reader's feet."""

import os
import random
import signal
import time
import warnings

import pytest

from lawn_monitor import RunStore
from lawn_monitor.compact import compact_store
from tests.helpers import check_whole_flushes, spawn_writer, start_writer, wait_ready
from tests.store_writer import STEPS_PER_FLUSH


@pytest.mark.slow
def test_sigkill_at_random_moments_leaves_a_readable_store(tmp_path):
    rng = random.Random(0)
    killed = [f"killed-{i:02d}" for i in range(12)]
    procs = [spawn_writer(tmp_path, run_id, flushes=100_000) for run_id in killed]  # start together
    for proc in procs:
        wait_ready(proc)
    for proc in procs:  # each dies at its own random moment: mid-flush, mid-compaction, between
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    store = RunStore(tmp_path, stale_after=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing broken to skip: every file in place is whole
        runs = store.runs().set_index("run_id")
        written = {run_id: check_whole_flushes(store, run_id) for run_id in killed}
        store.series(killed, "train/loss")
        store.layers(killed[0], "grad_norm")
    assert set(runs.index) == set(killed) and (runs["status"] == "stale").all()
    assert max(written.values()) >= 2 * 4, "no writer lived long enough to compact: kill later"
    # At most the last flush is lost: what run.json's heartbeat says was written is there.
    for run_id in killed:
        assert written[run_id] * STEPS_PER_FLUSH >= runs.loc[run_id, "step"]
    # A temp file a killed writer left behind is named in a warning, never read.
    stray = tmp_path / killed[0] / "metrics" / ".part-00000099-abcdef.parquet.x1.tmp"
    stray.write_bytes(b"half a fl")
    os.utime(stray, (time.time() - 3600, time.time() - 3600))
    with pytest.warns(UserWarning, match=stray.name):
        RunStore(tmp_path, stale_after=0.0).runs()
    # The killed runs can be compacted afterwards; their rows stay the same, the temp files go.
    compact_store(store.loc, killed)
    assert not stray.exists()
    after = RunStore(tmp_path)
    assert {run_id: check_whole_flushes(after, run_id) for run_id in killed} == written
    for run_id in killed:
        assert len(list((tmp_path / run_id / "metrics").glob("*.parquet"))) <= 1


@pytest.mark.slow
def test_reader_sees_monotone_counts_and_no_duplicates_while_compaction_runs(tmp_path):
    writers = {f"live-{i}": start_writer(tmp_path, f"live-{i}", flushes=120, pause=0.03) for i in range(2)}
    store = RunStore(tmp_path)
    seen = {run_id: [] for run_id in writers}
    compacted_while_live = set()
    deadline = time.monotonic() + 60
    while any(p.poll() is None for p in writers.values()) and time.monotonic() < deadline:
        for run_id in writers:
            seen[run_id].append(check_whole_flushes(store, run_id))
            if writers[run_id].poll() is None and any(
                name.startswith("compact-") for name, _ in store.loc.listdir(f"{run_id}/metrics")
            ):
                compacted_while_live.add(run_id)
    for p in writers.values():
        assert p.wait(timeout=30) == 0, p.stderr.read().decode()
    for run_id, counts in seen.items():
        assert len(counts) > 10, "the reader hardly read while the writer wrote"
        assert counts == sorted(counts), f"{run_id}: row count went down: {counts}"
        assert check_whole_flushes(store, run_id) == 120
        names = [p.name for p in (tmp_path / run_id / "metrics").glob("*.parquet")]
        assert len(names) == 1 and names[0].startswith("compact-00000000-00000119")
    assert compacted_while_live == set(writers), "compaction never ran while the reader read"
