"""The lawn-monitor dashboard: pick runs from the store, watch them live, compare them.

    streamlit run app                        # reads $LAWN_MONITOR_ROOT, else ./runs
    http://localhost:8501/?root=/data/runs   # or name the store root in the URL

Layout only: queries live in ``lawn_monitor.RunStore``, chart builders in ``charts.py``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import streamlit as st

from lawn_monitor import RunStore
from lawn_monitor.sink import default_root

# `streamlit run app` puts app/ on sys.path, AppTest.from_file does not: import charts the same
# way under both.
APP_DIR = str(Path(__file__).resolve().parent)
if APP_DIR not in sys.path:
    sys.path.insert(0, APP_DIR)
from charts import band_chart, layer_chart, metric_chart, run_labels, with_se  # noqa: E402

REFRESH_SECS = 2  # live charts rerun this often while a shown run is still training
DEFAULT_RUNS = 4  # with nothing selected, the newest runs shown
TABLE_COLUMNS = ["name", "status", "optimizer", "lawn", "batch_size", "progress", "test_acc"]
# (metric, layer, title, log y): whole-model panels, each run one line.
PANELS = [
    ("train/loss", "", "train loss", True),
    ("test/acc", "", "test accuracy", False),
    ("grad_norm", "", "gradient norm (whole model)", True),
]


@st.cache_resource
def get_store(root: str) -> RunStore:
    return RunStore(root)


def start_hint(root: str) -> str:
    where = "does not exist yet" if not Path(root).is_dir() else "holds no runs yet"
    return (
        f"The store root `{root}` {where}. Start a run that writes there, then rerun this page:\n\n"
        f"```\nlawn-monitor train --dataset digits --model cnn --optimizer adam --lawn --root {root}\n```\n\n"
        "or `make demo` for a small set of runs. Another store: set the root in the sidebar "
        "(or `?root=...` in the URL, or `LAWN_MONITOR_ROOT` before `streamlit run app`)."
    )


def runs_table(runs: pd.DataFrame) -> list[str]:
    """Show the runs table; return the selected run ids (by default the newest few)."""
    # Runs written without some config key still get the column (empty).
    table = runs.reindex(columns=["run_id", *TABLE_COLUMNS])
    event = st.dataframe(
        table,
        key="runs",
        on_select="rerun",
        selection_mode="multi-row",
        hide_index=True,
        column_order=TABLE_COLUMNS,
        column_config={
            "name": st.column_config.TextColumn("run"),
            "lawn": st.column_config.CheckboxColumn("LAWN"),
            "batch_size": st.column_config.NumberColumn("batch size", format="%d"),
            "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0, format="percent"),
            "test_acc": st.column_config.NumberColumn("test acc (latest)", format="percent"),
        },
    )
    # Selections are row positions; one may outlive its row if runs were deleted meanwhile.
    rows = [row for row in event.selection.rows if row < len(table)]
    if not rows:
        st.caption(f"Showing the {min(DEFAULT_RUNS, len(table))} newest runs; select rows to compare others.")
        return table["run_id"].head(DEFAULT_RUNS).tolist()
    return table["run_id"].iloc[rows].tolist()


def show(chart, empty: str) -> None:
    """Draw the chart, or say that there is nothing to draw yet."""
    if chart is None:
        st.info(empty)
    else:
        st.altair_chart(chart, width="stretch")


def charts(root: str, run_ids: list[str], labels: dict[str, str], live: bool) -> None:
    """The selected runs' charts; a fragment, rerun alone every REFRESH_SECS while ``live``."""
    store = get_store(root)
    if live and not any(store.status(run_id) == "running" for run_id in run_ids):
        st.rerun(scope="app")  # they have all ended: refresh the table and stop polling
    switches = store.switch_steps(run_ids)
    columns = st.columns(2)
    for i, (metric, layer, title, log_y) in enumerate(PANELS):
        df = store.series(run_ids, metric, layer)
        chart = metric_chart(df.assign(label=df["run_id"].map(labels)), title, log_y, switches)
        with columns[i % 2]:
            show(chart, f"No {title} data yet.")
    trace = with_se(store.series(run_ids, "gn_trace"), store.series(run_ids, "gn_trace_se"))
    exact = with_se(store.series(run_ids, "hessian_trace"), store.series(run_ids, "hessian_trace_se"))
    chart = band_chart(trace.assign(label=trace["run_id"].map(labels)),
                       "Hessian trace: Gauss-Newton proxy (band: +/- 1 SE), Hutchinson (diamonds)",
                       log_y=True, switches=switches, points=exact.assign(label=exact["run_id"].map(labels)))
    with columns[len(PANELS) % 2]:
        show(chart, "No curvature yet: the Hessian-trace proxy runs on a budget (see --curvature-budget).")
    st.subheader("Weight norm per layer")
    columns = st.columns(2)
    switch_at = dict(zip(switches["run_id"], switches["step"]))
    for i, run_id in enumerate(run_ids):
        chart = layer_chart(store.layers(run_id, "weight_norm"), labels[run_id], switch_at.get(run_id))
        with columns[i % 2]:
            show(chart, f"No per-layer weight norms for {labels[run_id]} yet.")


st.set_page_config(page_title="lawn-monitor", layout="wide")
st.title("lawn-monitor")
default = st.query_params.get("root", str(default_root()))
# A cleared box means the default store, not the current directory (what Path("") would read).
root = st.sidebar.text_input(
    "Store root",
    value=default,
    help="The folder holding one sub-folder per run (`<root>/<run_id>/run.json`).",
).strip() or default
runs = get_store(root).runs()
if runs.empty:
    st.info(start_hint(root))
    st.stop()

run_ids = runs_table(runs)
live = bool(runs.loc[runs["run_id"].isin(run_ids), "status"].eq("running").any())
st.fragment(run_every=REFRESH_SECS if live else None)(charts)(root, run_ids, run_labels(runs), live)
