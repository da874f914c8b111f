"""What every page shares: the store, the selected runs, and view state kept in the URL.

Every choice a page offers (metric, smoothing, filters, ...) is a widget bound to a query
parameter of the same name (Streamlit's ``bind="query-params"``), so any view is a link that can be
shared. Streamlit keeps each page's parameters on that page, restores them when the user comes
back, and *replaces* the URL when a widget changes rather than adding a history entry: Back
leaves the page instead of stepping through widget clicks. The app-wide ones (store root,
selected runs, smoothing) are bound in the sidebar, which every page shows.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, NamedTuple

import pandas as pd
import streamlit as st

from lawn_monitor import RunStore
from lawn_monitor.metrics import info
from lawn_monitor.storage import default_root

from .charts import metric_chart
from .styles import FAMILY_COLORS, Palette, family_color, run_labels, run_styles  # noqa: F401  (re-exported)

DEFAULT_RUNS = 4  # with nothing selected, the pages show the newest few runs
DEFAULT_SMOOTHING = 0.6  # TensorBoard's default EMA weight
# Points per run in a half-width chart (~330-550 px of plot): one per 2-3 pixels. Each point is a
# bucket's last value with its min and max (drawn as a faint band), so spikes stay visible. The
# browser's drawing time grows with the points: 500 took Live from 2.8 s to 4.4 s to draw and
# Loss flattening from 3.6 s to 4.3 s (benchmarks/app.py, demo store, quiet machine).
GRID_POINTS = 200
RUNS_TTL = 2  # seconds a runs() listing is reused; the live page reads fresher itself
BIND: Final = "query-params"


# --- widgets bound to a URL key (the key is the query parameter's name) ---------------------------


def selectbox(label: str, options: Sequence, key: str, default, **kwargs):
    options = list(options)
    index = options.index(default) if default in options else 0
    if key in st.session_state and st.session_state[key] not in options:
        del st.session_state[key]  # its option went away (a run was deleted): back to the default
    return st.selectbox(label, options, index=index, key=key, bind=BIND, **kwargs)


def multiselect(label: str, options: Sequence, key: str, **kwargs) -> list:
    options = list(options)
    current = st.session_state.get(key)
    if current and any(v not in options for v in current):  # some went away (runs deleted, filters changed)
        st.session_state[key] = [v for v in current if v in options]
    return st.multiselect(label, options, key=key, bind=BIND, **kwargs)


def checkbox(label: str, key: str, default: bool, **kwargs) -> bool:
    return st.checkbox(label, value=default, key=key, bind=BIND, **kwargs)


def slider(label: str, key: str, default: float, min_value: float, max_value: float, step: float, **kwargs) -> float:
    return st.slider(label, min_value, max_value, default, step, key=key, bind=BIND, **kwargs)


# --- the store --------------------------------------------------------------------------------

ALLOWED_ROOTS = "LAWN_MONITOR_ALLOWED_ROOTS"  # roots served besides the default, comma-separated
log = logging.getLogger("lawn_monitor.dashboard")


def normal_root(root: str) -> str | None:
    """A root as the dashboard compares it: a local folder as an absolute path (string operations
    only, so the path is never touched), an ``s3://`` URL without its trailing slash; None for any
    other scheme, which the dashboard never reads."""
    root = root.strip()
    if "://" in root:
        return root.rstrip("/") if root.startswith("s3://") and len(root) > 5 else None
    return os.path.abspath(os.path.expanduser(root)) if root else None


def served_roots() -> list[str]:
    """The roots this server was started to serve: its default (``$LAWN_MONITOR_ROOT`` or ./runs)
    first, then those of ``$LAWN_MONITOR_ALLOWED_ROOTS`` (``lawn-monitor dashboard --allow-root``).
    A URL can choose among these and nothing else: the server reads no folder a visitor names."""
    listed = [default_root(), *os.environ.get(ALLOWED_ROOTS, "").split(",")]
    roots = []
    for root in listed:
        if not root.strip():
            continue
        normal = normal_root(root)
        if normal is None:
            log.warning("not serving %s: a store root is a local folder or an s3:// URL", root)
        elif normal not in roots:
            roots.append(normal)
    return roots


def store_root() -> str:
    """The store root chosen in the sidebar (the pages read it; the entry script draws the box)."""
    return st.session_state.get("_root") or served_roots()[0]


def root_input() -> str:
    """The sidebar's store-root picker (``?root=``): one of ``served_roots()``. A ``?root=`` naming
    any other place is refused with a note and the default store shown, without looking at it."""
    roots = served_roots()
    wanted = st.query_params.get("root")
    normal = normal_root(wanted) if wanted is not None else None
    if wanted is not None and normal not in roots:
        log.warning("refused ?root= naming a root this dashboard does not serve")
        del st.query_params["root"]
        st.session_state.pop("root", None)
        st.session_state["_root_refused"] = True
    elif normal is not None and wanted != normal:  # a served root in another spelling
        st.query_params["root"] = st.session_state["root"] = normal
    if st.session_state.pop("_root_refused", False):
        st.sidebar.warning(
            "The link named a store this dashboard does not serve: showing its default store. "
            "Start it with `--allow-root` to serve more."
        )
    st.session_state["_root"] = st.sidebar.selectbox(
        "Store root",
        roots,
        key="root",
        bind=BIND,
        help="The folder holding one sub-folder per run (`<root>/<run_id>/run.json`). The roots on offer are "
        "those the dashboard was started with (`lawn-monitor dashboard --root ... --allow-root ...`).",
    )
    return st.session_state["_root"]


@st.cache_resource(show_spinner=False)
def get_store(root: str) -> RunStore:
    return RunStore(root)


@st.cache_data(ttl=RUNS_TTL, show_spinner=False)
def load_runs(root: str) -> pd.DataFrame:
    """``RunStore.runs()``, reused for RUNS_TTL seconds so that widget clicks stay quick on big stores."""
    return get_store(root).runs()


def store_warnings(root: str) -> None:
    """The store's warnings so far (damaged runs, skipped files: ``RunStore.warnings``), folded
    into one line at the top of the page."""
    notes = get_store(root).warnings
    if notes:
        with st.expander(f"{len(notes)} store warning{'s' if len(notes) > 1 else ''}"):
            st.code("\n".join(notes), language=None, wrap_lines=True)


def start_hint(root: str) -> str:
    where = "does not exist yet" if "://" not in root and not Path(root).is_dir() else "holds no runs yet"
    return (
        f"The store root `{root}` {where}. Start a run that writes there and this page shows it within "
        "seconds (it keeps watching the store):\n\n"
        f"```\nlawn-monitor train --dataset digits --model cnn --optimizer adam --lawn --root {root}\n```\n\n"
        "or `make demo` for a small set of runs. Another store: `lawn-monitor dashboard --root PATH` "
        "(or `--allow-root PATH` to offer it in the sidebar beside this one)."
    )


def _ids_from_url(runs: pd.DataFrame, labels: dict[str, str]) -> None:
    """Let ``?runs=`` name runs by id as well as by label (the widget's URL carries labels; runs
    of the Lightning and Hugging Face adapters are all named ``run``), and by comma-separated
    lists: ids are turned into labels before the picker reads the URL."""
    wanted = [v for value in st.query_params.get_all("runs") for v in value.split(",") if v]
    if not wanted or st.session_state.get("_runs_url_done"):
        return
    st.session_state["_runs_url_done"] = True
    by_label = {label: run_id for run_id, label in labels.items()}
    ids = [v if v in labels else by_label.get(v) for v in wanted]
    if all(v in by_label for v in wanted):
        return  # labels only: the widget reads them itself
    chosen = list(dict.fromkeys(r for r in ids if r is not None))
    st.query_params["runs"] = [labels[r] for r in chosen]
    st.session_state["runs"] = chosen


def runs_input(runs: pd.DataFrame) -> list[str]:
    """The sidebar's run filter (``?filter=``) and run picker (``?runs=``): the runs every page
    shows. The Runs page's table ticks write to it too. Shown by run label (name, and a few id
    characters where names repeat); the URL takes labels or run ids."""
    labels = run_labels(runs)
    _ids_from_url(runs, labels)
    if "_select" in st.session_state:  # a selection made on a page in the last run (select_runs)
        st.session_state["runs"] = st.session_state.pop("_select")
    # The default selection is fixed when the session starts: a run started later never pushes
    # one of these off every page.
    st.session_state.setdefault("_default_runs", runs["run_id"].head(DEFAULT_RUNS).tolist())
    with st.sidebar:
        filter_input()
        return multiselect(
            "Runs",
            runs["run_id"].tolist(),
            key="runs",
            format_func=labels.get,
            placeholder=f"the {DEFAULT_RUNS} newest at page load",
            help="The runs the pages show; none chosen means the newest few when the page was opened. Tick rows "
            "on the Runs page, or pick here.",
        )


def filter_input() -> str:
    """The sidebar's run filter (``?filter=``): a regular expression (or plain text) matched
    against run names and ids, case-insensitive, as in TensorBoard's run filter."""
    return st.text_input(
        "Filter runs (name or regex)",
        key="filter",
        bind=BIND,
        placeholder="e.g. adam|sgd-lawn",
        help="Every page shows only the runs whose name or id matches (a regular expression, "
        "case-insensitive); the Runs table lists only them.",
    )


