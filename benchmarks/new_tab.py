"""Where a new tab's time goes: Streamlit's own floor, the server's part and the browser's part.

    python benchmarks/new_tab.py --store runs                           # Loss flattening, 5 loads
    python benchmarks/new_tab.py --store runs --page live --profile     # with Chrome's CPU profiler

First a bare Streamlit page (a title and an info box, served by the same Streamlit with the same
settings, opened in the same headless Chromium) is timed from the request until its script has
finished and its box is on screen: what any Streamlit page costs here before it draws anything
of its own. Then the dashboard's page (``--page``, a url path of tests/browser.py's PAGES) on the
store, each load in a fresh tab as in benchmarks/app.py, timed at: the HTML and Streamlit's main
script loaded (DOMContentLoaded), the server's first websocket message, the server's last message of
the page's script (``script_finished``: all it sends has been sent), and every chart drawn (the
benchmark's measure). What lies between the last two is the browser's: laying the page out and
drawing its Vega charts. ``--profile`` runs Chrome's sampling profiler during each load and prints
the main thread's busy time and the part of it in Vega's own code (vega-embed and the expression
interpreter Streamlit runs it with); the profiler slows the loads, so their times are not the
ones above. One load warms the server's caches and the browser's first.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from benchmarks.app import load  # noqa: E402
from tests.browser import CHROMIUM, DRAWN, PAGES, launch, streamlit_app, wait_drawn  # noqa: E402

BARE = """
import streamlit as st

st.title("Bare")
st.info("A Streamlit page with nothing of its own to draw.")
"""
DOM_LOADED = "() => performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd / 1000"


def bare_floor(context_factory, work: Path, repeat: int) -> list[float]:
    """Seconds from request to the bare page drawn (its script done, its box on screen)."""
    (work / "bare.py").write_text(BARE)
    command = ["-m", "streamlit", "run", str(work / "bare.py"), "--server.fileWatcherType", "none"]
    with streamlit_app(work, work, command=command) as url:
        context = context_factory()
        load(context, url, None)  # the first, to warm up
        times = [load(context, url, None)[1] for _ in range(repeat)]
        context.close()
    return times


def timed_load(context, url: str, title: str, profile: bool) -> dict[str, float]:
    """One load in a fresh tab: the moments above, in seconds from the request (and, profiled,
    the main thread's busy and Vega seconds)."""
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    page = context.new_page()
    moments: dict[str, float] = {}
    started = time.perf_counter()

    def on_frame(payload) -> None:
        if isinstance(payload, str):
            return
        now = time.perf_counter() - started
        moments.setdefault("first message", now)
        if ForwardMsg.FromString(payload).WhichOneof("type") == "script_finished":
            moments.setdefault("script finished", now)

    page.on("websocket", lambda ws: ws.on("framereceived", on_frame))
    cdp = None
    if profile:
        cdp = context.new_cdp_session(page)
        cdp.send("Profiler.enable")
        cdp.send("Profiler.setSamplingInterval", {"interval": 500})
        cdp.send("Profiler.start")
    try:
        page.goto(url)
        page.locator(DRAWN).first.wait_for(timeout=120_000)
        wait_drawn(page, title)
        moments["all drawn"] = time.perf_counter() - started
        moments["HTML and main script"] = page.evaluate(DOM_LOADED)
        if cdp is not None:
            moments.update(cpu(cdp.send("Profiler.stop")["profile"]))
    finally:
        page.close()
    return moments


def cpu(profile: dict) -> dict[str, float]:
    """The profile's busy seconds (not idle) and those in Vega's scripts."""
    frames = {node["id"]: node["callFrame"] for node in profile["nodes"]}
    by_script: collections.Counter = collections.Counter()
    for sample, delta in zip(profile["samples"], profile["timeDeltas"]):
        frame = frames[sample]
        by_script[frame["url"].rsplit("/", 1)[-1] or f"({frame['functionName']})"] += delta
    busy = sum(by_script.values()) - by_script["(idle)"]
    vega = sum(us for script, us in by_script.items() if script.startswith(("vega", "embed")))
    return {"main thread busy (profiled)": busy / 1e6, "in Vega's code (profiled)": vega / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, required=True, help="a store with runs (e.g. what `make demo` wrote)")
    parser.add_argument("--page", default="flattening", help="the page's url path (default: flattening)")
    parser.add_argument("--repeat", type=int, default=5, help="timed loads of each page")
    parser.add_argument("--profile", action="store_true", help="also profile the browser's main thread")
    args = parser.parse_args()
    titles = dict(PAGES)
    if args.page not in titles:
        sys.exit(f"benchmarks/new_tab.py: unknown page {args.page!r}: choose from {', '.join(map(repr, titles))}")
    if not args.store.is_dir():
        sys.exit(f"benchmarks/new_tab.py: no store at {args.store}: run `make demo` or pass --store DIR")
    if CHROMIUM is None:
        sys.exit("benchmarks/new_tab.py: no chromium binary: apt-get install chromium, or set LAWN_MONITOR_CHROMIUM")
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="lawn-new-tab-"))
    with sync_playwright() as p:
        browser = launch(p)

        def context():
            return browser.new_context(viewport={"width": 1280, "height": 1800})

        floor = bare_floor(context, work, args.repeat)
        print(
            f"bare Streamlit page: median {statistics.median(floor):.2f} s "
            f"({min(floor):.2f}-{max(floor):.2f} s, {len(floor)} loads)",
            flush=True,
        )
        loads = []
        with streamlit_app(args.store, work) as url:
            ctx = context()
            timed_load(ctx, f"{url}/{args.page}", titles[args.page], False)
            for _ in range(args.repeat):
                time.sleep(2.5)  # past the app's 2 s cache of the runs list, as benchmarks/app.py
                loads.append(timed_load(ctx, f"{url}/{args.page}", titles[args.page], args.profile))
        browser.close()
    print(f"{titles[args.page]} on {args.store}, {len(loads)} loads, seconds from the request:")
    order = ["HTML and main script", "first message", "script finished", "all drawn"]
    for what in [*order, *(key for key in loads[0] if key not in order)]:
        values = [load[what] for load in loads if what in load]
        print(f"  {what:28s} median {statistics.median(values):5.2f}  ({min(values):.2f}-{max(values):.2f})")


if __name__ == "__main__":
    main()
