"""A writer process for the crash and concurrency tests: flushes whole, recognisable batches.

    python tests/store_writer.py ROOT RUN_ID FLUSHES [SLEEP_S]

Flush ``i`` holds steps ``10*i .. 10*i+9`` of ``METRICS`` metrics for ``LAYERS`` layers (so a
reader can tell a whole flush from a partial one and spot a gap or a duplicate), through the
real ParquetSink with compaction made eager so that it runs often while the process is killed.
"""
import sys
import time

import pyarrow as pa

from lawn_monitor import compact
from lawn_monitor.sink import ParquetSink

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


def main() -> None:
    root, run_id, flushes = sys.argv[1], sys.argv[2], int(sys.argv[3])
    pause = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    compact.FANOUT = 4
    sink = ParquetSink(root, run_id, {"name": run_id, "config": {"writer": "test"}, "total_steps": flushes * 10})
    print("ready", flush=True)
    for i in range(flushes):
        sink.write(flush_table(run_id, i))
        sink.heartbeat(step=STEPS_PER_FLUSH * (i + 1))
        if pause:
            time.sleep(pause)
    sink.close("finished")


if __name__ == "__main__":
    main()
