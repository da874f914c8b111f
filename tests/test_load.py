"""Readers under write load: a query never fails because a live writer merged the files it
listed (they stay compact.GRACE seconds after the merge). benchmarks/load.py measures the same
at scale; here one attempt per query is allowed, so any file deleted under a reader fails it."""

from __future__ import annotations

import threading
import time

import pytest

from lawn_monitor import RunStore, compact, store
from lawn_monitor.sink import ParquetSink
from lawn_monitor.storage import live_files
from tests.store_writer import METRICS, ROWS_PER_FLUSH, flush_table

INFO = {"name": "load", "config": {"writer": "test"}}


def write_until(sink: ParquetSink, stop: threading.Event) -> None:
    i = 0
    while not stop.is_set():
        sink.write(flush_table(sink.run_id, i))
        i += 1
        time.sleep(0.002)


@pytest.mark.slow
def test_queries_during_live_merges_need_no_retry(tmp_path, monkeypatch):
    monkeypatch.setattr(compact, "FANOUT", 4)  # a merge every few flushes
    monkeypatch.setattr(store, "READ_ATTEMPTS", 1)  # a listed file that vanished fails the query
    sinks = [ParquetSink(tmp_path, f"w{i}", INFO) for i in range(3)]
    stop = threading.Event()
    writers = [threading.Thread(target=write_until, args=(sink, stop)) for sink in sinks]
    for thread in writers:
        thread.start()
    reader, failures, queries = RunStore(tmp_path), [], 0
    deadline = time.monotonic() + 8
    try:
        while time.monotonic() < deadline:
            for query in (
                lambda: reader.series([s.run_id for s in sinks], METRICS[0], points=100),
                lambda: reader.sql("SELECT count(*) FROM metrics"),
                lambda: reader.summary("train/loss", by=["writer"], status=None),
            ):
                try:
                    query()
                except Exception as exc:  # noqa: BLE001 - any failure counts
                    failures.append(repr(exc))
                queries += 1
    finally:
        stop.set()
        for thread in writers:
            thread.join()
    merged = [live_files([p.name for p in (tmp_path / s.run_id / "metrics").iterdir()])[1] for s in sinks]
    assert any(merged), "no merge happened: the test did not test anything"
    assert queries >= 3 and failures == []
    for sink in sinks:
        sink.close("finished")
    counts = RunStore(tmp_path).sql("SELECT run_id, count(*) AS n FROM metrics GROUP BY run_id")
    assert dict(zip(counts["run_id"], counts["n"])) == {s.run_id: s.seq * ROWS_PER_FLUSH for s in sinks}
    for sink in sinks:  # at rest: one file each, what the merges covered deleted
        assert [p.name for p in (tmp_path / sink.run_id / "metrics").iterdir()][0].startswith("compact-")
        assert len(list((tmp_path / sink.run_id / "metrics").iterdir())) == 1


def test_a_merge_keeps_its_inputs_for_the_grace_period(tmp_path, monkeypatch):
    monkeypatch.setattr(compact, "FANOUT", 4)
    monkeypatch.setattr(compact, "GRACE", 1.0)
    sink = ParquetSink(tmp_path, "r", INFO, compact=False)
    for i in range(4):
        sink.write(flush_table("r", i))
    folder = tmp_path / "r" / "metrics"
    loc = sink.loc
    assert compact.compact_run(loc, "r") == 4
    live, covered, _ = live_files([p.name for p in folder.iterdir()])
    assert len(live) == 1 and len(covered) == 4  # a reader that listed the parts can still read them
    compact.compact_run(loc, "r")
    assert len(list(folder.iterdir())) == 5  # too soon
    time.sleep(1.1)
    compact.compact_run(loc, "r")
    assert [p.name for p in folder.iterdir()] == [live[0].name]
    sink.close("finished")
