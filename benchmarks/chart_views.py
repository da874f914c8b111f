"""What a chart costs the browser: one minimal Streamlit page of line charts, drawn with fewer
points, without the min-max band, with the raw values as a separate line or as the band's outline,
with a crosshair, or concatenated into fewer Vega views, timed side by side.

    python benchmarks/chart_views.py                 # the variants below, 4 loads each

The page holds ``k`` charts of 4 runs x ``n`` points (a line on a log axis with tooltips, and the
faint min-max band under it; ``raw=1`` adds the raw values as a faint line of their own, as the
dashboard drew them until it drew them as the band's outline, ``outline=1``), either each its own
``st.altair_chart`` in two columns, as the dashboard's grids are, or concatenated: all into one
view (two a row, fixed widths: Vega-Lite cannot fit a compound view to its container), or one view
per column (``mode=cols``, a ``vconcat`` whose charts Streamlit gives the column's width: as plot
width, so each chart's y axis juts out of its column by its own width; not used). Each load is a
fresh tab in headless Chromium, timed from the request until the page's script has finished and
every chart is drawn (benchmarks/app.py's measure); the median of 4 loads after one to warm up.
No store is read: this is the browser's and Streamlit's part of a page's time alone.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from benchmarks.app import load  # noqa: E402
from tests.browser import CHROMIUM, launch, streamlit_app  # noqa: E402

PAGE = """
import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

st.title("Charts")
q = st.query_params
mode, n, k, band = q.get("mode", "apart"), int(q.get("n", 500)), int(q.get("k", 8)), q.get("band", "1") == "1"
cross, raw, outline = (q.get(key, "0") == "1" for key in ("cross", "raw", "outline"))
rng = np.random.default_rng(0)


def chart(i):
    step = np.arange(n) * 10.0
    frames = []
    for run in range(4):
        value = np.exp(-step / 2000) * (1 + 0.1 * rng.random(n)) + 1e-3
        frames.append(pd.DataFrame({"run": f"run{run}", "step": step, "value": value, "min": value * 0.9,
                                    "max": value * 1.1}))
    data = pd.concat(frames)
    y = alt.Scale(type="log")
    layers = [alt.Chart(data).mark_line(clip=True).encode(x="step:Q", y=alt.Y("value:Q", scale=y), color="run:N",
                                                         tooltip=["run", "step", "value"])]
    if raw:
        layers.insert(0, alt.Chart(data).mark_line(clip=True, opacity=0.3, strokeWidth=1).encode(
            x="step:Q", y=alt.Y("value:Q", scale=y), stroke=alt.Stroke("run:N", legend=None)))
    if band:
        outlined = {"stroke": alt.Stroke("run:N", legend=None)} if outline else {}
        layers.insert(0, alt.Chart(data).mark_area(fillOpacity=0.2, strokeOpacity=0.3, strokeWidth=1, clip=True).encode(
            x="step:Q", y=alt.Y("min:Q", scale=y), y2="max:Q", fill=alt.Fill("run:N", legend=None), **outlined))
    if cross:  # the dashboard's crosshair: a rule at the pointer's step, every run's value in its tooltip
        wide = data.pivot_table(index="step", columns="run", values="value").reset_index()
        hover = alt.selection_point(nearest=True, on="pointerover", fields=["step"], empty=False, clear="pointerout")
        layers.append(alt.Chart(wide).mark_rule().encode(
            x="step:Q", opacity=alt.condition(hover, alt.value(0.6), alt.value(0)),
            tooltip=["step:Q", *[f"run{r}:Q" for r in range(4)]]).add_params(hover))
    width = "container" if mode != "one" else 330
    return alt.layer(*layers).properties(title=f"chart {i}", height=220, width=width)


if mode == "apart":
    columns = st.columns(2)
    for i in range(k):
        with columns[i % 2]:
            st.altair_chart(chart(i), width="stretch")
elif mode == "cols":
    for column, side in enumerate(st.columns(2)):
        with side:
            st.altair_chart(alt.vconcat(*[chart(i) for i in range(column, k, 2)]), width="stretch")
else:
    st.altair_chart(alt.concat(*[chart(i) for i in range(k)], columns=2))
"""
VARIANTS = [
    ("8 charts apart, 500 points per run", "mode=apart&n=500"),
    ("8 charts apart, 200 points per run", "mode=apart&n=200"),
    ("8 charts apart, 150 points per run", "mode=apart&n=150"),
    ("8 charts apart, 200 points, crosshair", "mode=apart&n=200&cross=1"),
    ("8 charts apart, 500 points, no band", "mode=apart&n=500&band=0"),
    ("8 charts apart, 200 points, band + raw line", "mode=apart&n=200&raw=1"),
    ("8 charts apart, 200 points, outlined band", "mode=apart&n=200&outline=1"),
    ("8 charts, a view per column, outlined band", "mode=cols&n=200&outline=1"),
    ("8 charts in one view, 500 points", "mode=one&n=500"),
    ("8 charts in one view, 150 points", "mode=one&n=150"),
    ("1 chart, 500 points", "mode=apart&n=500&k=1"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=4, help="timed loads per variant")
    args = parser.parse_args()
    if CHROMIUM is None:
        sys.exit(
            "benchmarks/chart_views.py: no chromium binary: apt-get install chromium, or set LAWN_MONITOR_CHROMIUM"
        )
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="lawn-chart-views-"))
    (work / "page.py").write_text(PAGE)
    command = ["-m", "streamlit", "run", str(work / "page.py"), "--server.fileWatcherType", "none"]
    with streamlit_app(work, work, command=command) as url, sync_playwright() as p:
        browser = launch(p)
        context = browser.new_context(viewport={"width": 1280, "height": 1800})
        for name, query in VARIANTS:
            load(context, f"{url}/?{query}", "Charts")
            times = [load(context, f"{url}/?{query}", "Charts")[1] for _ in range(args.repeat)]
            print(f"  {name:44s} median {statistics.median(times):.2f} s  (max {max(times):.2f} s)", flush=True)
        browser.close()


if __name__ == "__main__":
    main()
