"""What `make demo` shows and how long it takes: its sweep run to the end, then the flattening
signals of each run every 30 s of its training.

    python benchmarks/demo.py                      # runs make demo's sweep in a temporary folder
    python benchmarks/demo.py --store /tmp/demo    # there (kept); an existing demo store is only read

The sweep is the Makefile's (DEMO_ARGS, read from it with make): SGD, SGD-LAWN, Adam and Adam-LAWN
at the same time, one process and one torch thread each. Printed: the sweep's wall time (start to
exit, with Python and data start-up), each run's training time (run.json: created to ended) and
final test accuracy, and per run, the mean over the 5 s before each mark (seconds since the run
was created) of train loss, flat fraction, logit norm and whole-model weight norm, then the step
of the LAWN switch. Run it on an otherwise idle machine for the demo's own speed; the load
average is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from lawn_monitor.store import RunStore  # noqa: E402

MARKS = [10, 20, 30, 60, 90, 120, 150, 180, 240, 300]  # seconds of training
SIGNALS = ["train/loss", "flat_frac", "logit_norm", "weight_norm"]


def demo_args() -> list[str]:
    """``make demo``'s sweep flags, from the Makefile (one place says what the demo runs)."""
    out = subprocess.run(
        ["make", "--no-print-directory", "-s", "--eval", "print-demo-args: ; @echo $(DEMO_ARGS)", "print-demo-args"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0 or not out.stdout.strip():
        sys.exit(f"benchmarks: could not read DEMO_ARGS from the Makefile with make: {out.stderr.strip()}")
    return shlex.split(out.stdout)


def build_demo(root: Path) -> float:
    """Run the demo's sweep into ``root`` to its end; returns its wall time in seconds."""
    argv = [sys.executable, "-m", "lawn_monitor.cli", "sweep", *demo_args(), "--root", str(root), "--no-progress"]
    print("demo sweep: lawn-monitor " + " ".join(argv[3:]), flush=True)
    started = time.perf_counter()
    subprocess.run(argv, cwd=REPO, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    seconds = time.perf_counter() - started
    print(f"demo sweep: {seconds:.0f} s from start to exit", flush=True)
    return seconds


def report(root: Path) -> None:
    store = RunStore(root)
    runs = store.runs().sort_values("name", ignore_index=True)
    ids, names = runs["run_id"].tolist(), dict(zip(runs["run_id"], runs["name"]))
    for run in runs.itertuples():
        trained = pd.Timestamp(run.ended_at) - pd.Timestamp(run.created_at) if run.ended_at else None
        print(
            f"  {run.name:18s} {run.status:11s} trained {trained.total_seconds() if trained else float('nan'):5.0f} s"
            f"  test_acc {run.test_acc:.4f}"
        )
    span = store.series(ids, "train/loss", points=None, x="time")["x"].max()
    marks = [m for m in MARKS if m <= span]
    for metric in SIGNALS:
        df = store.series(ids, metric, points=None, x="time")
        rows = []
        for run_id in ids:
            d = df[df["run_id"] == run_id]
            rows.append(
                {
                    "run": names[run_id],
                    **{f"{m} s": d.loc[(d["x"] > m - 5) & (d["x"] <= m), "value"].mean() for m in marks},
                    "end": d["value"].tail(50).mean(),
                }
            )
        print(f"{metric}, mean over the 5 s before each mark (seconds since the run was created):")
        print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3g}", na_rep="-"))
    switches = store.switch_steps(ids)
    for row in switches.itertuples():
        print(f"LAWN switch: {names[row.run_id]} at step {row.step} (epoch {row.epoch:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="where to run the demo (kept); an existing demo store is only read")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lawn-demo-bench-")) if args.store is None else None
    root = args.store or tmp / "runs"
    try:
        print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
        if not (root.is_dir() and any(root.iterdir())):
            build_demo(root)
        print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        report(root)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
