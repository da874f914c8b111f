"""What every page shares: the store, the selected runs, and view state kept in the URL.

Every choice a page offers (metric, smoothing, filters, ...) is a widget bound to a query
parameter of the same name (Streamlit's ``bind="query-params"``), so any view is a link that can be
shared. Streamlit keeps each page's parameters on that page, restores them when the user comes
back, and *replaces* the URL when a widget changes rather than adding a history entry: Back
leaves the page instead of stepping through widget clicks. The app-wide ones (store root,
selected runs, smoothing) are bound in the sidebar, which every page shows.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, NamedTuple

import pandas as pd
import streamlit as st

from lawn_monitor import RunStore
from lawn_monitor.metrics import info
from lawn_monitor.storage import default_root

from .charts import metric_chart
from .styles import Palette, run_labels, run_styles  # noqa: F401  (run_labels re-exported for the pages)

DEFAULT_RUNS = 4  # with nothing selected, the pages show the newest few runs
DEFAULT_SMOOTHING = 0.6  # TensorBoard's default EMA weight
# Points per run in a half-width chart (~550 px of plot): about one per pixel. Each point is a
# bucket's last value with its min and max (drawn as a faint band), so spikes stay visible.
GRID_POINTS = 500
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
        f"The store root `{root}` {where}. Start a run that writes there, then rerun this page:\n\n"
        f"```\nlawn-monitor train --dataset digits --model cnn --optimizer adam --lawn --root {root}\n```\n\n"
        "or `make demo` for a small set of runs. Another store: `lawn-monitor dashboard --root PATH` "
        "(or `--allow-root PATH` to offer it in the sidebar beside this one)."
    )


def runs_input(runs: pd.DataFrame) -> list[str]:
    """The sidebar's run picker (``?runs=``): the runs every page shows. The Runs page's table
    ticks write to it too. Shown by run label (name, and a few id characters where names repeat)."""
    labels = run_labels(runs)
    if "_select" in st.session_state:  # a selection made on a page in the last run (select_runs)
        st.session_state["runs"] = st.session_state.pop("_select")
    with st.sidebar:
        return multiselect(
            "Runs",
            runs["run_id"].tolist(),
            key="runs",
            format_func=labels.get,
            placeholder=f"the {DEFAULT_RUNS} newest",
            help="The runs the pages show; none chosen means the newest few. Tick rows on the Runs page, or pick here.",
        )


def select_runs(run_ids: list[str]) -> None:
    """Make these the selected runs (from a page, after the sidebar's picker was drawn): kept
    aside and applied by ``runs_input`` on the rerun this starts."""
    st.session_state["_select"] = list(run_ids)
    st.rerun()


def chosen_runs() -> list[str]:
    """The runs picked (sidebar or Runs page), as run ids; empty when none are."""
    return list(st.session_state.get("runs") or [])


def selected_runs(runs: pd.DataFrame) -> list[str]:
    """The picked runs that still exist, else the newest few."""
    present = set(runs["run_id"])
    chosen = [run_id for run_id in chosen_runs() if run_id in present]
    return chosen or runs["run_id"].head(DEFAULT_RUNS).tolist()


def labelled(df: pd.DataFrame, labels: dict[str, str]) -> pd.DataFrame:
    return df.assign(label=df["run_id"].map(labels))


def show(chart, empty: str) -> None:
    """Draw the chart, or say that there is nothing to draw yet.

    Altair checks every spec against the Vega-Lite JSON schema when it is serialized, which costs
    about as much as building the chart (a third of a page's server time). These specs come from
    the builders in charts.py, whose tests serialize them with that check on (tests/test_charts.py),
    so the page serializes them without it."""
    if chart is None:
        st.info(empty)
    else:
        object.__setattr__(chart, "to_dict", functools.partial(type(chart).to_dict, chart, validate=False))
        st.altair_chart(chart, width="stretch")


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
            "the faint raw line; 0 turns it off. Slow-cadence metrics (evaluation, curvature) are "
            "never smoothed.",
        )


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
) -> None:
    """One metric of these runs as a line chart, with the metric's own axis title, units, scale
    (log where it shrinks by decades) and smoothing; or a line saying there is nothing yet."""
    meta = info(metric)
    df = store.series(run_ids, metric, layer, points=GRID_POINTS, smooth=smooth if meta.smooth else 0.0)
    chart = metric_chart(
        labelled(df, labels),
        title or meta.axis,
        meta.log if log_y is None else log_y,
        switches,
        palette=colors,
        y_title=meta.axis,
        percent=meta.percent,
        points=points,
        zoom=zoom(),
    )
    show(chart, f"No {title or metric} data yet.")


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


REFRESH_SECS = 5  # analysis pages: how often auto-refresh looks for new steps of training runs


def auto_refresh(root: str, runs: pd.DataFrame, run_ids: list[str]) -> None:
    """For pages that analyse the selected runs: while any of them trains, a toggle (on by
    default, ``?refresh=``) that redraws the page whenever those runs have logged new steps."""
    running = set(runs.loc[runs["status"] == "running", "run_id"])
    training = [r for r in run_ids if r in running]
    if not training:
        return
    n = len(training)
    if not checkbox(
        f"Auto-refresh while {'this run trains' if n == 1 else f'these {n} runs train'}",
        key="refresh",
        default=True,
        help=f"Redraws the page every {REFRESH_SECS} s while selected runs "
        "are still training (they show in the Runs table as running).",
    ):
        return
    store = get_store(root)
    seen = {r: (store.run_info(r) or {}).get("step") for r in training}

    @st.fragment(run_every=REFRESH_SECS)
    def tick() -> None:
        now = {r: (store.run_info(r) or {}).get("step") for r in training}
        if now != seen or any(store.status(r) != "running" for r in training):
            load_runs.clear()
            st.rerun(scope="app")

    tick()
