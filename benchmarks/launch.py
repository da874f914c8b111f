"""What each launcher adds to a run: the same sweep of tiny runs through every launcher, one run
at a time, and the wall time of the sweep that is not training.

    python benchmarks/launch.py                 # 4 runs (digits, mlp, 1 epoch) per launcher
    python benchmarks/launch.py --runs 8 --repeat 2

For each launcher: ``lawn-monitor sweep --fresh --parallel 1`` in a temporary store, timed from
the command's start to its exit. Training time is each run's own span in run.json (``created_at``
to ``ended_at``: from its Monitor's start to its end); what is left of the wall time, divided by
the runs, is the launch overhead per run: process and interpreter start-up, imports, loading the
data set and building the model, the launcher's scheduling, and for Ray a local instance's start
and stop (once per sweep, shared by its runs; the "joined" row joins one already running, as a
sweep on a cluster does). The local in-process launcher pays the same data loading and model
building, so its row is the floor the others are compared with. The machine's load average is
printed with the table: on a loaded machine every figure grows.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lawn_monitor import RunStore  # noqa: E402

TINY = [
    "--dataset",
    "digits",
    "--model",
    "mlp",
    "--epochs",
    "1",
    "--free-epochs",
    "0.5",
    "--no-curvature",
    "--no-progress",
]


def launchers(address: str | None, logs: str) -> dict[str, list[str]]:
    rows = {
        "local (in process)": ["--launcher", "local"],
        "ray (local instance, started per sweep)": ["--launcher", "ray", "--parallel", "1"],
        "slurm (submitit local executor)": ["--launcher", "slurm", "--slurm-cluster", "local", "--parallel", "1"],
    }
    rows["slurm (submitit local executor)"] += ["--slurm-folder", logs]
    if address:
        rows["ray (joined, instance already running)"] = [
            "--launcher",
            "ray",
            "--ray-address",
            address,
            "--parallel",
            "1",
        ]
    return rows


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def measure(args: list[str], runs: int) -> tuple[float, float]:
    """(wall seconds, summed training seconds) of one sweep of ``runs`` runs."""
    optimizers = ",".join(["sgd", "adam", "adamw", "lamb", "adamp"][: max(1, runs // 2)])
    with tempfile.TemporaryDirectory(prefix="lm-launch-") as root:
        argv = [sys.executable, "-m", "lawn_monitor.cli", "sweep", *TINY, "--optimizers", optimizers]
        argv += ["--lawn", "both" if runs > 1 else "off", "--root", root, "--fresh", *args]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        start = time.perf_counter()
        out = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if out.returncode != 0:
            raise SystemExit(
                f"sweep {' '.join(args)} failed ({out.returncode}):\n{out.stdout[-2000:]}{out.stderr[-2000:]}"
            )
        listed = RunStore(root).runs()
        train = sum(_seconds(r.ended_at) - _seconds(r.created_at) for r in listed.itertuples())
        return wall, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=4, help="runs per sweep, an even number (default 4)")
    parser.add_argument("--repeat", type=int, default=1, help="sweeps per launcher; the fastest is kept")
    parser.add_argument("--no-joined", action="store_true", help="skip the row that joins a running Ray instance")
    opts = parser.parse_args()
    address = None
    if not opts.no_joined:
        import ray

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, _temp_dir="/tmp/lm-bench-ray")
        address = ray.get_runtime_context().gcs_address
    load_before = os.getloadavg()
    results = {}
    with tempfile.TemporaryDirectory(prefix="lm-launch-logs-") as logs:
        for name, args in launchers(address, logs).items():
            best = min((measure(args, opts.runs) for _ in range(opts.repeat)), key=lambda m: m[0] - m[1])
            results[name] = best
            print(f"{name}: wall {best[0]:.1f} s, training {best[1]:.1f} s", file=sys.stderr, flush=True)
    if address:
        import ray

        ray.shutdown()
    load_after = os.getloadavg()
    base = (results["local (in process)"][0] - results["local (in process)"][1]) / opts.runs
    print(f"{opts.runs} runs per sweep (digits, mlp, 1 epoch), one at a time; {os.cpu_count()} CPUs")
    print(f"load average (1, 5, 15 min): before {load_before}, after {load_after}\n")
    print("| launcher | sweep wall (s) | training (s) | overhead per run (s) | vs local in process (s) |")
    print("|---|---|---|---|---|")
    for name, (wall, train) in results.items():
        per_run = (wall - train) / opts.runs
        print(f"| {name} | {wall:.1f} | {train:.1f} | {per_run:.1f} | {per_run - base:+.1f} |")


if __name__ == "__main__":
    main()