def run_filter() -> str:
    return str(st.session_state.get("filter") or "")


def matching(runs: pd.DataFrame, pattern: str) -> pd.Series:
    """Which runs' name or id match ``pattern`` (a regular expression, or plain text where it is
    not a valid one), case-insensitive. An empty pattern matches every run."""
    if not pattern:
        return pd.Series(True, index=runs.index)
    try:
        regex = re.compile(pattern, re.IGNORECASE)
    except re.error:
        regex = re.compile(re.escape(pattern), re.IGNORECASE)
    return pd.Series(
        [bool(regex.search(str(n)) or regex.search(str(r))) for n, r in zip(runs["name"], runs["run_id"])],
        index=runs.index,
    )


def filtered_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs that pass the sidebar's filter."""
    return runs[matching(runs, run_filter())]


def select_runs(run_ids: list[str]) -> None:
    """Make these the selected runs (from a page, after the sidebar's picker was drawn): kept
    aside and applied by ``runs_input`` on the rerun this starts."""
    st.session_state["_select"] = list(run_ids)
    st.rerun()


def chosen_runs() -> list[str]:
    """The runs picked (sidebar or Runs page), as run ids; empty when none are."""
    return list(st.session_state.get("runs") or [])


def selected_runs(runs: pd.DataFrame) -> list[str]:
    """The picked runs that still exist and pass the filter; else the newest few as they were when
    the session began (they stay put when newer runs start); else the newest few that pass it."""
    present = set(filtered_runs(runs)["run_id"])
    chosen = [run_id for run_id in chosen_runs() if run_id in present]
    if chosen:
        return chosen
    pinned = [run_id for run_id in st.session_state.get("_default_runs", []) if run_id in present]
    return pinned or [r for r in runs["run_id"] if r in present][:DEFAULT_RUNS]


