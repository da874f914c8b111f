"""A writer process for the crash and concurrency tests: flushes whole, recognisable batches.

    python tests/store_writer.py ROOT RUN_ID FLUSHES [SLEEP_S] [RESUME_FROM]

Flush ``i`` holds steps ``10*i .. 10*i+9`` of ``METRICS`` metrics for ``LAYERS`` layers (so a
reader can tell a whole flush from a partial one and spot a gap or a duplicate), through the
real ParquetSink with compaction made eager so that it runs often while the process is killed.
With RESUME_FROM the run is reopened (``ParquetSink.reopen``) keeping flushes before that one,
and continues from it. Prints ``ready`` once it holds the run; with ``STORE_WRITER_ANNOUNCE=1``
also ``flushed I`` after flush I is written, ``merging`` as a merge starts and ``closing`` before
``close`` (for a reader that keeps reading its output). A run another process holds (or a reused
run id) ends it with one line on stderr and exit code 2.
"""

import os
import sys
import threading
import time

import pyarrow as pa

from lawn_monitor import compact
from lawn_monitor.lock import RunLockedError
from lawn_monitor.sink import ParquetSink, RunExistsError

STEPS_PER_FLUSH = 10
METRICS = ["train/loss", "grad_norm", "weight_norm", "update_ratio"]
LAYERS = ["", "features.0.weight", "classifier.weight"]
ROWS_PER_FLUSH = STEPS_PER_FLUSH * len(METRICS) * len(LAYERS)


def flush_table(run_id: str, i: int) -> pa.Table:
    rows = {k: [] for k in ("run_id", "step", "epoch", "wall_time", "layer", "metric", "value")}
    now = time.time()
    for step in range(STEPS_PER_FLUSH * i, STEPS_PER_FLUSH * (i + 1)):
        for metric in METRICS:
            for layer in LAYERS:
                rows["run_id"].append(run_id)
                rows["step"].append(step)
                rows["epoch"].append(step / 100)
                rows["wall_time"].append(now)
                rows["layer"].append(layer)
                rows["metric"].append(metric)
                rows["value"].append(float(step))
    return pa.table(rows)


ANNOUNCE = os.environ.get("STORE_WRITER_ANNOUNCE") == "1"


_SAYING = threading.Lock()  # the compactor thread announces merges too: one whole line at a time


def say(line: str) -> None:
    if ANNOUNCE:
        with _SAYING:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()


def announce_merges() -> None:
    merge = compact.merge

    def announced(*args, **kwargs):
        say("merging")
        return merge(*args, **kwargs)

    compact.merge = announced


def main() -> int:
    root, run_id, flushes = sys.argv[1], sys.argv[2], int(sys.argv[3])
    pause = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    start = int(sys.argv[5]) if len(sys.argv) > 5 else None
    compact.FANOUT = 4
    if ANNOUNCE:
        announce_merges()
    info = {"name": run_id, "config": {"writer": "test"}, "total_steps": flushes * 10}
    try:
        if start is not None:
            sink = ParquetSink.reopen(root, run_id, info, keep_through_step=STEPS_PER_FLUSH * start - 1)
        else:
            sink = ParquetSink(root, run_id, info)
    except (RunLockedError, RunExistsError) as exc:
        print(f"store_writer: error: {exc}", file=sys.stderr)
        return 2
    print("ready", flush=True)
    for i in range(start or 0, flushes):
        sink.write(flush_table(run_id, i))
        say(f"flushed {i}")
        sink.heartbeat(step=STEPS_PER_FLUSH * (i + 1))
        if pause:
            time.sleep(pause)
    say("closing")
    sink.close("finished")
    return 0


if __name__ == "__main__":
    sys.exit(main())
