"""Live: the selected runs that are still training, redrawn every 2 s (only this part of the
page reruns): progress with ETA, loss, accuracy, LR, gradient norm and the Hessian-trace proxy,
with the LAWN switch drawn on every chart."""
import streamlit as st

import state
from charts import band_chart, with_se
from tables import progress_text

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
runs = state.load_runs(root)
labels = state.run_labels(runs)
smooth = state.smoothing()
st.title("Live")
running = runs.loc[runs["status"] == "running", "run_id"].tolist()
selected = state.selected_runs(runs)
watch = [run_id for run_id in selected if run_id in running] or running
live = bool(watch)
if not live:
    watch = selected
    st.info("No run is training now; these are the selected runs as they ended. Start one with "
            f"`lawn-monitor train ... --root {root}` and it appears here.")
elif not set(selected) & set(running):
    st.caption("None of the selected runs is training; showing every run that is.")


@st.fragment(run_every=REFRESH_SECS if live else None)
def panel(root: str, run_ids: list[str], labels: dict[str, str], live: bool, smooth: float) -> None:
    store = state.get_store(root)
    infos = {run_id: store.run_info(run_id) or {} for run_id in run_ids}
    if live and not any(store.status(run_id) == "running" for run_id in run_ids):
        state.load_runs.clear()
        st.rerun(scope="app")  # they have all ended: refresh the page and stop polling
    for run_id in run_ids:
        info = infos[run_id]
        total, step = info.get("total_steps"), info.get("step") or 0
        st.progress(min(step / total, 1.0) if total else 0.0, text=progress_text(labels[run_id], info))
    switches = store.switch_steps(run_ids)
    colors = state.palette(state.load_runs(root), run_ids)

    def draw(panel):
        metric, title = panel
        state.series_chart(store, run_ids, metric, labels, colors, switches, smooth, title=title)

    state.grid(PANELS, draw)
    trace = with_se(store.series(run_ids, "gn_trace"), store.series(run_ids, "gn_trace_se"))
    exact = with_se(store.series(run_ids, "hessian_trace"), store.series(run_ids, "hessian_trace_se"))
    chart = band_chart(state.labelled(trace, labels), TRACE_TITLE, log_y=True, switches=switches,
                       points=state.labelled(exact, labels), palette=colors, y_title="Hessian trace")
    state.show(chart, "No curvature yet: the Hessian-trace proxy runs on a budget (see --curvature-budget).")


panel(root, watch, labels, live, smooth)