def labelled(df: pd.DataFrame, labels: dict[str, str]) -> pd.DataFrame:
    return df.assign(label=df["run_id"].map(labels))


def show(chart, empty: str) -> None:
    """Draw the chart, or say that there is nothing to draw yet."""
    if chart is None:
        st.info(empty)
    else:
        st.vega_lite_chart(vega_lite(chart), width="stretch")


def vega_lite(chart) -> dict:
    """The chart's Vega-Lite spec with its data inline, made once per chart object and kept on it.

    A chart is cached across refreshes (``cached_chart``), and a refresh with nothing new sends it
    again: serializing it each time (what ``st.altair_chart`` does) cost 0.2-0.3 s a chart while
    four runs trained beside the dashboard, longer than the 0.5 s Streamlit waits before greying
    a redrawn element once a page's charts queued up; sending the kept spec costs milliseconds.
    Altair's check of the spec against the Vega-Lite schema is skipped: the builders in charts.py
    are checked with it on by tests/test_charts.py. The spec is Streamlit's to modify only where
    it is idempotent (a null legend title becomes " ")."""
    spec = getattr(chart, "_vega_lite", None)
    if spec is None:
        spec = chart.to_dict(validate=False)
        view = spec.get("config", {}).get("view", {})
        for key in ("continuousWidth", "continuousHeight"):  # Altair's default theme; Streamlit sizes charts
            view.pop(key, None)
        object.__setattr__(chart, "_vega_lite", spec)
    return spec


