"""Kill writers at random moments, resume them, compact, and count what was lost.

    python benchmarks/stress.py [--kills 40] [--seed 0] [--root DIR]

Each round starts a writer process (``tests/store_writer.py``: flushes of 10 steps through the
real ParquetSink, merging every 4 files) on a new run, or resumes a run an earlier round killed
(``ParquetSink.reopen`` from the first flush it had not confirmed: the stale lock of the dead
writer is taken over), and SIGKILLs it: at a random moment while it flushes, just after a merge
starts (compaction), or just after ``close`` begins (final merge, run.json, lock release). The
writer confirms each flush on stdout once ``write`` has returned. At the end every run is read
back (RunStore and each file with pyarrow), then compacted with ``compact_store`` and read again.

Counted per run, and printed summed over runs:

* unreadable: data files a reader cannot read (and files compaction quarantined as ``*.corrupt``);
* duplicates: rows whose (step, layer, metric) is there twice;
* gaps: flushes missing below the highest flush present;
* partial: flushes present with some of their rows only;
* lost: confirmed flushes missing (only the flush being written when the writer died may be
  absent or present: that is the last flush interval; "unconfirmed kept" counts those present).
"""

from __future__ import annotations

import argparse
import os
import queue
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lawn_monitor import RunStore  # noqa: E402
from lawn_monitor.compact import compact_store  # noqa: E402
from lawn_monitor.storage import Location, live_files  # noqa: E402
from tests.store_writer import ROWS_PER_FLUSH, STEPS_PER_FLUSH  # noqa: E402

WRITER = REPO / "tests" / "store_writer.py"
PHASES = ("flush", "merge", "close")


def start(root: Path, run_id: str, flushes: int, resume_from: int | None) -> tuple[subprocess.Popen, queue.Queue]:
    args = [sys.executable, str(WRITER), str(root), run_id, str(flushes), "0.002"]
    if resume_from is not None:
        args.append(str(resume_from))
    proc = subprocess.Popen(
        args,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "STORE_WRITER_ANNOUNCE": "1", "PYTHONWARNINGS": "ignore"},
    )
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:
            lines.put(line.strip())
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return proc, lines


def wait_for(lines: queue.Queue, marker: str, seen: list[str], timeout: float = 60.0) -> bool:
    """Read lines until one starts with ``marker``; False if the writer ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=deadline - time.monotonic())
        except queue.Empty:
            return False
        if line is None:
            lines.put(None)
            return False
        seen.append(line)
        if line.startswith(marker):
            return True
    return False


def drain(lines: queue.Queue, seen: list[str]) -> None:
    while True:
        line = lines.get(timeout=30)
        if line is None:
            return
        seen.append(line)


def confirmed(seen: list[str]) -> int:
    """The last flush the writer confirmed (-1: none)."""
    return max((int(line.split()[1]) for line in seen if line.startswith("flushed ")), default=-1)


def check(root: Path, runs: dict[str, int]) -> dict[str, int]:
    """Sum over runs of unreadable files, duplicate rows, gaps and lost flushes."""
    store = RunStore(root, stale_after=0.0)
    totals = {
        "unreadable": 0,
        "quarantined": 0,
        "duplicates": 0,
        "partial": 0,
        "gaps": 0,
        "lost": 0,
        "unconfirmed kept": 0,
    }
    for run_id, last in runs.items():
        folder = root / run_id / "metrics"
        names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
        totals["quarantined"] += sum(name.endswith(".corrupt") for name in names)
        live, _, other = live_files(names)
        for name in [s.name for s in live] + other:
            try:
                pq.read_table(folder / name)
            except Exception:  # noqa: BLE001 - any failure to read is what is counted
                totals["unreadable"] += 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rows = store._query(
                "SELECT step, layer, metric FROM read_parquet(?)", [], [run_id], ["step", "layer", "metric"]
            )
        totals["duplicates"] += int(len(rows) - len(rows.drop_duplicates()))
        per_flush = rows.drop_duplicates().groupby(rows["step"] // STEPS_PER_FLUSH).size()
        totals["partial"] += int((per_flush != ROWS_PER_FLUSH).sum())
        flushes = set(int(f) for f in per_flush.index)
        top = max(flushes, default=-1)
        totals["gaps"] += sum(1 for f in range(top) if f not in flushes)
        totals["lost"] += sum(1 for f in range(last + 1) if f not in flushes)
        totals["unconfirmed kept"] += sum(1 for f in flushes if f > last)
    return totals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", help="store root (default: a new temporary folder)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    root = Path(args.root or tempfile.mkdtemp(prefix="stress-"))
    runs: dict[str, int] = {}  # run -> last confirmed flush
    resumable: list[str] = []
    kills = {phase: 0 for phase in PHASES}
    finished = refused = 0
    started = time.monotonic()
    for round_ in range(args.kills):
        phase = PHASES[round_ % len(PHASES)]
        if resumable and rng.random() < 0.5:
            run_id = resumable.pop(rng.randrange(len(resumable)))
            resume_from = runs[run_id] + 1
        else:
            run_id, resume_from = f"stress-{round_:03d}", None
            runs[run_id] = -1
        flushes = (resume_from or 0) + (rng.randint(6, 30) if phase == "close" else 100_000)
        proc, lines = start(root, run_id, flushes, resume_from)
        seen: list[str] = []
        if not wait_for(lines, "ready", seen):
            proc.wait()
            err = proc.stderr.read().strip()
            refused += 1
            print(f"round {round_}: {run_id} did not start: {err.splitlines()[-1] if err else proc.returncode}")
            continue
        if phase == "flush":
            time.sleep(rng.uniform(0.05, 1.0))
        elif phase == "merge":
            for _ in range(rng.randint(1, 12)):  # the n-th merge, so that wider merges are hit too
                if not wait_for(lines, "merging", seen):
                    break
            time.sleep(rng.uniform(0.0, 0.01))
        else:
            wait_for(lines, "closing", seen)
            time.sleep(rng.uniform(0.0, 0.05))
        proc.send_signal(signal.SIGKILL)
        rc = proc.wait()
        drain(lines, seen)
        proc.stderr.read()
        runs[run_id] = max(runs[run_id], confirmed(seen))
        if rc == 0:
            finished += 1
        else:
            kills[phase] += 1
            resumable.append(run_id)
    before = check(root, runs)
    with warnings.catch_warnings(record=True) as taken:
        warnings.simplefilter("always")
        merged, skipped = compact_store(Location(root), sorted(runs))
    after = check(root, runs)
    total = sum(kills.values())
    print(
        f"{total} SIGKILLs ({', '.join(f'{n} {p}' for p, n in kills.items())}); {finished} writers finished "
        f"before their kill; {refused} refused to start; {len(runs)} runs; {time.monotonic() - started:.0f} s"
    )
    for label, totals in (("after the kills", before), ("after compact", after)):
        print(f"{label}: " + ", ".join(f"{k} {v}" for k, v in totals.items()))
    print(
        f"compact: {sum(merged.values())} files merged in {len(merged)} runs, {len(skipped)} skipped, "
        f"{sum('taking over the lock' in str(w.message) for w in taken)} stale locks taken over; store in {root}"
    )
    bad = any(totals[k] for totals in (before, after) for k in ("unreadable", "duplicates", "partial", "gaps", "lost"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
