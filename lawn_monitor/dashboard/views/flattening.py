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
state.auto_refresh(root, runs, run_ids)
log_y = state.checkbox(
    "log scale", key="log", default=True, help="Log y for loss, gradient norm and curvature (they shrink by decades)."
)
switches = store.switch_steps(run_ids)


def draw(panel):
    metric, title, log = panel
    state.series_chart(store, run_ids, metric, labels, colors, switches, smooth, title=title, log_y=log and log_y)


state.grid([("train/loss", "train loss", True), ("grad_norm", "gradient norm (whole model)", True)], draw)
trace = store.series(run_ids, "gn_trace", with_se=True)
exact = store.series(run_ids, "hessian_trace", with_se=True)
optimizers = dict(zip(runs["run_id"], runs["optimizer"])) if "optimizer" in runs.columns else {}
sharp, limit = sharpness_vs_threshold(
    state.labelled(store.series(run_ids, "sharpness"), labels),
    state.labelled(store.series(run_ids, "sharpness_precond"), labels),
    state.labelled(store.series(run_ids, "sharpness_threshold"), labels),
    optimizers,
)
left, right = st.columns(2)
with left:
    state.show(
        band_chart(
            state.labelled(trace, labels),
            "Hessian trace: GN proxy ± 1 SE, Hutchinson (◆)",
            log_y=log_y,
            switches=switches,
            points=state.labelled(exact, labels),
            palette=colors,
            y_title="Hessian trace",
            zoom=state.zoom(),
        ),
        "No Hessian trace: curvature needs a probe batch (the trainer passes one).",
    )
with right:
    state.show(
        threshold_chart(
            sharp,
            limit,
            "sharpness vs. stability threshold (dotted)",
            log_y=log_y,
            switches=switches,
            palette=colors,
            y_title="top eigenvalue (P⁻¹H / H)",
            zoom=state.zoom(),
        ),
        "No sharpness: it is measured on a slow cadence; a few points appear per run.",
    )
    st.caption(
        "Top Hessian eigenvalue on the probe batch. Adam-family runs show it preconditioned by Adam's "
        "second moments (P⁻¹H), the quantity their line (2 + 2β₁) / ((1 − β₁) lr) bounds; SGD runs show the "
        "plain one (H) against (2 + 2 momentum) / lr. No line where the LR is 0."
    )
state.grid(
    [
        ("logit_norm", "logit norm (mean L2)", False),
        ("weight_norm", "weight norm (whole model)", False),
        ("max_prob", "max softmax probability", False),
        ("flat_frac", f"flattened samples (loss < {FLAT_LOSS:g})", False),
    ],
    draw,
)