def grid(items: Sequence, draw: Callable, columns: int = 2) -> None:
    """Lay ``draw(item)`` out in rows of ``columns``."""
    for start in range(0, len(items), columns):
        for column, item in zip(st.columns(columns), items[start : start + columns]):
            with column:
                draw(item)


def csv_download(df: pd.DataFrame, name: str, label: str = "Download CSV") -> None:
    st.download_button(label, df.to_csv(index=False).encode(), file_name=name, mime="text/csv", key=f"csv.{name}")


@st.cache_data(max_entries=64, show_spinner=False)
def load_summary(root: str, metric: str, by: tuple[str, ...], reduce: str, finished: tuple) -> pd.DataFrame:
    """``RunStore.summary`` over the finished runs. A finished run's data no longer changes, so the
    result is kept until ``finished`` (each finished run's id and end time; see ``finished_key``)
    changes: one scan of the store per finished run, not per page view."""
    return get_store(root).summary(metric, by=list(by), reduce=reduce)


def finished_key(runs: pd.DataFrame) -> tuple:
    """What identifies the finished runs' data: their ids and end times."""
    done = runs[runs["status"] == "finished"]
    ended = done["ended_at"] if "ended_at" in done.columns else pd.Series("", index=done.index)
    return tuple(zip(done["run_id"], ended.astype(str)))


# --- what every chart shares: colours, smoothing ------------------------------------------------


def palette(runs: pd.DataFrame, run_ids, faint=()) -> Palette:
    """The shown runs' colours and dashes, from every run's config (the same on every page);
    the runs in ``faint`` are drawn faintly (ended runs beside live ones)."""
    return Palette.of(run_styles(runs), run_ids, faint=faint)


class Page(NamedTuple):
    """What a page that draws the selected runs starts from (``page_header``), in unpacking order."""

    root: str
    store: RunStore
    runs: pd.DataFrame
    labels: dict[str, str]
    run_ids: list[str]
    colors: Palette
    smooth: float


def page_header(title: str) -> Page:
    """The lines every run-drawing page begins with: its title, the store, the selected runs (in
    their colours and labels) and the smoothing, read from the sidebar the frame has drawn."""
    root = store_root()
    runs = load_runs(root)
    run_ids = selected_runs(runs)
    st.title(title)
    if not run_ids:
        st.info(f"No run matches the filter `{run_filter()}`: change it in the sidebar (a regular expression).")
        st.stop()
    return Page(root, get_store(root), runs, run_labels(runs), run_ids, palette(runs, run_ids), smoothing())


