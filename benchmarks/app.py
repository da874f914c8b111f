"""The dashboard's speed: time from request to a rendered page, for every page, in headless Chromium.

    python benchmarks/app.py --store runs                       # an existing store (e.g. what `make demo` wrote)
    python benchmarks/app.py --build demo --store /tmp/demo     # run `make demo`'s sweep to the end there, then time
    python benchmarks/app.py --build large --store /tmp/big     # ~100M rows through benchmarks/store.py's builder
    python benchmarks/app.py --build small                      # a quick look: 20 runs x 2,000 steps, temp folder

``--build`` fills ``--store`` only when it is missing or empty (so a store built once is timed
again by running the same command); without ``--store`` it builds in a temporary folder, deleted
after unless ``--keep``. The demo store is made by the same sweep as ``make demo`` (DEMO_ARGS read
from the Makefile, as benchmarks/demo.py does), four runs at once. ``large`` is benchmarks/store.py's
synthetic sweep (the shape of a long monitored run: 12 scalars every step, 50 layers x 8 per-layer
metrics every 16 steps, written 100 steps per flush, so 6 per-layer steps a flush; test accuracy
every 200 steps): 200 runs x 13,900 steps = 200 x 500,469 rows (one such run, built alone) =
100.1M rows.

    python benchmarks/app.py --store runs --train 4             # while 4 demo runs train (another store)

Starts ``lawn-monitor dashboard`` on 127.0.0.1 against the store and opens each page in headless
Chromium (the system's ``chromium`` through Playwright, as tests/test_browser.py does), each load
in a fresh tab, which is a fresh Streamlit session. A load counts from ``page.goto`` until the
page's title is on screen, its script has finished (Streamlit's ``data-test-script-state`` is
``notRunning``) and every chart on it is drawn (each ``stVegaLiteChart`` holds its canvas or SVG).
The first load of each page hits a cold server; the repeats are spaced past the app's 2 s cache of
the runs list, so each of them lists the store again. Then each page is timed as a switch inside
one tab (a click on its link in the sidebar, to the same end), as a user moves through the
dashboard. Pages show what they show by default: the newest runs. ``--train N`` starts N runs of
``make demo``'s sweep (with ``TRAIN_EPOCHS`` epochs and make demo's ``--nice``, or ``--train-nice
N``) in a temporary store first (one process each) and times the pages while they train, the load a
sweep puts on the machine; then it opens Live, Loss flattening, Weight adaptivity and Compare on the
training runs themselves, each left open 30 s, and prints the share of that time some element of the
page was stale (Streamlit marks what a rerun or a fragment's refresh has not yet redrawn) and the
share some element was visibly faded (Streamlit fades a stale element to opacity 0.33 from 0.5 s
on), each with its longest stretch: a page that refreshes only what changed stays drawn.
Beside the page times it prints the RunStore queries behind them, timed alone in this process,
the server's own seconds per page run (the app writes them to $LAWN_MONITOR_TIMINGS) and the load
average over each page's loads: on a shared machine a figure means little without it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from benchmarks.demo import build_demo  # noqa: E402
from benchmarks.store import build as build_synthetic  # noqa: E402
from lawn_monitor.store import RunStore  # noqa: E402
from tests.browser import DRAWN, PAGES, SCRIPT_DONE, launch, streamlit_app, wait_drawn  # noqa: E402

LAYER_METRICS = ("weight_norm", "update_ratio", "grad_norm", "gn_trace")
FADED_SECS = 30.0  # how long --train watches each page of the training runs for greyed-out elements
TRAIN_EPOCHS = 2000  # --train's runs: make demo's sweep, this many epochs so that they outlast the benchmark
RUNS_TTL = 2.0  # lawn_monitor/dashboard/state.py's cache lifetime of the runs list
LARGE = {
    "runs": 200,
    "layers": 50,
    "steps": 13_900,
    "layer_every": 16,
    "steps_per_flush": 100,
}  # about 100M rows (see above)
SMALL = {"runs": 20, "layers": 20, "steps": 2_000, "layer_every": 10, "steps_per_flush": 100}


def build_store(kind: str, root: Path) -> None:
    started = time.perf_counter()
    if kind == "demo":
        build_demo(root)
        return
    shape = LARGE if kind == "large" else SMALL
    print(f"building {kind}: benchmarks/store.py's sweep, {shape}", flush=True)
    rows, _, _ = build_synthetic(
        root, shape["runs"], shape["layers"], shape["steps"], shape["layer_every"], shape["steps_per_flush"]
    )
    print(f"built {rows:,} rows in {time.perf_counter() - started:.0f} s", flush=True)


def load(context, url: str, title: str | None) -> tuple[float, float]:
    """Seconds from request to the page's frame (HTML and scripts loaded), and to the page rendered:
    its title and first table or chart on screen, its script done. ``title`` None: only the script.
    A new tab is a new Streamlit session; the context keeps the browser's cache of Streamlit's
    static files, as for anyone who came before."""
    page = context.new_page()
    try:
        started = time.perf_counter()
        page.goto(url)
        frame = time.perf_counter() - started
        if title is not None:
            page.locator(DRAWN).first.wait_for(timeout=120_000)
            wait_drawn(page, title)
        else:
            page.locator("[data-testid=stAlert]").first.wait_for(timeout=120_000)
            page.wait_for_function(SCRIPT_DONE, timeout=120_000)
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


def print_queries(root: Path) -> None:
    store = RunStore(root)
    ids = store.runs()["run_id"].head(4).tolist()  # what the pages show by default: the newest 4
    store = RunStore(root)  # a fresh one: its first queries are cold, as in a new server
    flattening = [
        "train/loss",
        "grad_norm",
        "gn_trace",
        "gn_trace_se",
        "hessian_trace",
        "hessian_trace_se",
        "sharpness",
        "sharpness_threshold",
        "logit_norm",
        "max_prob",
        "flat_frac",
    ]
    print("RunStore queries alone (this process; then: median of 3):")
    print(f"  runs()                                  {timed(store.runs)}   (every page)")
    print(
        f"  series(4 runs, 11 flattening metrics)   "
        f"{timed(lambda: [store.series(ids, m) for m in flattening])}   (Loss flattening)"
    )
    print(
        f"  layers(2 runs x 4 heatmap metrics)      "
        f"{timed(lambda: [store.layers(r, m) for r in ids[:2] for m in LAYER_METRICS])}"
        f"   (Weight adaptivity)"
    )
    print(
        f"  summary(test/acc, by 4 keys, final)     "
        f"{timed(lambda: store.summary('test/acc', by=['dataset', 'optimizer', 'lawn', 'batch_size']))}   (Compare)"
    )
    print(f"  series(4 runs, test/acc)                {timed(lambda: store.series(ids, 'test/acc'))}   (Compare)")
    print(f"  metrics(4 runs)                         {timed(lambda: store.metrics(ids))}   (Compare)")
    print(f"  switch_steps(4 runs)                    {timed(lambda: store.switch_steps(ids))}   (Live, ...)")


def server_seconds(timings: Path, title: str | None) -> float:
    """The median of the server's own seconds per run of this page (the app's $LAWN_MONITOR_TIMINGS)."""
    if title is None or not timings.exists():
        return float("nan")
    seconds = [
        float(line.split("\t")[1]) for line in timings.read_text().splitlines() if line.startswith(f"page {title}\t")
    ]
    return statistics.median(seconds) if seconds else float("nan")


def start_training(
    count: int, epochs: int | None = TRAIN_EPOCHS, nice: int | None = None
) -> tuple[subprocess.Popen, Path]:
    """``count`` runs of make demo's sweep training in a temporary store (one process each); returns
    once every one of them has written its first steps. ``nice``: their CPU priority lowered by
    this much instead of make demo's ``--nice``."""
    from benchmarks.demo import demo_args

    args = demo_args()
    args[args.index("--parallel") + 1] = str(count)
    if nice is not None:
        if "--nice" in args:
            del args[args.index("--nice") : args.index("--nice") + 2]
        args += ["--nice", str(nice)] if nice else []
    given = args[args.index("--nice") + 1] if "--nice" in args else "0"
    # Long enough to train through the whole benchmark (make demo's 150 epochs end in ~5 min on a
    # quiet machine, before the pages are watched); the load is the same per process.
    if epochs is not None:
        args[args.index("--epochs") + 1] = str(epochs)
    root = Path(tempfile.mkdtemp(prefix="lawn-app-bench-train-"))
    argv = [sys.executable, "-m", "lawn_monitor.cli", "sweep", *args, "--root", str(root), "--no-progress"]
    proc = subprocess.Popen(argv, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        runs = RunStore(root).runs()
        if len(runs) >= count and (runs["step"] > 0).sum() >= count:
            print(f"{count} training processes running (make demo's sweep, --nice {given}, in {root})", flush=True)
            return proc, root
        time.sleep(2)
    proc.terminate()
    sys.exit("benchmarks/app.py: the training runs did not start within 5 min")


def time_pages(root: Path, repeat: int, chromium: str, only: list[str] | None = None) -> list[tuple]:
    """Each page's first and repeated load times: (page, first, median, max, server s, load average)."""
    from playwright.sync_api import sync_playwright

    timings = Path(tempfile.mkdtemp(prefix="lawn-app-bench-timings-")) / "timings.tsv"
    empty = Path(tempfile.mkdtemp(prefix="lawn-app-bench-empty-"))
    # Streamlit's own floor first: the same server, a store with no runs (one info box, no query).
    pages = [("(empty store)", f"/?root={empty}", None, 0.0)]
    pages += [(title, f"/{path}", title, RUNS_TTL) for path, title in PAGES if not only or path in only]
    env = {"PYTHONPATH": str(REPO), "LAWN_MONITOR_TIMINGS": str(timings)}
    try:
        with streamlit_app(root, timings.parent, env=env) as url, sync_playwright() as p:
            browser = launch(p, chromium)
            context = browser.new_context(viewport={"width": 1280, "height": 1800})
            try:
                return [
                    time_page(context, url + path, name, title, ttl, repeat, timings)
                    for name, path, title, ttl in pages
                ]
            finally:
                browser.close()
    finally:
        shutil.rmtree(empty, ignore_errors=True)
        shutil.rmtree(timings.parent, ignore_errors=True)


def time_page(context, url: str, name: str, title: str | None, ttl: float, repeat: int, timings: Path) -> tuple:
    """One page: a cold load, then ``repeat`` loads spaced past the runs cache; prints its line."""
    _, cold = load(context, url, title)
    frames, warm, loads = [], [], []
    timings.write_text("")
    for _ in range(repeat):
        time.sleep(ttl + 0.5)
        frame, done = load(context, url, title)
        frames.append(frame)
        warm.append(done)
        loads.append(os.getloadavg()[0])
    server_s = server_seconds(timings, title)
    load_avg = statistics.mean(loads)
    print(
        f"  {name:18s} first {cold:6.2f} s   then median {statistics.median(warm):6.2f} s, "
        f"max {max(warm):6.2f} s   (page frame {statistics.median(frames):.2f} s, server "
        f"{server_s:.2f} s per page run; load average {load_avg:.1f})",
        flush=True,
    )
    return name, cold, statistics.median(warm), max(warm), server_s, load_avg


def time_switches(root: Path, repeat: int, chromium: str, only: list[str] | None = None) -> dict[str, list[float]]:
    """Page switches inside one tab, as a user moves through the dashboard: a click on the page's
    link in the sidebar until its title is on screen, its script done and every chart drawn (no
    page load: Streamlit's frame stays, the session goes on). Each page ``repeat`` times, in the
    sidebar's order, each switch spaced past the runs cache so it lists the store again."""
    from playwright.sync_api import sync_playwright

    logs = Path(tempfile.mkdtemp(prefix="lawn-app-bench-switch-"))
    order = [(path, title) for path, title in [*PAGES[1:], PAGES[0]] if not only or path in only]
    seconds: dict[str, list[float]] = {title: [] for _, title in order}
    try:
        with streamlit_app(root, logs, env={"PYTHONPATH": str(REPO)}) as url, sync_playwright() as p:
            browser = launch(p, chromium)
            page = browser.new_page(viewport={"width": 1280, "height": 1800})
            page.goto(url)
            wait_drawn(page, "Runs")
            shown = "Runs"
            for _ in range(repeat):
                for _, title in order:
                    if title == shown:  # a page already shown: go elsewhere first
                        other = next(t for _, t in PAGES if t != title)
                        page.get_by_test_id("stSidebarNavLink").filter(has_text=other).first.click()
                        wait_drawn(page, other)
                    time.sleep(RUNS_TTL + 0.5)
                    started = time.perf_counter()
                    page.get_by_test_id("stSidebarNavLink").filter(has_text=title).first.click()
                    wait_drawn(page, title)
                    seconds[title].append(time.perf_counter() - started)
                    shown = title
            browser.close()
    finally:
        shutil.rmtree(logs, ignore_errors=True)
    for title, times in seconds.items():
        print(f"  {title:18s} median {statistics.median(times):6.2f} s, max {max(times):6.2f} s", flush=True)
    return seconds


# Any element of the page greyed out: Streamlit marks what a running script (or fragment) has not
# yet redrawn as stale, and fades it once the run takes longer than a moment.
STALE = "() => document.querySelectorAll('[data-stale=\"true\"]').length"
# Any element drawn faded: its computed opacity on the way to (or at) Streamlit's stale 0.33.
FADED = """() => [...document.querySelectorAll('[data-stale="true"]')]
  .some(e => parseFloat(getComputedStyle(e).opacity) < 0.9)"""


def time_faded(root: Path, chromium: str, seconds: float, only: list[str] | None = None) -> list[tuple]:
    """For each page that refreshes while runs train: opened once, watched for ``seconds``,
    sampled every 100 ms; returns (page, share of samples with stale elements, longest stale run s)."""
    from playwright.sync_api import sync_playwright

    logs = Path(tempfile.mkdtemp(prefix="lawn-app-bench-faded-"))
    results = []
    try:
        with streamlit_app(root, logs, env={"PYTHONPATH": str(REPO)}) as url, sync_playwright() as p:
            browser = launch(p, chromium)
            page = browser.new_page(viewport={"width": 1280, "height": 1800})
            for path, title in PAGES[1:]:
                if only and path not in only:
                    continue
                page.goto(f"{url}/{path}")
                wait_drawn(page, title)
                stale, faded = [], []
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    now = time.monotonic()
                    stale.append((now, page.evaluate(STALE) > 0))
                    faded.append((now, page.evaluate(FADED)))
                    page.wait_for_timeout(100)
                share, longest = stretches(stale)
                greyed, longest_greyed = stretches(faded)
                training = int((RunStore(root).runs()["status"] == "running").sum())
                print(
                    f"  {title:18s} some element stale {share:6.1%} of {seconds:.0f} s (longest {longest:.1f} s), "
                    f"some element visibly faded {greyed:6.1%} (longest {longest_greyed:.1f} s); "
                    f"{training} runs still training at the end" + ("" if training else ": NOT MEASURED, run sooner"),
                    flush=True,
                )
                results.append((title, share, longest, greyed, longest_greyed))
            browser.close()
    finally:
        shutil.rmtree(logs, ignore_errors=True)
    return results


def stretches(samples: list[tuple[float, bool]]) -> tuple[float, float]:
    """From (time, true or false) samples: the share of samples true, and the longest run of true."""
    longest, since = 0.0, None
    for at, value in samples:
        since = (at if since is None else since) if value else None
        if since is not None:
            longest = max(longest, at - since)
    return sum(value for _, value in samples) / max(len(samples), 1), longest


def report(root: Path, args: argparse.Namespace, only: list[str] | None) -> None:
    """Time the pages (while ``args.train`` demo runs train, if asked) and print the table."""
    training = start_training(args.train, nice=args.train_nice) if args.train else None
    try:
        print(f"page loads in headless chromium, request to all charts drawn ({args.repeat} repeats):")
        results = time_pages(root, args.repeat, args.chromium, only)
        print(f"page switches in one tab, a click on the sidebar's link to all charts drawn ({args.repeat} each):")
        switches = time_switches(root, args.repeat, args.chromium, only)
        if training is not None:
            print(f"the training runs' store, each page left open {FADED_SECS:.0f} s: greyed out (stale) for")
            time_faded(training[1], args.chromium, FADED_SECS, only)
    finally:
        if training is not None:
            training[0].terminate()
            training[0].wait(timeout=60)
            shutil.rmtree(training[1], ignore_errors=True)
    print("\n| page | first load s | then median s | max s | switch median s | server s per run | load average |")
    print("|---|---|---|---|---|---|---|")
    for name, cold, median, worst, server, load_avg in results:
        switch = statistics.median(switches[name]) if switches.get(name) else float("nan")
        print(f"| {name} | {cold:.2f} | {median:.2f} | {worst:.2f} | {switch:.2f} | {server:.2f} | {load_avg:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--store", type=Path, help="the store to time (built there first with --build if missing or empty)"
    )
    parser.add_argument(
        "--build",
        choices=("demo", "large", "small"),
        help="what to build when the store is missing or empty (default: small)",
    )
    parser.add_argument("--pages", help="comma-separated url paths to time (default: all; '' is Runs): live,compare")
    parser.add_argument("--repeat", type=int, default=5, help="warm loads per page")
    parser.add_argument("--keep", action="store_true", help="keep a store built in a temporary folder")
    parser.add_argument("--train", type=int, default=0, help="time the pages while this many demo runs train")
    parser.add_argument(
        "--train-nice",
        type=int,
        metavar="N",
        help="--train's runs lower their CPU priority by N (default: make demo's --nice; 0: not at all)",
    )
    parser.add_argument("--chromium", default=os.environ.get("LAWN_MONITOR_CHROMIUM") or shutil.which("chromium"))
    args = parser.parse_args()
    if not args.chromium:
        sys.exit("benchmarks/app.py: no chromium binary: apt-get install chromium, or pass --chromium PATH")
    only = None if args.pages is None else [p.strip().strip("/") for p in args.pages.split(",")]
    known = {path for path, _ in PAGES}
    if only and set(only) - known:
        sys.exit(
            f"benchmarks/app.py: unknown page(s) {sorted(set(only) - known)}: choose from "
            f"{', '.join(repr(p) for p in sorted(known))}"
        )

    tmp = None
    root = args.store
    if root is None:
        tmp = Path(tempfile.mkdtemp(prefix="lawn-app-bench-"))
        root = tmp / "runs"
    try:
        if not (root.is_dir() and any(root.iterdir())):
            build_store(args.build or "small", root)
        elif args.build:
            print(f"{root} holds runs already: timing them (--build builds only into a missing or empty store)")
        store = RunStore(root)
        files = store.files()
        if not files:
            sys.exit(f"benchmarks/app.py: no runs with data in {root}")
        rows = duckdb.connect().execute("SELECT count(*) FROM read_parquet(?)", [files]).fetchone()[0]
        runs = store.runs()
        size = sum(os.path.getsize(f) for f in files)
        statuses = ", ".join(f"{n} {s}" for s, n in runs["status"].value_counts().items())
        print(f"store {root}: {len(runs)} runs ({statuses}), {rows:,} rows, {len(files)} files, {size / 2**20:.0f} MiB")
        print_queries(root)
        print(f"load average now: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
        report(root, args, only)
        print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    finally:
        if tmp is not None and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp is not None:
            print(f"kept the store at {root}")


if __name__ == "__main__":
    main()
