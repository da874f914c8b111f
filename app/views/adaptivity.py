"""Weight adaptivity: per-layer heatmaps (layer x step) of two runs side by side, and each layer's
update ratio against 1e-3, below which a layer has effectively stopped learning."""
import streamlit as st

import state
from charts import heatmap_chart, layer_chart

HEATMAPS = [
    ("weight_norm", "weight norm"),
    ("update_ratio", "update ratio (update norm / weight norm)"),
    ("grad_norm", "gradient norm"),
    ("gn_trace", "Hessian-trace proxy (Gauss-Newton)"),
]
REFERENCE_RATIO = 1e-3

root = state.store_root()
runs = state.load_runs(root)
labels = state.run_labels(runs)
store = state.get_store(root)
st.title("Weight adaptivity")
options = runs["run_id"].tolist()
selected = state.selected_runs(runs)
left, right = st.columns(2)
with left:
    a = state.selectbox("left run", options, key="a", default=selected[0], format_func=labels.get)
with right:
    b = state.selectbox("right run", options, key="b", default=selected[1] if len(selected) > 1 else selected[0],
                        format_func=labels.get)
switches = store.switch_steps([a, b])
switch_at = dict(zip(switches["run_id"], switches["step"]))

for metric, title in HEATMAPS:
    st.subheader(title)
    for column, run_id in zip(st.columns(2), [a, b]):
        with column:
            chart = heatmap_chart(store.layers(run_id, metric), labels[run_id], switch_step=switch_at.get(run_id))
            state.show(chart, f"No per-layer {metric} for {labels[run_id]}.")

st.subheader("Update ratio per layer (dotted: 1e-3)")
for column, run_id in zip(st.columns(2), [a, b]):
    with column:
        chart = layer_chart(store.layers(run_id, "update_ratio", points=500), labels[run_id],
                            switch_at.get(run_id), reference=REFERENCE_RATIO)
        state.show(chart, f"No per-layer update ratio for {labels[run_id]}.")
