"""Readers under write load: many writers flushing and compacting while reader threads query.

    python benchmarks/load.py [--writers 16] [--seconds 60] [--readers 2] [--flush-secs 0.1] [--root DIR]

Each writer slot runs writer processes one after another (``tests/store_writer.py``: the real
ParquetSink, live compaction made eager with FANOUT 4), each a run of 20 to 100 flushes that
ends with ``close`` (its final merge), until ``--seconds`` have passed; a compactor thread runs
``compact_store`` (what ``lawn-monitor compact`` does) over the ended runs every 2 s. Each reader
thread, with a RunStore of its own, asks in turn ``runs()``, ``series()`` of up to four runs,
``summary()`` and ``sql()``, as fast as it can. Any exception a query raises is a failure.

Prints one table row: writers, seconds, runs and flushes written, queries, failures, query
latency p50 / p95 / max, and the load average (1 min) at the end. Then every run is read back:
each must hold all its rows, once.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lawn_monitor import RunStore  # noqa: E402
from lawn_monitor.compact import compact_store  # noqa: E402
from lawn_monitor.storage import Location  # noqa: E402
from tests.store_writer import METRICS, ROWS_PER_FLUSH  # noqa: E402

WRITER = REPO / "tests" / "store_writer.py"


class Load:
    """Writers, a compactor and readers over one store until ``stop`` is set."""

    def __init__(self, root: Path, flush_secs: float, deadline: float) -> None:
        self.root, self.flush_secs, self.deadline = root, flush_secs, deadline
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.written: dict[str, int] = {}  # run id -> flushes, for runs that ended cleanly
        self.ended: list[str] = []
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.writer_errors: list[str] = []

    def writer(self, slot: int) -> None:
        rng = random.Random(slot)
        for n in range(10**6):
            left = self.deadline - time.monotonic()
            if left < 1:
                return
            flushes = max(5, min(rng.randint(20, 100), int(left / self.flush_secs)))
            run_id = f"w{slot:02d}-{n:03d}"
            done = subprocess.run(
                [sys.executable, str(WRITER), str(self.root), run_id, str(flushes), str(self.flush_secs)],
                cwd=REPO,
                capture_output=True,
                text=True,
            )
            with self.lock:
                if done.returncode:
                    self.writer_errors.append(f"{run_id}: {done.stderr.strip()[-300:]}")
                else:
                    self.written[run_id] = flushes
                    self.ended.append(run_id)

    def compactor(self) -> None:
        loc = Location(self.root)
        while not self.stop.wait(2.0):
            with self.lock:
                ended = list(self.ended)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                compact_store(loc, ended)

    def reader(self, seed: int) -> None:
        rng = random.Random(1000 + seed)
        store = RunStore(self.root)
        ids: list[str] = []
        queries = {
            "runs": lambda: store.runs(),
            "series": lambda: store.series(rng.sample(ids, min(4, len(ids))), rng.choice(METRICS), points=500),
            "summary": lambda: store.summary("train/loss", by=["writer"], status=None),
            "sql": lambda: store.sql("SELECT run_id, count(*) AS n FROM metrics GROUP BY run_id"),
        }
        while not self.stop.is_set():
            for name, query in queries.items():
                if name == "series" and not ids:
                    continue
                start = time.perf_counter()
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        result = query()
                except Exception as exc:  # every kind counts: that is what is measured
                    with self.lock:
                        self.failures.append(f"{name}: {type(exc).__name__}: {str(exc)[:200]}")
                    continue
                with self.lock:
                    self.latencies.append(time.perf_counter() - start)
                if name == "runs":
                    ids = result["run_id"].tolist()


def check_rows(root: Path, written: dict[str, int]) -> list[str]:
    """Runs that do not hold each of their rows exactly once."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        counts = RunStore(root).sql(
            "SELECT run_id, count(*) AS n, count(DISTINCT (step, layer, metric)) AS d FROM metrics GROUP BY run_id"
        )
    got = {r.run_id: (r.n, r.d) for r in counts.itertuples()}
    want = {run_id: flushes * ROWS_PER_FLUSH for run_id, flushes in written.items()}
    return [f"{r}: {got.get(r)} rows, want {n}" for r, n in want.items() if got.get(r) != (n, n)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--readers", type=int, default=2)
    parser.add_argument("--flush-secs", type=float, default=0.1, help="each writer's pause between flushes")
    parser.add_argument("--root", help="store root (default: a new temporary folder)")
    args = parser.parse_args()
    root = Path(args.root or tempfile.mkdtemp(prefix="lawn-load-"))
    load = Load(root, args.flush_secs, time.monotonic() + args.seconds)
    writers = [threading.Thread(target=load.writer, args=(i,)) for i in range(args.writers)]
    others = [threading.Thread(target=load.compactor)]
    others += [threading.Thread(target=load.reader, args=(i,)) for i in range(args.readers)]
    start = time.monotonic()
    for thread in writers + others:
        thread.start()
    for thread in writers:
        thread.join()
    load.stop.set()
    for thread in others:
        thread.join()
    elapsed = time.monotonic() - start
    load1 = os.getloadavg()[0]
    lat = np.array(load.latencies) * 1000
    p50, p95, most = np.percentile(lat, [50, 95, 100]) if lat.size else [float("nan")] * 3
    queries = len(load.latencies) + len(load.failures)
    print("| writers | seconds | runs | flushes | queries | failures | p50 ms | p95 ms | max ms | load (1 min) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.writers} | {elapsed:.0f} | {len(load.written)} | {sum(load.written.values())} | {queries} "
        f"| {len(load.failures)} | {p50:.0f} | {p95:.0f} | {most:.0f} | {load1:.1f} |"
    )
    for failure in load.failures[:5]:
        print("failure:", failure)
    for error in load.writer_errors[:5]:
        print("writer error:", error)
    wrong = check_rows(root, load.written)
    print(f"rows: {len(load.written) - len(wrong)} of {len(load.written)} runs hold each of their rows once")
    for line in wrong[:5]:
        print("  ", line)
    return 1 if load.failures or wrong or load.writer_errors else 0


if __name__ == "__main__":
    sys.exit(main())