def smoothing_input() -> float:
    """The sidebar's smoothing slider (TensorBoard's EMA weight), shared by every page."""
    with st.sidebar:
        return slider(
            "Smoothing",
            key="smooth",
            default=DEFAULT_SMOOTHING,
            min_value=0.0,
            max_value=0.99,
            step=0.01,
            help="TensorBoard's debiased exponential moving average over each run's points, drawn over "
            "the faint raw values; 0 turns it off. Slow-cadence metrics (evaluation, curvature) are "
            "never smoothed.",
        )


LOG_METRICS = {"lr"}  # on a log axis by default here too: Adam's 1e-3 beside SGD's 0.1


def log_default(metric: str) -> bool:
    """Whether a metric starts on a log axis: those that shrink by decades, and the LR."""
    return info(metric).log or metric in LOG_METRICS


EXPORT_WIDTH = 720  # px of an exported chart's plot (the page's own width is the browser's)


def export_buttons(chart, name: str) -> None:
    """Download buttons for the chart as SVG and PNG (drawn on the server by vl-convert when
    clicked, never before: a page that is not exported pays nothing)."""

    def svg() -> str:
        import vl_convert

        return vl_convert.vegalite_to_svg(chart.properties(width=EXPORT_WIDTH).to_dict())

    def png() -> bytes:
        import vl_convert

        return vl_convert.vegalite_to_png(chart.properties(width=EXPORT_WIDTH).to_dict(), scale=2)

    left, right, _ = st.columns([1, 1, 4])
    left.download_button("Export SVG", svg, file_name=f"{name}.svg", mime="image/svg+xml", key=f"svg.{name}")
    right.download_button("Export PNG", png, file_name=f"{name}.png", mime="image/png", key=f"png.{name}")


def smoothing() -> float:
    return float(st.session_state.get("smooth", DEFAULT_SMOOTHING))


def zoom_input() -> bool:
    """The sidebar's switch for drag-to-pan and scroll-to-zoom on every chart (``?zoom=``). Off by
    default: it makes each chart cost the browser about a tenth of a second more to draw, and the
    pages of small multiples load in about two seconds without it (benchmarks/app.py). Compare's
    main chart always has it."""
    with st.sidebar:
        return checkbox(
            "Zoom and pan charts",
            key="zoom",
            default=False,
            help="Drag a chart to pan, scroll to zoom, double-click to reset.",
        )


def zoom() -> bool:
    return bool(st.session_state.get("zoom", False))


def crosshair_input() -> bool:
    """The sidebar's switch for the crosshair on every line chart (``?crosshair=``): a rule at the
    pointer's step with every run's value there, smoothed and raw, as TensorBoard and W&B show on
    hover. Off by default on the pages of small multiples: it costs the browser about 0.1 s a
    chart (benchmarks/chart_views.py). Compare's charts always have it."""
    with st.sidebar:
        return checkbox(
            "Crosshair on every chart",
            key="crosshair",
            default=False,
            help="Hover a chart: a rule at that step and every run's value there (smoothed and raw).",
        )


def crosshair() -> bool:
    return bool(st.session_state.get("crosshair", False))


def outliers_input() -> bool:
    """The sidebar's switch for y axes that ignore outliers (``?outliers=``, on by default, as in
    TensorBoard): an axis spans all but the extreme few values (``charts.robust_domain``) where
    those would flatten the rest, e.g. the update ratio at the last step's LR of ~0."""
    with st.sidebar:
        return checkbox(
            "Ignore outliers in y axes",
            key="outliers",
            default=True,
            help="Each chart's y axis leaves out the 2% most extreme values when they would squash the rest into "
            "a line (what lies beyond is cut at the plot's edge). Off: every axis spans all its values.",
        )


def robust() -> bool:
    return bool(st.session_state.get("outliers", True))


