"""Live: the runs that are training, each chart redrawn by itself when they log new steps:
progress with ETA, loss, accuracy, LR, gradient norm and the Hessian-trace proxy, with the LAWN
switch on every chart. Selected runs that have ended are drawn faintly beside them, e.g. the
finished Adam baseline while Adam-LAWN trains. With nothing training the page keeps watching the
store and shows a run within a few seconds of its start."""

import streamlit as st

from lawn_monitor.dashboard import state
from lawn_monitor.dashboard.charts import band_chart
from lawn_monitor.dashboard.tables import progress_text

REFRESH_SECS = 2
# (metric, title, log y): whole-model panels, one line per run, each on its metric's own scale;
# the LR on a log axis so that Adam's 1e-3 and SGD's 0.1 are both readable.
PANELS = [
    ("train/loss", "train loss", None),
    ("test/acc", "test accuracy", None),
    ("lr", "learning rate", True),
    ("grad_norm", "gradient norm (whole model)", None),
]
TRACE_TITLE = "Hessian trace: GN proxy ± 1 SE, Hutchinson (◆)"

root = state.store_root()
smooth = state.smoothing()
st.title("Live")


def live_runs(runs) -> tuple[list[str], list[str]]:
    """The runs drawn live (the selected ones training, else every one training that passes the
    filter) and the selected runs that have ended (drawn faintly beside them)."""
    running = state.filtered_runs(runs).loc[lambda r: r["status"] == "running", "run_id"].tolist()
    selected = state.selected_runs(runs)
    live = [run_id for run_id in selected if run_id in running] or running
    return live, [run_id for run_id in selected if run_id not in running]


@st.fragment(run_every=REFRESH_SECS)
def watch(root: str, live: list[str]) -> None:
    """Every REFRESH_SECS, look at the runs list (run.json files, not metrics): when the set of
    runs training changes (one starts, one ends), redraw the page once."""
    runs = state.load_runs(root)
    if not runs.empty and live_runs(runs)[0] != live:
        st.rerun(scope="app")


def progress(store, run_ids, labels) -> None:
    for run_id in run_ids:
        info = store.run_info(run_id) or {}
        total, step = info.get("total_steps"), info.get("step") or 0
        st.progress(min(step / total, 1.0) if total else 0.0, text=progress_text(labels[run_id], info))


def draw_charts(runs, labels, live, faint, smooth) -> None:
    """Each chart its own fragment: it redraws when its runs logged new steps, alone."""
    run_ids = live + faint
    store = state.get_store(root)
    colors = state.palette(runs, run_ids, faint=faint)
    refresh = state.panel(runs, live, every=REFRESH_SECS)

    def draw(item):
        metric, title, log = item
        switches = state.switches(store, run_ids)
        # The x range is the live runs' steps: ended runs beside them are cut there, so that a run at
        # step 50 is not one pixel of an ended run's 20,000.
        fit = tuple(live) if faint else ()
        state.series_chart(store, run_ids, metric, labels, colors, switches, smooth, title, log, fit_x=fit)

    state.grid(PANELS, refresh(draw))

    @refresh
    def trace() -> None:
        def build():
            switches = state.switches(store, run_ids)
            estimate = state.series(store, run_ids, "gn_trace", with_se=True)
            exact = state.series(store, run_ids, "hessian_trace", with_se=True)
            return band_chart(
                state.labelled(estimate, labels),
                TRACE_TITLE,
                log_y=True,
                switches=switches,
                points=state.labelled(exact, labels),
                palette=colors,
                y_title="Hessian trace",
                zoom=state.zoom(),
            )

        chart = state.cached_chart(("live trace", tuple(run_ids), colors, state.zoom()), store, run_ids, build)
        state.show(chart, "No curvature yet: the Hessian-trace proxy runs on a budget (see --curvature-budget).")

    trace()


runs = state.load_runs(root)
labels = state.run_labels(runs)
live, ended = live_runs(runs)
watch(root, live)
if live:
    if not set(state.selected_runs(runs)) & set(live):
        st.caption("None of the selected runs is training; showing every run that is.")
    if ended:
        st.caption(
            "Faint: selected runs that have ended, drawn for comparison on the live runs' steps: "
            + ", ".join(labels[run_id] for run_id in ended)
            + "."
        )
    state.panel(runs, live, every=REFRESH_SECS)(progress)(state.get_store(root), live, labels)
    draw_charts(runs, labels, live, ended, smooth)
else:
    st.info(
        "No run is training now; these are the selected runs as they ended. This page keeps watching the "
        f"store: start one (`lawn-monitor train ... --root {root}`) and it appears here within seconds."
    )
    progress(state.get_store(root), ended, labels)
    draw_charts(runs, labels, ended, [], smooth)
