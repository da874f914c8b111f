"""What every page shares: the store, the selected runs, and view state kept in the URL.

Every choice a page offers (selected runs, metric, smoothing, ...) lives in ``st.query_params``,
so any view is a link that can be shared. Streamlit clears the query string when the user moves
to another page, so the session also remembers the values (``_params``) and writes them back at
the top of every run: a URL that was opened wins, then what this session chose last.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
import streamlit as st

from lawn_monitor import RunStore
from lawn_monitor.metrics import info
from lawn_monitor.sink import default_root

from charts import metric_chart
from styles import Palette, run_labels, run_styles  # noqa: F401  (run_labels re-exported for the pages)

DEFAULT_RUNS = 4  # with nothing selected, the pages show the newest few runs
DEFAULT_SMOOTHING = 0.6  # TensorBoard's default EMA weight
RUNS_TTL = 2  # seconds a runs() listing is reused; the live page reads fresher itself


def _saved() -> dict[str, str]:
    return st.session_state.setdefault("_params", {})


def sync_url() -> None:
    """Merge the URL with what this session remembers, then write the result back to the URL."""
    saved = _saved()
    for key in st.query_params:
        saved[key] = st.query_params[key]
    for key, value in saved.items():
        if st.query_params.get(key) != value:
            st.query_params[key] = value


def get(key: str, default: str = "") -> str:
    return _saved().get(key, default)


def get_list(key: str) -> list[str]:
    text = get(key)
    return [part for part in text.split(",") if part] if text else []


def put(key: str, value, default="") -> None:
    """Remember a value in the session and the URL; the default is left out of the URL."""
    text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    saved = _saved()
    if text == str(default) or text == "":
        saved.pop(key, None)
        if key in st.query_params:
            del st.query_params[key]
    else:
        saved[key] = text
        if st.query_params.get(key) != text:
            st.query_params[key] = text


# --- widgets bound to a URL key ---------------------------------------------------------------

def selectbox(label: str, options: Sequence[str], key: str, default: str, **kwargs) -> str:
    options = list(options)
    current = get(key, default)
    index = options.index(current) if current in options else (options.index(default) if default in options else 0)
    value = st.selectbox(label, options, index=index, key=f"w.{key}", **kwargs)
    put(key, value, default)
    return value


def multiselect(label: str, options: Sequence[str], key: str, **kwargs) -> list[str]:
    options = list(options)
    current = [v for v in get_list(key) if v in options]
    value = st.multiselect(label, options, default=current, key=f"w.{key}", **kwargs)
    put(key, value)
    return value


def checkbox(label: str, key: str, default: bool, **kwargs) -> bool:
    value = st.checkbox(label, value=get(key, str(default)) == "True", key=f"w.{key}", **kwargs)
    put(key, value, default)
    return value


def slider(label: str, key: str, default: float, min_value: float, max_value: float, step: float, **kwargs) -> float:
    try:
        current = min(max(float(get(key, str(default))), min_value), max_value)
    except ValueError:
        current = default
    value = st.slider(label, min_value, max_value, current, step, key=f"w.{key}", **kwargs)
    put(key, value, default)
    return value


# --- the store --------------------------------------------------------------------------------

def store_root() -> str:
    """The store root chosen in the sidebar (the pages read it; the entry script draws the box)."""
    return get("root", str(default_root()))


def root_input() -> str:
    """The sidebar's store-root box; it starts from ``?root=``, else ``$LAWN_MONITOR_ROOT``."""
    default = str(default_root())
    text = st.sidebar.text_input(
        "Store root",
        value=get("root", default),
        key="w.root",
        help="The folder holding one sub-folder per run (`<root>/<run_id>/run.json`).",
    ).strip()
    # A cleared box means the default store, not the current directory (what Path("") would read).
    value = text or default
    put("root", value, default)
    return value


@st.cache_resource(show_spinner=False)
def get_store(root: str) -> RunStore:
    return RunStore(root)


@st.cache_data(ttl=RUNS_TTL, show_spinner=False)
def load_runs(root: str) -> pd.DataFrame:
    """``RunStore.runs()``, reused for RUNS_TTL seconds so that widget clicks stay quick on big stores."""
    return get_store(root).runs()


def start_hint(root: str) -> str:
    where = "does not exist yet" if not Path(root).is_dir() else "holds no runs yet"
    return (
        f"The store root `{root}` {where}. Start a run that writes there, then rerun this page:\n\n"
        f"```\nlawn-monitor train --dataset digits --model cnn --optimizer adam --lawn --root {root}\n```\n\n"
        "or `make demo` for a small set of runs. Another store: set the root in the sidebar "
        "(or `?root=...` in the URL, or `LAWN_MONITOR_ROOT` before `streamlit run app`)."
    )


def selected_runs(runs: pd.DataFrame) -> list[str]:
    """The runs picked on the Runs page (``?runs=``) that still exist, else the newest few."""
    present = set(runs["run_id"])
    chosen = [run_id for run_id in get_list("runs") if run_id in present]
    return chosen or runs["run_id"].head(DEFAULT_RUNS).tolist()


def labelled(df: pd.DataFrame, labels: dict[str, str]) -> pd.DataFrame:
    return df.assign(label=df["run_id"].map(labels))


def show(chart, empty: str) -> None:
    """Draw the chart, or say that there is nothing to draw yet."""
    if chart is None:
        st.info(empty)
    else:
        st.altair_chart(chart, width="stretch")


def grid(items: Sequence, draw: Callable, columns: int = 2) -> None:
    """Lay ``draw(item)`` out in rows of ``columns``."""
    for start in range(0, len(items), columns):
        for column, item in zip(st.columns(columns), items[start:start + columns]):
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

def palette(runs: pd.DataFrame, run_ids) -> Palette:
    """The shown runs' colours and dashes, from every run's config (the same on every page)."""
    return Palette.of(run_styles(runs), run_ids)


def smoothing() -> float:
    """The sidebar's smoothing slider (TensorBoard's EMA weight), shared by every page."""
    with st.sidebar:
        return slider("smoothing", key="smooth", default=DEFAULT_SMOOTHING, min_value=0.0, max_value=0.99, step=0.01,
                      help="TensorBoard's debiased exponential moving average over each run's points, drawn over "
                           "the faint raw line; 0 turns it off. Slow-cadence metrics (evaluation, curvature) are "
                           "never smoothed.")


def series_chart(store: RunStore, run_ids: list[str], metric: str, labels: dict[str, str], colors: Palette,
                 switches: pd.DataFrame | None = None, smooth: float = 0.0, title: str | None = None,
                 log_y: bool | None = None, layer: str = "", points: bool = False) -> None:
    """One metric of these runs as a line chart, with the metric's own axis title, units, scale
    (log where it shrinks by decades) and smoothing; or a line saying there is nothing yet."""
    meta = info(metric)
    df = store.series(run_ids, metric, layer, smooth=smooth if meta.smooth else 0.0)
    chart = metric_chart(labelled(df, labels), title or meta.axis, meta.log if log_y is None else log_y, switches,
                         palette=colors, y_title=meta.axis, percent=meta.percent, points=points)
    show(chart, f"No {title or metric} data yet.")
