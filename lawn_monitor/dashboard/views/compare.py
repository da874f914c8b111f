"""Compare: any metric of many runs over step, epoch, time since start or wall-clock time, smoothed,
optionally averaged over seeds by config, with more metrics beside it as a grid of panels; and the
paper's Table 2 and Figure 1 from the finished runs, with the paper's numbers beside ours where the
dataset matches."""

import pandas as pd
import streamlit as st

from lawn_monitor.dashboard import state
from lawn_monitor.dashboard.charts import batch_size_chart, group_chart, metric_chart
from lawn_monitor.dashboard.styles import group_palette
from lawn_monitor.dashboard.tables import BANDS, CONFIG_KEYS, aggregate, as_text, group_labels, runs_dataset
from lawn_monitor.metrics import info, metric_table
from lawn_monitor.paper import PAPER_TABLE2, TABLE_BY, figure1_frame, split_keys, table2, table2_grid

X_TITLES = {"step": "step", "epoch": "epoch", "time": "seconds since start", "wall": "wall-clock time"}

root, store, runs, labels, run_ids, colors, smooth = state.page_header("Compare")
st.caption("Runs: " + ", ".join(labels[run_id] for run_id in run_ids) + " (choose others on the Runs page).")

metrics = store.metrics(run_ids) or ["train/loss"]
c0, c1, c2, c4 = st.columns([3, 2, 1, 1])


def on_metric() -> None:
    # A new metric starts on its own scale (log for those that shrink by decades), not the last one's.
    st.session_state["log"] = state.log_default(st.session_state["metric"])


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
    x = state.selectbox(
        "x axis",
        list(X_TITLES),
        key="x",
        default="step",
        help="step, epoch, seconds since each run started, or wall-clock time (when each value was logged)",
    )
with c4:
    log_y = state.checkbox("log scale", key="log", default=state.log_default(metric))
keys = [key for key in CONFIG_KEYS if key in runs.columns]
g1, g2, g3 = st.columns([2, 1, 2])
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
with g3:
    panels = state.multiselect(
        "more metrics, as panels below",
        [m for m in metrics if m != metric],
        key="panels",
        help="Several metrics at once: each its own panel on the same runs, x axis, smoothing and averaging.",
    )
st.caption(f"`{metric}`: {meta.meaning}.")


def frame(metric: str, layer: str) -> pd.DataFrame:
    """What one chart plots: each run's series (or each group's mean and band) on the chosen x."""
    weight = smooth if info(metric).smooth else 0.0
    df = state.series(state.get_store(root), run_ids, metric, layer, x="step" if x == "wall" else x, smooth=weight)
    if x == "wall":
        df = df.assign(x=df["wall_time"])
    if by:
        groups = group_labels(runs[runs["run_id"].isin(run_ids)], by, labels)
        df = aggregate(df.assign(value=df["smoothed"]), groups, band)
    else:
        df = state.labelled(df, labels)[
            ["run_id", "label", "step", "epoch", "wall_time", "x", "value", "smoothed", "min", "max"]
        ]
    return df.assign(x=pd.to_datetime(df["x"], unit="s")) if x == "wall" else df


def chart(metric: str, layer: str, log_y: bool, plotted: pd.DataFrame, zoom: bool):
    """The chart of ``frame``'s data: group means with bands, or a line per run."""
    meta = info(metric)
    weight = smooth if meta.smooth else 0.0
    title = metric + (f" of {layer}" if layer else "") + (f" (smoothed {weight:g})" if weight else "")
    if by:
        return group_chart(
            plotted,
            f"{title}, mean and {BANDS[band]} per group",
            log_y,
            X_TITLES[x],
            palette=group_palette(state.run_styles(runs), group_labels(runs[runs["run_id"].isin(run_ids)], by, labels)),
            y_title=meta.axis,
            percent=meta.percent,
            zoom=zoom,
            temporal=x == "wall",
        )
    found = state.switches(store, run_ids)
    switches = found.assign(x=found[x]) if x in ("step", "epoch") else None  # no wall time for a switch
    return metric_chart(
        plotted,
        title,
        log_y,
        switches,
        x="x",
        x_title=X_TITLES[x],
        palette=colors,
        y_title=meta.axis,
        percent=meta.percent,
        zoom=zoom,
        robust=state.robust(),
        temporal=x == "wall",
        crosshair=True,
    )


refresh = state.panel(runs, run_ids)  # while selected runs train, each chart redraws alone when they log


@refresh
def main_chart() -> None:
    key = ("compare", metric, layer, x, log_y, tuple(by), band, smooth, state.robust(), tuple(run_ids), colors)
    plotted = state.cached_chart(("data", *key), store, run_ids, lambda: frame(metric, layer))
    drawn = state.cached_chart(key, store, run_ids, lambda: chart(metric, layer, log_y, plotted, True))
    state.show(drawn, f"No finite {metric} values in these runs.")
    if drawn is not None:
        state.export_buttons(drawn, metric.replace("/", "_"))
    state.csv_download(plotted, f"{metric.replace('/', '_')}.csv", "Download the plotted data (CSV)")


@refresh
def small_chart(name: str) -> None:
    log = state.log_default(name)
    key = ("panel", name, x, log, tuple(by), band, smooth, state.robust(), tuple(run_ids), colors, state.zoom())
    drawn = state.cached_chart(key, store, run_ids, lambda: chart(name, "", log, frame(name, ""), state.zoom()))
    state.show(drawn, f"No finite {name} values in these runs.")


main_chart()
if panels:
    state.grid(panels, small_chart)
with st.expander("What each metric means"):
    st.table(metric_table(metrics).set_index("metric"))

st.subheader("Table 2: final test accuracy by method and batch size")
datasets = sorted(set(as_text(runs["dataset"])) - {""}) if "dataset" in runs.columns else []
t1, t2 = st.columns(2)
with t1:
    # The selected runs' data set first (the one most of them use), not the alphabet's first.
    dataset = state.selectbox(
        "dataset",
        datasets or [""],
        key="dataset",
        default=runs_dataset(runs, run_ids) or next((d for d in datasets if d in PAPER_TABLE2), ""),
    )
with t2:
    reduce = state.selectbox("each run's accuracy", ["final", "best"], key="reduce", default="final")
summary = state.load_summary(root, "test/acc", tuple(TABLE_BY), reduce, state.finished_key(runs))
table = table2(summary, dataset or None)
if table.empty:
    finished = runs[runs["status"] == "finished"]
    on = (as_text(finished["dataset"]) == dataset).sum() if "dataset" in finished.columns else 0
    st.info(
        f"No finished run on {dataset or 'any data set'} with test accuracy, optimizer, lawn and batch size yet "
        f"({on} finished on it, {len(finished)} finished in all): `lawn-monitor sweep` makes such a grid."
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
