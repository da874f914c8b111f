"""The dashboard on a large store: time from request to a rendered Runs page and Compare page.

    python benchmarks/app.py --store /data/big-store          # an existing store (benchmarks/store.py --store DIR)
    python benchmarks/app.py                                  # builds 100 runs x 5,000 steps first (temp folder)
    python benchmarks/app.py --runs 500 --steps 2000 --store /tmp/wide --keep

Starts ``streamlit run app`` on 127.0.0.1 against the store and opens each page in headless
Chromium (the system's ``chromium`` through Playwright, as tests/test_browser.py does), each load
in a fresh browser session. A load counts from ``page.goto`` until the page's script has finished
(Streamlit's ``data-test-script-state`` is ``notRunning``) and its table and charts are on screen.
The first load of each page hits a cold server; the repeats are spaced past the app's 2 s cache
of the runs list, so each of them lists the store again. The Table-2 summary (Compare) is kept
until the set of finished runs changes, so only the first Compare load pays for it.
Beside the page times it prints the RunStore queries each page makes, timed alone in this process.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from lawn_monitor.sink import SCHEMA, ParquetSink  # noqa: E402
from lawn_monitor.store import RunStore  # noqa: E402

SCALARS = ["train/loss", "train/acc", "lr", "phase", "grad_norm", "weight_norm", "update_ratio", "logit_norm",
           "max_prob", "flat_frac", "step_time", "samples_per_s"]
LAYER_METRICS = ["weight_norm", "grad_norm", "update_ratio", "gn_trace"]
RUNS_TTL = 2.0  # app/state.py's cache lifetime of the runs list


def build(root: Path, runs: int, steps: int, layers: int, layer_every: int, steps_per_flush: int,
          steps_per_epoch: int) -> int:
    """A sweep written through the project's ParquetSink (compaction on): scalars every step,
    per-layer metrics every ``layer_every`` steps, test accuracy every epoch. Returns rows written."""
    rng = np.random.default_rng(0)
    methods = [("sgd", False), ("sgd", True), ("adam", False), ("adam", True)]
    batch_sizes = [256, 4096, 10240]
    layer_names = [f"features.{i}.weight" for i in range(layers)]
    rows = 0
    for r in range(runs):
        opt, lawn = methods[r % 4]
        batch = batch_sizes[(r // 4) % len(batch_sizes)]
        run_id = f"bench-{r:04d}-{opt}{'-lawn' if lawn else ''}-b{batch}"
        config = {"dataset": "cifar10", "model": "vgg19", "optimizer": opt, "lawn": lawn, "batch_size": batch,
                  "seed": r // 12, "epochs": steps // steps_per_epoch}
        sink = ParquetSink(root, run_id, {"name": run_id, "config": config, "total_steps": steps,
                                          "steps_per_epoch": steps_per_epoch})
        t0 = time.time()
        for start in range(0, steps, steps_per_flush):
            step_range = np.arange(start, min(start + steps_per_flush, steps)) + 1
            s_step = np.repeat(step_range, len(SCALARS))
            s_metric = np.tile(SCALARS, len(step_range))
            l_steps = step_range[step_range % layer_every == 0]
            l_step = np.repeat(l_steps, len(LAYER_METRICS) * layers)
            l_metric = np.tile(np.repeat(LAYER_METRICS, layers), len(l_steps))
            l_layer = np.tile(layer_names, len(l_steps) * len(LAYER_METRICS))
            e_step = step_range[step_range % steps_per_epoch == 0]
            step = np.concatenate([s_step, l_step, e_step])
            metric = np.concatenate([s_metric, l_metric, np.full(len(e_step), "test/acc")])
            layer = np.concatenate([np.full(len(s_step), ""), l_layer, np.full(len(e_step), "")])
            value = np.exp(-step / (steps / 3)) * (1 + 0.1 * rng.standard_normal(len(step)))
            acc = metric == "test/acc"
            value[acc] = 0.9 - 0.5 * np.exp(-step[acc] / (steps / 4)) + 0.01 * rng.standard_normal(acc.sum())
            table = pa.table([pa.array([run_id] * len(step)), pa.array(step), pa.array(step / steps_per_epoch),
                              pa.array(t0 + step * 0.05), pa.array(layer), pa.array(metric), pa.array(value)],
                             schema=SCHEMA)
            sink.write(table)
            sink.heartbeat(step=int(step_range[-1]))
            rows += len(step)
        sink.close("finished")
    return rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load(context, url: str, expect: str) -> tuple[float, float]:
    """Seconds from request to the page's frame (HTML and scripts loaded), and to the page's own
    script done with ``expect`` (a CSS selector) on screen. A new tab is a new Streamlit session;
    the context keeps the browser's cache of Streamlit's static files, as for anyone who came before."""
    page = context.new_page()
    try:
        started = time.perf_counter()
        page.goto(url)
        frame = time.perf_counter() - started
        page.locator(expect).first.wait_for(timeout=120_000)
        page.wait_for_function(
            "() => document.querySelector('[data-testid=stApp]')?.getAttribute('data-test-script-state') === 'notRunning'",
            timeout=120_000)
        return frame, time.perf_counter() - started
    finally:
        page.close()


def timed(fn, repeat: int = 3) -> str:
    """The first call (cold: a new RunStore has no per-run cache) and the median of the next ones."""
    times = []
    for _ in range(1 + repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return f"first {times[0]:6.3f} s, then {statistics.median(times[1:]):6.3f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="an existing store root; with --runs etc. it is built there first")
    parser.add_argument("--runs", type=int, default=100, help="runs to build when no store exists yet")
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--layers", type=int, default=20)
    parser.add_argument("--layer-every", type=int, default=10, help="steps between per-layer rows")
    parser.add_argument("--steps-per-flush", type=int, default=500)
    parser.add_argument("--steps-per-epoch", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5, help="warm loads per page")
    parser.add_argument("--keep", action="store_true", help="keep a store this script built")
    parser.add_argument("--chromium", default=os.environ.get("LAWN_MONITOR_CHROMIUM") or shutil.which("chromium"))
    args = parser.parse_args()
    if not args.chromium:
        sys.exit("benchmarks/app.py: no chromium binary: apt-get install chromium, or pass --chromium PATH")
    from playwright.sync_api import sync_playwright

    tmp = None
    root = args.store
    if root is None:
        tmp = Path(tempfile.mkdtemp(prefix="lawn-app-bench-"))
        root = tmp / "runs"
    if not (root.is_dir() and any(root.iterdir())):
        t = time.perf_counter()
        rows = build(root, args.runs, args.steps, args.layers, args.layer_every, args.steps_per_flush,
                     args.steps_per_epoch)
        print(f"built {args.runs} runs, {rows:,} rows in {time.perf_counter() - t:.0f} s at {root}")

    store = RunStore(root)
    files = store.files()
    rows = duckdb.connect().execute("SELECT count(*) FROM read_parquet(?)", [files]).fetchone()[0]
    runs = store.runs()
    size = sum(os.path.getsize(f) for f in files)
    print(f"store: {len(runs)} runs, {rows:,} rows, {len(files)} files, {size / 2**20:.0f} MiB")
    ids = runs["run_id"].head(4).tolist()
    store = RunStore(root)  # a fresh one: its first queries are cold, as in a new server
    print("RunStore queries alone (this process; then: median of 3):")
    print(f"  runs()                                  {timed(store.runs)}   (Runs, and every page's frame)")
    print(f"  summary(test/acc, by 4 keys, final)     "
          f"{timed(lambda: store.summary('test/acc', by=['dataset', 'optimizer', 'lawn', 'batch_size']))}   (Compare)")
    print(f"  series(4 runs, test/acc)                {timed(lambda: store.series(ids, 'test/acc'))}   (Compare)")
    print(f"  metrics(4 runs)                         {timed(lambda: store.metrics(ids))}   (Compare)")
    print(f"  switch_steps(4 runs)                    {timed(lambda: store.switch_steps(ids))}")

    print(f"load average now: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    port = free_port()
    empty = None
    url = f"http://127.0.0.1:{port}"
    log = tempfile.TemporaryFile()
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app", "--server.headless", "true", "--server.address", "127.0.0.1",
         "--server.port", str(port), "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
        cwd=REPO, env={**os.environ, "LAWN_MONITOR_ROOT": str(root)}, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    sys.exit(f"streamlit did not start:\n{log.read().decode()}")
                time.sleep(0.2)
        empty = Path(tempfile.mkdtemp(prefix="lawn-app-bench-empty-"))
        # Streamlit's own floor: the same server, a store with no runs (one info box, no query).
        pages = [("(empty)", f"/?root={empty}", "[data-testid=stAlert]", 0.0),
                 ("Runs", "/", "[data-testid=stDataFrame]", RUNS_TTL),
                 ("Compare", "/compare", "[data-testid=stVegaLiteChart]", RUNS_TTL)]
        print(f"page loads in headless chromium, request to rendered ({args.repeat} repeats, each past the caches):")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
            context = browser.new_context(viewport={"width": 1280, "height": 1800})
            try:
                for name, path, expect, ttl in pages:
                    _, cold = load(context, url + path, expect)
                    frames, warm = [], []
                    for _ in range(args.repeat):
                        time.sleep(ttl + 0.5)
                        frame, done = load(context, url + path, expect)
                        frames.append(frame)
                        warm.append(done)
                    print(f"  {name:8s} first {cold:6.2f} s   then median {statistics.median(warm):6.2f} s, "
                          f"max {max(warm):6.2f} s   (of which the page frame: median {statistics.median(frames):.2f} s)")
            finally:
                browser.close()
    finally:
        server.terminate()
        server.wait(timeout=10)
        if empty is not None:
            shutil.rmtree(empty, ignore_errors=True)
        if tmp is not None and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