# Widgets replace the URL (no history entry), but a selection the server makes (ticks on the Runs
# page write the sidebar's picker) reaches the browser as a new URL that Streamlit pushes onto the
# history. This turns a push that changes only the query string into a replace, so Back leaves
# the page rather than stepping through ticks; moving between pages still adds an entry.
REPLACE_QUERY_PUSHES = """<script>
if (!window.__lawnReplaceQueryPushes) {
  window.__lawnReplaceQueryPushes = true;
  const push = window.history.pushState.bind(window.history);
  window.history.pushState = function (state, title, url) {
    const next = new URL(url, window.location.href);
    if (next.pathname === window.location.pathname) return window.history.replaceState(state, title, url);
    return push(state, title, url);
  };
}
</script>"""


def history_fix() -> None:
    st.html(REPLACE_QUERY_PUSHES, unsafe_allow_javascript=True, width="content")


def chip_colours(runs: pd.DataFrame) -> None:
    """The sidebar's run chips in each run's colour (its optimizer's hue, as on every chart)."""
    styles = run_styles(runs)
    rules = [
        f'[data-testid="stSidebar"] [data-tag][aria-label="{_css_text(style.label)}"]'
        f"{{background-color:{style.color};color:white;}}"
        for style in styles.values()
    ]
    st.html("<style>" + "".join(rules) + "</style>")


def _css_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def series_chart(
    store: RunStore,
    run_ids: list[str],
    metric: str,
    labels: dict[str, str],
    colors: Palette,
    switches: pd.DataFrame | None = None,
    smooth: float = 0.0,
    title: str | None = None,
    log_y: bool | None = None,
    layer: str = "",
    points: bool = False,
    fit_x: tuple[str, ...] = (),
) -> None:
    """One metric of these runs as a line chart, with the metric's own axis title, units, scale
    (log where it shrinks by decades) and smoothing; or a line saying there is nothing yet. Built
    once per version of the runs' data (``data_version``): a refresh with nothing new resends it."""
    meta = info(metric)
    weight = smooth if meta.smooth else 0.0
    log = meta.log if log_y is None else log_y
    key = (
        "series",
        metric,
        layer,
        tuple(run_ids),
        weight,
        log,
        title,
        points,
        zoom(),
        crosshair(),
        robust(),
        fit_x,
        colors,
    )

    def build():
        df = series(store, run_ids, metric, layer, points=GRID_POINTS, smooth=weight)
        return metric_chart(
            labelled(df, labels),
            title or meta.axis,
            log,
            switches,
            palette=colors,
            y_title=meta.axis,
            percent=meta.percent,
            points=points,
            zoom=zoom(),
            robust=robust(),
            fit_x=fit_x,
            crosshair=crosshair(),
        )

    show(cached_chart(key, store, run_ids, build), f"No {title or metric} data yet.")


# --- refreshing only what changed -------------------------------------------------------------

REFRESH_SECS = 5  # analysis pages: how often a panel of training runs looks for new data
CHART_CACHE = 256  # built charts kept (a page draws up to about 15)


# While runs train, a panel's timed refresh takes their new data only when the page has had time to
# draw the last: at most once per HOLD_FACTOR x the page's own redraw time, so that the server spends
# at most about a third of its time redrawing. On a quiet machine that is less than a refresh
# interval and changes nothing; on a loaded one (a chart took 0.5-0.9 s to rebuild beside four
# training processes, its runs flushing every second) the charts were otherwise rebuilt without
# pause, one after another, and the page was never all drawn.
HOLD_FACTOR = 3.0
_refresh = threading.local()  # .timed: True while a fragment's timed refresh draws


def data_version(store: RunStore, run_ids: Sequence[str]) -> tuple:
    """What changes when these runs' data change: each one's last flushed step and status, from
    its run.json (no data file is read), cheap enough to check every few seconds. In a timed
    refresh, a running run's version is held back while the page is still paying for drawing
    the last one (HOLD_FACTOR); a run that has ended is seen at once."""
    version = []
    for run_id in run_ids:
        found = store.run_info(run_id) or {}
        version.append(_held((run_id, found.get("step"), found.get("status"), found.get("ended_at"))))
    return tuple(version)


