"""Weight adaptivity: without LAWN the weights keep growing, so each step moves them relatively
less; LAWN freezes each layer's norm at the switch. Whole-model lines for every selected run, then
per-layer heatmaps of two runs side by side on one colour scale."""

import streamlit as st

from lawn_monitor.dashboard import state
from lawn_monitor.dashboard.charts import color_domain, heatmap_chart, layer_chart
from lawn_monitor.dashboard.tables import relative_to

# (metric, title, diverging around): per-layer heatmaps, the two runs on one colour domain.
HEATMAPS = [
    ("weight_growth", "weight growth (weight norm / its first-step value)", 1.0),
    ("update_ratio_per_lr", "update ratio per unit LR (update / weight norm / lr)", None),
]
MORE_HEATMAPS = [
    ("weight_norm", "weight norm", None),
    ("update_ratio", "update ratio (update / weight norm), LR schedule included", None),
    ("grad_norm", "gradient norm", None),
    ("gn_trace", "Hessian-trace proxy (Gauss-Newton)", None),
]

root, store, runs, labels, selected, colors, smooth = state.page_header("Weight adaptivity")
st.caption(
    "Without LAWN the weights keep growing, so each step moves them relatively less and they lose their "
    "ability to move away from a poor solution; LAWN freezes each layer's norm at its switch (dashed rule). "
    "Runs: " + ", ".join(labels[run_id] for run_id in selected) + " (choose others on the Runs page)."
)
state.auto_refresh(root, runs, selected)
switches = store.switch_steps(selected)


def draw(panel):
    metric, title = panel
    state.series_chart(store, selected, metric, labels, colors, switches, smooth, title=title)


state.grid(
    [
        ("weight_norm", "weight norm (whole model)"),
        ("weight_growth", "weight growth (whole model)"),
        ("update_ratio", "update ratio, raw (whole model)"),
        ("lr", "learning rate (why the raw ratio falls)"),
    ],
    draw,
)
draw(("update_ratio_per_lr", "update ratio per unit LR (whole model): adaptivity with the LR schedule divided out"))

st.subheader("Per layer, two runs side by side")
options = runs["run_id"].tolist()
left, right = st.columns(2)
with left:
    a = state.selectbox("left run", options, key="a", default=selected[0], format_func=labels.get)
with right:
    b = state.selectbox(
        "right run", options, key="b", default=selected[1] if len(selected) > 1 else selected[0], format_func=labels.get
    )
pair = store.switch_steps([a, b])
switch_at = dict(zip(pair["run_id"], pair["step"]))


# Growth since LAWN's switch makes the contrast plain: a constrained layer stays at exactly 1 (white)
# while the same layer without LAWN keeps reddening. A run without a switch is measured from the
# other run's, so that both cover the same steps.
pair_switch = next((switch_at[r] for r in (a, b) if r in switch_at), None)
since = state.selectbox(
    "weight growth since the",
    ["switch", "start"],
    key="since",
    default="switch" if pair_switch is not None else "start",
    disabled=pair_switch is None,
    help="switch: each layer's norm over its value at the LAWN switch; start: over its value at the first step",
)


def layers(run_id: str, metric: str):
    df = store.layers(run_id, metric)
    if metric == "weight_growth" and since == "switch" and pair_switch is not None:
        df = relative_to(df, switch_at.get(run_id, pair_switch))
    return df


def heatmaps(metric: str, title: str, center: float | None) -> None:
    frames = {run_id: layers(run_id, metric) for run_id in (a, b)}
    domain = color_domain(list(frames.values()), center=center)
    if metric == "weight_growth" and since == "switch" and pair_switch is not None:
        title = "weight growth since the LAWN switch (weight norm / its value at the switch)"
        # The colours span what happens after the switch (growth or none); the free phase before
        # it, where both runs grow alike, is drawn in the scale's end colour.
        after = [df[df["step"] >= pair_switch] for df in frames.values()]
        domain = color_domain(after, center=center) or domain
    st.markdown(f"**{title}**")
    for column, run_id in zip(st.columns(2), (a, b)):
        with column:
            chart = heatmap_chart(
                frames[run_id], labels[run_id], switch_step=switch_at.get(run_id), domain=domain, center=center
            )
            state.show(chart, f"No per-layer {metric} for {labels[run_id]}.")


for metric, title, center in HEATMAPS:
    heatmaps(metric, title, center)

effective = {run_id: store.layers(run_id, "effective_lr", points=500) for run_id in (a, b)}
if any(not df.empty for df in effective.values()):
    st.markdown(
        "**effective learning rate (lr / |w|² under SGD, lr / |w| under Adam, lr under LAMB) of the layers that feed a normalization layer**"
    )
    for column, run_id in zip(st.columns(2), (a, b)):
        with column:
            state.show(
                layer_chart(
                    effective[run_id],
                    labels[run_id],
                    switch_at.get(run_id),
                    y_title="effective learning rate",
                    zoom=state.zoom(),
                ),
                f"{labels[run_id]} has no layer that feeds a normalization layer.",
            )

# Drawn only when asked: four more pairs of heatmaps cost the page more than the rest of it.
if state.checkbox(
    "More per-layer heatmaps: weight norm, raw update ratio, gradient norm, Hessian-trace proxy",
    key="more",
    default=False,
):
    for metric, title, center in MORE_HEATMAPS:
        heatmaps(metric, title, center)
