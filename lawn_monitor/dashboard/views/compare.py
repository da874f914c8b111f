"""Compare: any metric of many runs over step, epoch or time, smoothed, optionally averaged over
seeds by config; and the paper's Table 2 and Figure 1 from the finished runs, with the paper's
numbers beside ours where the dataset matches."""

import streamlit as st

from lawn_monitor.dashboard import state
from lawn_monitor.dashboard.charts import batch_size_chart, group_chart, metric_chart
from lawn_monitor.dashboard.styles import group_palette
from lawn_monitor.dashboard.tables import BANDS, CONFIG_KEYS, aggregate, as_text, group_labels
from lawn_monitor.metrics import info, metric_table
from lawn_monitor.paper import PAPER_TABLE2, TABLE_BY, figure1_frame, split_keys, table2, table2_grid

X_TITLES = {"step": "step", "epoch": "epoch", "time": "seconds since start"}

root, store, runs, labels, run_ids, colors, smooth = state.page_header("Compare")
st.caption("Runs: " + ", ".join(labels[run_id] for run_id in run_ids) + " (choose others on the Runs page).")

state.auto_refresh(root, runs, run_ids)
metrics = store.metrics(run_ids) or ["train/loss"]
c0, c1, c2, c4 = st.columns([3, 2, 1, 1])


def on_metric() -> None:
    # A new metric starts on its own scale (log for those that shrink by decades), not the last one's.
    st.session_state["log"] = info(st.session_state["metric"]).log


with c0:
    # Plain names: the URL carries what the box shows (?metric=grad_norm); each one's meaning is
    # under the box and in the table of all metrics below the chart.
    metric = state.selectbox(
        "metric",
        metrics,
        key="metric",
        default="test/acc" if "test/acc" in metrics else metrics[0],
        on_change=on_metric,
        help="What each metric means: see the list below the chart.",
    )
meta = info(metric)
with c1:
    layers = ["", *store.layer_names(run_ids, metric)]
    layer = state.selectbox("layer", layers, key="layer", default="", format_func=lambda name: name or "(whole model)")
with c2:
    x = state.selectbox("x axis", list(X_TITLES), key="x", default="step")
with c4:
    log_y = state.checkbox("log scale", key="log", default=meta.log)
keys = [key for key in CONFIG_KEYS if key in runs.columns]
g1, g2 = st.columns([3, 1])
with g1:
    by = state.multiselect(
        "average over runs that share",
        keys,
        key="group",
        help="Runs with the same values of these config keys (e.g. seeds of one "
        "method) become one line: their mean, with a band.",
    )
with g2:
    # Plain option values throughout: a bound widget's URL carries the text it shows.
    band = state.selectbox(
        "band around the mean",
        list(BANDS),
        key="band",
        default="std",
        disabled=not by,
        help="; ".join(f"{key}: {text}" for key, text in BANDS.items()),
    )

st.caption(f"`{metric}`: {meta.meaning}.")
weight = smooth if meta.smooth else 0.0
df = store.series(run_ids, metric, layer, x=x, smooth=weight)
title = metric + (f" of {layer}" if layer else "") + (f" (smoothed {weight:g})" if weight else "")
if by:
    groups = group_labels(runs[runs["run_id"].isin(run_ids)], by, labels)
    plotted = aggregate(df.assign(value=df["smoothed"]), groups, band)
    state.show(
        group_chart(
            plotted,
            f"{title}, mean and {BANDS[band]} per group",
            log_y,
            X_TITLES[x],
            palette=group_palette(state.run_styles(runs), groups),
            y_title=meta.axis,
            percent=meta.percent,
            zoom=True,
        ),
        f"No finite {metric} values in these runs.",
    )
else:
    switches = store.switch_steps(run_ids)
    switches = switches.assign(x=switches[x]) if x in ("step", "epoch") else None  # no wall time for a switch
    plotted = state.labelled(df, labels)[
        ["run_id", "label", "step", "epoch", "wall_time", "x", "value", "smoothed", "min", "max"]
    ]
    state.show(
        metric_chart(
            plotted,
            title,
            log_y,
            switches,
            x="x",
            x_title=X_TITLES[x],
            palette=colors,
            y_title=meta.axis,
            percent=meta.percent,
            zoom=True,
        ),
        f"No finite {metric} values in these runs.",
    )
state.csv_download(plotted, f"{metric.replace('/', '_')}.csv", "Download the plotted data (CSV)")
with st.expander("What each metric means"):
    st.table(metric_table(metrics).set_index("metric"))

st.subheader("Table 2: final test accuracy by method and batch size")
datasets = sorted(set(as_text(runs["dataset"])) - {""}) if "dataset" in runs.columns else []
t1, t2 = st.columns(2)
with t1:
    dataset = state.selectbox(
        "dataset",
        datasets or [""],
        key="dataset",
        default=next((d for d in datasets if d in PAPER_TABLE2), datasets[0] if datasets else ""),
    )
with t2:
    reduce = state.selectbox("each run's accuracy", ["final", "best"], key="reduce", default="final")
summary = state.load_summary(root, "test/acc", tuple(TABLE_BY), reduce, state.finished_key(runs))
table = table2(summary, dataset or None)
if table.empty:
    st.info(
        "No finished runs with dataset, optimizer, lawn and batch size in their config yet: "
        "`lawn-monitor sweep` makes such a grid."
    )
else:
    note = (
        "the paper's numbers beside ours"
        if dataset in PAPER_TABLE2
        else f"the paper reports no {dataset or 'such'} results, so ours stand alone"
    )
    st.caption(
        f"Mean ± std over seeds of each run's {reduce} test accuracy (%), finished runs only, each seed's "
        f"latest run once; {note}."
    )
    split = split_keys(summary, dataset or None)
    if split:
        st.caption(f"Runs that differ in {', '.join(split)} are never averaged together: each value has its own row.")
    st.dataframe(table2_grid(table), width="stretch")
    state.csv_download(table, f"table2-{dataset or 'all'}-{reduce}.csv", "Download Table 2 (CSV)")
    state.show(
        batch_size_chart(figure1_frame(table), "Figure 1: test accuracy against batch size"), "No accuracies to plot."
    )