def _held(fresh: tuple) -> tuple:
    """``fresh``, or the version of this run the session last drew while a slow page holds it."""
    shown = st.session_state.setdefault("_shown_versions", {}) if _session() else None
    if shown is None:
        return fresh
    now = time.monotonic()
    kept = shown.get(fresh[0])
    if kept is not None and kept[0] != fresh and getattr(_refresh, "timed", False) and fresh[2] == "running":
        if now - kept[1] < HOLD_FACTOR * _page_cost():
            return kept[0]
    if kept is None or kept[0] != fresh:
        shown[fresh[0]] = (fresh, now)
    return fresh


def _session() -> bool:
    """Whether this runs inside a Streamlit session (its session state is there to keep things in)."""
    from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx

    return get_script_run_ctx(suppress_warning=True) is not None


def _page_cost() -> float:
    """Seconds the current page's panels took to redraw, each its latest (slowly forgotten)."""
    page = st.session_state.get("_page")
    return sum(cost for (where, _), cost in st.session_state.get("_panel_costs", {}).items() if where == page)


def series(store: RunStore, run_ids: Sequence[str], metric: str, layer: str = "", **kwargs) -> pd.DataFrame:
    """``RunStore.series``, kept until these runs' data change (``data_version``): every session and
    every refresh with nothing new reuses it."""
    return _series(store_root(), tuple(run_ids), metric, layer, data_version(store, run_ids), tuple(kwargs.items()))


@st.cache_data(max_entries=512, show_spinner=False)
def _series(root: str, run_ids: tuple, metric: str, layer: str, version: tuple, kwargs: tuple) -> pd.DataFrame:
    return get_store(root).series(list(run_ids), metric, layer, **dict(kwargs))


def layers(store: RunStore, run_id: str, metric: str, points: int | None = 200) -> pd.DataFrame:
    """``RunStore.layers``, kept until the run's data change."""
    return _layers(store_root(), run_id, metric, points, data_version(store, [run_id]))


@st.cache_data(max_entries=256, show_spinner=False)
def _layers(root: str, run_id: str, metric: str, points: int | None, version: tuple) -> pd.DataFrame:
    return get_store(root).layers(run_id, metric, points=points)


def switches(store: RunStore, run_ids: Sequence[str]) -> pd.DataFrame:
    """``RunStore.switch_steps``, kept until these runs' data change: every chart of a page draws
    the LAWN switches, and a query for each (5 on Live) was a sixth of a page run's server time."""
    return _switches(store_root(), tuple(run_ids), data_version(store, run_ids))


@st.cache_data(max_entries=256, show_spinner=False)
def _switches(root: str, run_ids: tuple, version: tuple) -> pd.DataFrame:
    return get_store(root).switch_steps(list(run_ids))


_CHARTS: OrderedDict[tuple, object] = OrderedDict()  # built charts, shared by every session
_CHARTS_LOCK = threading.Lock()


def cached_chart(key: tuple, store: RunStore, run_ids: Sequence[str], build: Callable):
    """The chart ``build()`` makes, kept (for every session) until the runs' data change: a refresh
    with nothing new, or another visitor of the same view, costs only the look at the runs'
    run.json files. ``key`` must name everything else the chart depends on."""
    full = (store_root(), key, data_version(store, run_ids))
    with _CHARTS_LOCK:
        if full in _CHARTS:
            _CHARTS.move_to_end(full)
            return _CHARTS[full]
    chart = build()
    with _CHARTS_LOCK:
        _CHARTS[full] = chart
        while len(_CHARTS) > CHART_CACHE:
            _CHARTS.popitem(last=False)
    return chart


def training(runs: pd.DataFrame, run_ids: Sequence[str]) -> list[str]:
    """Those of these runs that are training now."""
    running = set(runs.loc[runs["status"] == "running", "run_id"])
    return [run_id for run_id in run_ids if run_id in running]


