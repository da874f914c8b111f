"""How many files a run holds while its writer flushes as fast as the Monitor allows.

    python benchmarks/flush_files.py [--flushes 5000] [--root DIR] [--sink]

A tiny model under a Monitor with ``flush_every=1`` (a part file every step, the fastest the
Monitor flushes) and live compaction; with ``--sink``, no training at all: 36-row tables written
straight to a ParquetSink, back to back (several times faster than any monitored loop). A watcher thread lists the run's
``metrics/`` folder as often as it can meanwhile; the script prints the most data files it saw at once, the files left
just before ``close`` and after it, and the seconds per flush.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import torch
from torch import nn

from lawn_monitor import Monitor
from lawn_monitor.probes import ProbeConfig
from lawn_monitor.sink import ParquetSink


def flush_table(run_id: str, i: int) -> pa.Table:
    """One flush of a small model: 3 steps x 4 metrics x 3 layers."""
    n = 36
    return pa.table(
        {
            "run_id": [run_id] * n,
            "step": [3 * i + k // 12 for k in range(n)],
            "epoch": [0.0] * n,
            "wall_time": [time.time()] * n,
            "layer": ["", "0.weight", "2.weight"] * 12,
            "metric": [m for m in ("train/loss", "grad_norm", "weight_norm", "update_ratio") for _ in range(3)] * 3,
            "value": [float(i)] * n,
        }
    )


def count(folder: Path) -> int:
    try:
        return sum(1 for p in folder.iterdir() if p.name.endswith(".parquet") and not p.name.startswith("."))
    except FileNotFoundError:
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flushes", type=int, default=5000)
    parser.add_argument("--root", help="store root (default: a new temporary folder)")
    parser.add_argument("--sink", action="store_true", help="write to a ParquetSink directly, no training")
    args = parser.parse_args()
    root = Path(args.root or tempfile.mkdtemp(prefix="flush-files-"))
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
    if args.sink:
        sink = ParquetSink(root, "flush-files", {"name": "flush-files"})
        folder = root / "flush-files" / "metrics"
    else:
        monitor = Monitor(
            model,
            opt,
            root=root,
            name="flush-files",
            total_steps=args.flushes,
            flush_every=1,
            probe_config=ProbeConfig(curvature=False),
        )
        folder = Path(monitor.run_dir) / "metrics"
    most, samples, done = [0], [0], threading.Event()

    def watch() -> None:
        while not done.is_set():
            most[0] = max(most[0], count(folder))
            samples[0] += 1
            time.sleep(0.001)  # leave the writer the GIL

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    start = time.perf_counter()
    for i in range(args.flushes):
        if args.sink:
            sink.write(flush_table("flush-files", i))
        else:
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            monitor.step(loss=loss.detach())
        most[0] = max(most[0], count(folder))
    seconds = time.perf_counter() - start
    before_close = count(folder)
    if args.sink:
        sink.close("finished")
    else:
        monitor.close()
    done.set()
    watcher.join()
    print(
        f"{args.flushes} flushes in {seconds:.1f} s ({1000 * seconds / args.flushes:.2f} ms a flush); "
        f"most data files at once: {most[0]} (after each flush and {samples[0]} listings by a watcher); "
        f"{before_close} before close, {count(folder)} after; run in {root}"
    )


if __name__ == "__main__":
    main()
