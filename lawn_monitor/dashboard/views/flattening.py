"""Loss flattening: the signals that collapse together when Adam overfits its training set (loss,
gradient norm, curvature, sharpness), the ones that grow (logit norm, confidence, flattened
samples) and their cause, growing weights; the selected runs overlaid so that Adam and Adam-LAWN
can be compared directly."""

import streamlit as st

from lawn_monitor.dashboard import state
from lawn_monitor.dashboard.charts import band_chart, threshold_chart
from lawn_monitor.dashboard.tables import sharpness_vs_threshold
from lawn_monitor.metrics import FLAT_LOSS

root, store, runs, labels, run_ids, colors, smooth = state.page_header("Loss flattening")
st.caption(
    "A run is flattening when its train loss, gradient norm and Hessian trace fall together toward zero "
    "while logit norm, confidence and the share of flattened samples rise, driven by growing weights. "
    "LAWN runs are dashed; their switch is a dashed rule. Runs: "
    + ", ".join(labels[run_id] for run_id in run_ids)
    + " (choose others on the Runs page)."
)
log_y = state.checkbox(
    "log scale", key="log", default=True, help="Log y for loss, gradient norm and curvature (they shrink by decades)."
)
refresh = state.panel(runs, run_ids)  # while selected runs train, each chart redraws alone when they log


def draw(panel):
    metric, title, log = panel
    switches = state.switches(store, run_ids)
    state.series_chart(store, run_ids, metric, labels, colors, switches, smooth, title=title, log_y=log and log_y)


@refresh
def trace_chart() -> None:
    def build():
        return band_chart(
            state.labelled(state.series(store, run_ids, "gn_trace", with_se=True), labels),
            "Hessian trace: GN proxy ± 1 SE, Hutchinson (◆)",
            log_y=log_y,
            switches=state.switches(store, run_ids),
            points=state.labelled(state.series(store, run_ids, "hessian_trace", with_se=True), labels),
            palette=colors,
            y_title="Hessian trace",
            zoom=state.zoom(),
        )

    chart = state.cached_chart(("flattening trace", tuple(run_ids), log_y, colors, state.zoom()), store, run_ids, build)
    state.show(chart, "No Hessian trace: curvature needs a probe batch (the trainer passes one).")


@refresh
def sharpness_chart() -> None:
    def build():
        optimizers = dict(zip(runs["run_id"], runs["optimizer"])) if "optimizer" in runs.columns else {}
        sharp, limit = sharpness_vs_threshold(
            state.labelled(state.series(store, run_ids, "sharpness"), labels),
            state.labelled(state.series(store, run_ids, "sharpness_precond"), labels),
            state.labelled(state.series(store, run_ids, "sharpness_threshold"), labels),
            optimizers,
        )
        return threshold_chart(
            sharp,
            limit,
            "sharpness vs. stability threshold (dotted)",
            log_y=log_y,
            switches=state.switches(store, run_ids),
            palette=colors,
            y_title="top eigenvalue (P⁻¹H / H)",
            zoom=state.zoom(),
        )

    chart = state.cached_chart(
        ("flattening sharpness", tuple(run_ids), log_y, colors, state.zoom()), store, run_ids, build
    )
    state.show(chart, "No sharpness: it is measured on a slow cadence; a few points appear per run.")


state.grid([("train/loss", "train loss", True), ("grad_norm", "gradient norm (whole model)", True)], refresh(draw))
left, right = st.columns(2)
with left:
    trace_chart()
with right:
    sharpness_chart()
    st.caption(
        "Top Hessian eigenvalue on the probe batch. Adam-family runs show it preconditioned by Adam's "
        "second moments (P⁻¹H), the quantity their line (2 + 2β₁) / ((1 − β₁) lr) bounds; SGD runs show the "
        "plain one (H) against (2 + 2 momentum) / lr. No line where the LR is 0; the axis follows the "
        "estimates and cuts the line where the decaying LR takes it above them."
    )
state.grid(
    [
        ("logit_norm", "logit norm (mean L2)", False),
        ("weight_norm", "weight norm (whole model)", False),
        ("max_prob", "max softmax probability", False),
        ("flat_frac", f"flattened samples (loss < {FLAT_LOSS:g})", False),
    ],
    refresh(draw),
)