TIMINGS = "LAWN_MONITOR_TIMINGS"  # a file to append each page run's and panel refresh's server seconds to


def record(what: str, seconds: float) -> None:
    """Server seconds of a page run or a panel refresh, appended to $LAWN_MONITOR_TIMINGS when set
    (benchmarks/app.py reads it) and logged at debug level."""
    log.debug("%s took %.3f s", what, seconds)
    path = os.environ.get(TIMINGS)
    if path:
        with open(path, "a") as out:
            out.write(f"{what}\t{seconds:.4f}\n")


def panel(runs: pd.DataFrame, run_ids: Sequence[str], every: float = REFRESH_SECS) -> Callable:
    """Decorate a function that draws part of a page from these runs: it becomes a fragment that,
    while any of them trains, reruns by itself every ``every`` seconds, redrawing only what the
    runs' new data changed (charts are kept per ``data_version``), and never the rest of the
    page. Once every one of them has ended, the page is drawn once more and nothing refreshes."""
    live = training(runs, run_ids)
    if live:
        keep_drawn()

    def wrap(draw: Callable) -> Callable:
        @st.fragment(run_every=every if live else None)
        def fragment(*args, **kwargs):
            started = time.perf_counter()
            store = get_store(store_root())  # run.json itself: data_version may hold a version back
            if live and not any((store.run_info(run_id) or {}).get("status") == "running" for run_id in live):
                load_runs.clear()  # they have all ended: one last redraw of the page, without a timer
                st.rerun(scope="app")
            _refresh.timed = _timed_refresh()
            try:
                draw(*args, **kwargs)
            except Exception as exc:  # as the frame does for a page: the kind of failure, the traceback to the log
                log.exception("a chart of page %s failed", st.session_state.get("_page", "?"))
                st.error(f"This chart failed ({type(exc).__name__}). The details are in the dashboard's log.")
            finally:
                _refresh.timed = False
            seconds = time.perf_counter() - started
            name = getattr(draw, "__name__", "draw")
            costs = st.session_state.setdefault("_panel_costs", {})
            where = (st.session_state.get("_page"), f"{name}{args!r}")
            costs[where] = max(seconds, 0.8 * costs.get(where, 0.0))  # a slow redraw is forgotten slowly
            record(f"panel {name}", seconds)

        return fragment

    return wrap


# Streamlit greys every element a running script or fragment has not yet redrawn (from 0.5 s on).
# While runs train, the charts refresh by themselves every few seconds, each redrawn in turn: that
# grey would cover some part of the page most of the time on a loaded machine and says nothing the
# reader needs, since a chart (or table, caption, progress bar) waiting for its refresh still shows
# its runs' latest drawn data. So while runs train nothing on the page is greyed; the running
# indicator at the top still shows that the page is working. (Charts and progress bars alone
# left Weight adaptivity's and Compare's other elements faded 9.7-12.7% of the time.)
KEEP_DRAWN = (
    '<style>[data-testid="stElementContainer"][data-stale="true"]'
    "{opacity:1 !important;transition:none !important;}</style>"
)


def keep_drawn() -> None:
    st.html(KEEP_DRAWN)


def _timed_refresh() -> bool:
    """Whether this script run is a fragment's own rerun (its timer), not a run of the whole page."""
    from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx

    ctx = get_script_run_ctx(suppress_warning=True)
    return bool(ctx is not None and ctx.fragment_ids_this_run)


POLL_SECS = 2  # how often a page waiting for runs looks at the store (run.json listing only)


def wait_for_runs(root: str) -> None:
    """On the empty-store screen: look for runs every POLL_SECS and rerun the page once one exists."""

    @st.fragment(run_every=POLL_SECS)
    def poll() -> None:
        load_runs.clear()
        if load_runs(root).empty:
            return
        st.rerun(scope="app")

    poll()
