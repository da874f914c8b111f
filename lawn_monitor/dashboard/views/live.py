"""Live: the runs that are training, redrawn every 2 s (only this part of the page reruns):
progress with ETA, loss, accuracy, LR, gradient norm and the Hessian-trace proxy, with the LAWN
switch on every chart. Selected runs that have ended are drawn faintly beside them, e.g. the
finished Adam baseline while Adam-LAWN trains. With nothing training the page keeps watching the
store and shows a run within a few seconds of its start."""

import streamlit as st

from lawn_monitor.dashboard import state
from lawn_monitor.dashboard.charts import band_chart
from lawn_monitor.dashboard.tables import progress_text

REFRESH_SECS = 2
# (metric, title): whole-model panels, one line per run, each on its metric's own scale.
PANELS = [
    ("train/loss", "train loss"),
    ("test/acc", "test accuracy"),
    ("lr", "learning rate"),
    ("grad_norm", "gradient norm (whole model)"),
]
TRACE_TITLE = "Hessian trace: GN proxy ± 1 SE, Hutchinson (◆)"

root = state.store_root()
smooth = state.smoothing()
st.title("Live")


def live_runs(runs) -> tuple[list[str], list[str]]:
    """The runs drawn live (the selected ones training, else every one training) and the selected
    runs that have ended (drawn faintly beside them)."""
    running = runs.loc[runs["status"] == "running", "run_id"].tolist()
    selected = state.selected_runs(runs)
    live = [run_id for run_id in selected if run_id in running] or running
    return live, [run_id for run_id in selected if run_id not in running]


@st.fragment(run_every=REFRESH_SECS)
def watch(root: str, live: list[str]) -> None:
    """Every REFRESH_SECS, read the runs' run.json files (not their metrics): when the set of runs
    training changes (one starts, one ends), redraw the page."""
    runs = state.get_store(root).runs()
    if not runs.empty and live_runs(runs)[0] != live:
        state.load_runs.clear()
        st.rerun(scope="app")


@st.fragment(run_every=REFRESH_SECS)
def panel(root: str, live: list[str], ended: list[str], smooth: float) -> None:
    """The live runs' progress and charts, redrawn every REFRESH_SECS."""
    store = state.get_store(root)
    runs = state.load_runs(root)
    labels = state.run_labels(runs)
    progress(store, live, labels)
    draw_charts(store, runs, labels, live + ended, ended, smooth)


def progress(store, run_ids, labels) -> None:
    for run_id in run_ids:
        info = store.run_info(run_id) or {}
        total, step = info.get("total_steps"), info.get("step") or 0
        st.progress(min(step / total, 1.0) if total else 0.0, text=progress_text(labels[run_id], info))


def draw_charts(store, runs, labels, run_ids, faint, smooth) -> None:
    switches = store.switch_steps(run_ids)
    colors = state.palette(runs, run_ids, faint=faint)

    def draw(panel):
        metric, title = panel
        state.series_chart(store, run_ids, metric, labels, colors, switches, smooth, title=title)

    state.grid(PANELS, draw)
    trace = store.series(run_ids, "gn_trace", with_se=True)
    exact = store.series(run_ids, "hessian_trace", with_se=True)
    chart = band_chart(
        state.labelled(trace, labels),
        TRACE_TITLE,
        log_y=True,
        switches=switches,
        points=state.labelled(exact, labels),
        palette=colors,
        y_title="Hessian trace",
        zoom=state.zoom(),
    )
    state.show(chart, "No curvature yet: the Hessian-trace proxy runs on a budget (see --curvature-budget).")


runs = state.load_runs(root)
labels = state.run_labels(runs)
live, ended = live_runs(runs)
watch(root, live)
if live:
    if not set(state.selected_runs(runs)) & set(live):
        st.caption("None of the selected runs is training; showing every run that is.")
    if ended:
        st.caption(
            "Faint: selected runs that have ended, drawn for comparison: "
            + ", ".join(labels[run_id] for run_id in ended)
            + "."
        )
    panel(root, live, ended, smooth)
else:
    st.info(
        "No run is training now; these are the selected runs as they ended. This page keeps watching the "
        f"store: start one (`lawn-monitor train ... --root {root}`) and it appears here within seconds."
    )
    progress(state.get_store(root), ended, labels)
    draw_charts(state.get_store(root), runs, labels, ended, [], smooth)
