"""The data layer at scale: sink throughput, compaction, and the dashboard's query latency.

    python benchmarks/store.py                          # 200 runs x 50 layers x 8 metrics x 20k steps
    python benchmarks/store.py --runs 20 --steps 5000   # a quick look
    python benchmarks/store.py --store /tmp/big --skip-build   # query an existing store again

Builds a synthetic store through the project's own ParquetSink (live compaction on, as in a real
run), then times the queries the dashboard makes, each repeated, as p50 / p95:

* runs list (``RunStore.runs``: every run.json plus latest/best test accuracy),
* one downsampled series for 10 runs (``series(..., points=1000)``),
* one layer heatmap (``layers(run, metric, points=200)``),
* the Table-2 summary (``summary("test/acc", by=[optimizer, lawn, batch_size])``).

Shape of a run, like a long monitored training run: the whole-model scalars every step, the
per-layer metrics every ``--layer-every`` steps (a probe cadence), test accuracy every epoch.
Then it writes the same scalars of one run with ``torch.utils.tensorboard`` and loads them with
TensorBoard's own ``EventAccumulator``, against ``RunStore.series`` at full fidelity, and prints
the ratio.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from lawn_monitor.schema import SCHEMA
from lawn_monitor.sink import ParquetSink
from lawn_monitor.store import RunStore

SCALARS = [
    "train/loss",
    "train/acc",
    "lr",
    "phase",
    "logit_norm",
    "max_prob",
    "flat_frac",
    "step_time",
    "samples_per_s",
    "weight_norm",
    "grad_norm",
    "update_ratio",
]
LAYER_METRICS = [
    "weight_norm",
    "grad_norm",
    "update_norm",
    "update_ratio",
    "grad_weight_cos",
    "gn_trace",
    "gn_trace_se",
    "hessian_trace",
]


class RunShape:
    """The fixed layer/metric pattern of one flush (strings built once, reused every flush)."""

    def __init__(self, layers: int, steps_per_flush: int, layer_every: int) -> None:
        self.layers = [f"features.{i}.weight" for i in range(layers)]
        self.steps_per_flush = steps_per_flush
        self.layer_steps = max(1, steps_per_flush // layer_every)
        scalar_metric = np.tile(np.array(SCALARS, dtype=object), steps_per_flush)
        layer_metric = np.tile(np.repeat(np.array(LAYER_METRICS, dtype=object), layers), self.layer_steps)
        layer_layer = np.tile(np.tile(np.array(self.layers, dtype=object), len(LAYER_METRICS)), self.layer_steps)
        self.metric = pa.array(np.concatenate([scalar_metric, layer_metric]), pa.string())
        self.layer = pa.array(np.concatenate([np.full(len(scalar_metric), "", dtype=object), layer_layer]), pa.string())
        self.n_scalar, self.n = len(scalar_metric), len(scalar_metric) + len(layer_metric)
        self.scalar_step = np.repeat(np.arange(steps_per_flush), len(SCALARS))
        self.layer_step = np.repeat(np.arange(self.layer_steps) * layer_every, len(LAYER_METRICS) * layers)

    def table(self, run_id: pa.Array, start: int, rng: np.random.Generator, t0: float) -> pa.Table:
        step = np.concatenate([self.scalar_step, self.layer_step]) + start
        value = np.exp(-step / 5000.0) * (1 + 0.1 * rng.standard_normal(self.n))
        return pa.table(
            [
                run_id,
                pa.array(step),
                pa.array(step / 200.0),
                pa.array(t0 + step * 0.05),
                self.layer,
                self.metric,
                pa.array(value),
            ],
            schema=SCHEMA,
        )


def build(
    root: Path, runs: int, layers: int, steps: int, layer_every: int, steps_per_flush: int
) -> tuple[int, float, float]:
    """Write the store; returns (rows, seconds inside sink.write, seconds from open to close)."""
    shape = RunShape(layers, steps_per_flush, layer_every)
    rng = np.random.default_rng(0)
    rows, busy, writing = 0, 0.0, 0.0
    methods = [("sgd", False), ("sgd", True), ("adam", False), ("adam", True)]
    batch_sizes = [256, 1024, 4096, 10240, 16384]
    for r in range(runs):
        opt, lawn = methods[r % 4]
        batch = batch_sizes[(r // 4) % len(batch_sizes)]
        seed = r // (4 * len(batch_sizes))
        run_id = f"bench-{r:04d}-{opt}{'-lawn' if lawn else ''}-b{batch}-s{seed}"
        config = {
            "dataset": "cifar10",
            "model": "vgg19",
            "optimizer": opt,
            "lawn": lawn,
            "batch_size": batch,
            "seed": seed,
            "epochs": steps // 200,
        }
        t0 = time.time()
        start = time.perf_counter()
        sink = ParquetSink(
            root, run_id, {"name": run_id, "config": config, "total_steps": steps, "layers": shape.layers}
        )
        run_col = pa.array([run_id] * shape.n, pa.string())
        acc_run = pa.array([run_id], pa.string())
        for first in range(0, steps, steps_per_flush):
            table = shape.table(run_col, first, rng, t0)
            w = time.perf_counter()
            sink.write(table)
            writing += time.perf_counter() - w
            if (first + steps_per_flush) % 200 == 0:  # an epoch: test accuracy
                s = first + steps_per_flush - 1
                sink.write(
                    pa.table(
                        [
                            acc_run,
                            pa.array([s]),
                            pa.array([s / 200.0]),
                            pa.array([t0 + s * 0.05]),
                            pa.array([""]),
                            pa.array(["test/acc"]),
                            pa.array([0.9 + 0.05 * rng.random()]),
                        ],
                        schema=SCHEMA,
                    )
                )
            rows += shape.n
        sink.close("finished", step=steps)
        busy += time.perf_counter() - start
        if (r + 1) % max(1, runs // 10) == 0:
            print(f"  built {r + 1}/{runs} runs, {rows / 1e6:.1f}M rows, {rows / busy / 1e6:.2f}M rows/s", flush=True)
    return rows, writing, busy


def timed(fn, repeat: int) -> tuple[float, float, float]:
    """(first call, p50, p95) in milliseconds."""
    times = []
    for _ in range(repeat + 1):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    first, rest = times[0], sorted(times[1:])
    return first, statistics.median(rest), rest[min(len(rest) - 1, int(round(0.95 * (len(rest) - 1))))]


def tensorboard_ratio(store: RunStore, run_id: str, tmp: Path) -> None:
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("tensorboard not installed (pip install tensorboard): TensorBoard comparison skipped")
        return
    frames = {m: store.series(run_id, m, points=None) for m in SCALARS}
    logdir = tmp / "tb"
    writer = SummaryWriter(str(logdir))
    for metric, df in frames.items():
        for step, value in zip(df["step"].tolist(), df["value"].tolist()):
            writer.add_scalar(metric, value, step)
    writer.close()
    n = sum(len(df) for df in frames.values())

    def load_tb():
        acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
        acc.Reload()
        return sum(len(acc.Scalars(m)) for m in SCALARS)

    def load_ours():
        return sum(len(RunStore(store.root).series(run_id, m, points=None)) for m in SCALARS)

    t_tb = min(timed(load_tb, 2)[1:])
    t_ours = min(timed(load_ours, 2)[1:])
    assert load_tb() == load_ours() == n
    print(
        f"one run's {len(SCALARS)} scalars ({n:,} points, full fidelity): TensorBoard EventAccumulator "
        f"{t_tb:.0f} ms, RunStore (fresh store each time) {t_ours:.0f} ms: {t_tb / t_ours:.1f}x faster"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="store folder (default: a temporary one, deleted after)")
    parser.add_argument("--skip-build", action="store_true", help="query an existing --store")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--layers", type=int, default=50)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--layer-every", type=int, default=16, help="steps between per-layer rows")
    parser.add_argument("--steps-per-flush", type=int, default=100, help="steps of rows in one part file")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="lawn-store-bench-"))
    root = args.store or tmp / "store"
    try:
        if not args.skip_build:
            print(
                f"building {args.runs} runs x {args.layers} layers x {len(LAYER_METRICS)} per-layer metrics "
                f"(every {args.layer_every} steps) + {len(SCALARS)} scalars x {args.steps} steps "
                f"in {root}, {args.steps_per_flush} steps per flush",
                flush=True,
            )
            rows, writing, busy = build(
                root, args.runs, args.layers, args.steps, args.layer_every, args.steps_per_flush
            )
            size = sum(p.stat().st_size for p in root.rglob("*.parquet"))
            files = len(list(root.rglob("*.parquet")))
            print(
                f"sink: {rows:,} rows; the writer waits {writing:.1f} s in write() = "
                f"{rows / writing / 1e6:.2f}M rows/s; open to close (live compaction in its thread, "
                f"final merge) {busy:.1f} s = {rows / busy / 1e6:.2f}M rows/s; {size / 1e9:.2f} GB in "
                f"{files} files; peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB",
                flush=True,
            )
        store = RunStore(root)
        runs = store.runs()
        total = store._query("SELECT count(*) AS n FROM read_parquet(?)", [], None, ["n"])["n"].iloc[0]
        print(f"store: {len(runs)} runs, {total:,} rows")
        ten = runs["run_id"].iloc[:10].tolist()
        queries = {
            "runs list": lambda s: s.runs(),
            "series, 10 runs, 1000 pts": lambda s: s.series(ten, "train/loss", points=1000),
            "series, 10 runs, layer": lambda s: s.series(ten, "update_ratio", layer="features.7.weight"),
            "layer heatmap, 1 run": lambda s: s.layers(ten[0], "update_ratio", points=200),
            "Table-2 summary": lambda s: s.summary("test/acc", by=["optimizer", "lawn", "batch_size"]),
        }
        # cold: the first call on a new RunStore (a fresh dashboard); p50/p95: the same call
        # repeated on one RunStore, as the dashboard does on every refresh.
        print(f"{'query':28s} {'cold ms':>8s} {'p50 ms':>8s} {'p95 ms':>8s}")
        for name, fn in queries.items():
            t = time.perf_counter()
            warm = RunStore(root)
            fn(warm)
            cold = (time.perf_counter() - t) * 1000
            _, p50, p95 = timed(lambda fn=fn, warm=warm: fn(warm), args.repeat)
            print(f"{name:28s} {cold:8.1f} {p50:8.1f} {p95:8.1f}", flush=True)
        print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
        tensorboard_ratio(store, ten[0], tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
