"""Runs: every run in the store with its status, config, progress and accuracy; filter, select
the runs the other pages show, download the table.

The selection is a set of run ids (the sidebar's ``runs``), never row numbers: the ticks shown
are the selected runs that pass the filter, and a selected run that the filter hides stays
selected (the page says how many are hidden)."""

import hashlib

import streamlit as st

from lawn_monitor.dashboard import state
from lawn_monitor.dashboard.tables import STATUSES, filter_options, filter_runs

# Name, status and progress first and pinned (always in view), then accuracy, the tuning study
# and trial a run belongs to (and whether it won), the config that tells runs apart, then when
# it was made.
COLUMNS = [
    "label",
    "status",
    "progress",
    "val_acc",
    "test_acc",
    "best_test_acc",
    "study",
    "trial",
    "best",
    "epochs",
    "dataset",
    "model",
    "optimizer",
    "lawn",
    "batch_size",
    "lr",
    "seed",
    "step",
    "created_at",
]
ROW_PX, MAX_HEIGHT_PX = 35, 700  # the table grows with its rows up to this, then scrolls

root = state.store_root()
runs = state.load_runs(root)
labels = state.run_labels(runs)
st.title("Runs")

options = filter_options(runs)
filtering = any(st.session_state.get(key) for key in ["status", *options])
with st.expander("Filter", expanded=filtering):
    columns = st.columns(1 + len(options))
    with columns[0]:
        status = state.multiselect("status", STATUSES, key="status")
    config = {}
    for column, (key, values) in zip(columns[1:], options.items()):
        with column:
            config[key] = state.multiselect(key.replace("_", " "), values, key=key)
shown = filter_runs(runs, status, config)
table = shown.assign(label=shown["run_id"].map(labels)).reindex(columns=["run_id", *COLUMNS]).reset_index(drop=True)
table["created_at"] = table["created_at"].astype(str).str.slice(0, 19).str.replace("T", " ")

chosen = state.chosen_runs()
ticked = table.index[table["run_id"].isin(chosen)].tolist()
# The table's widget is new whenever its rows or the selection change, so that its ticks are
# always drawn from the selection (a kept widget would keep ticking row numbers, which a filter
# gives to other runs).
key = "runs_table." + hashlib.sha1(repr((table["run_id"].tolist(), chosen)).encode()).hexdigest()[:12]
visible = table["run_id"].tolist()


event = st.dataframe(
    table,
    key=key,
    on_select="rerun",
    selection_mode="multi-row",
    selection_default={"selection": {"rows": ticked}},
    hide_index=True,
    height=min(ROW_PX * (len(table) + 1) + 3, MAX_HEIGHT_PX),
    column_order=COLUMNS,
    column_config={
        "label": st.column_config.TextColumn("run", pinned=True),
        "status": st.column_config.TextColumn("status", pinned=True),
        "progress": st.column_config.ProgressColumn(
            "progress", min_value=0.0, max_value=1.0, format="percent", pinned=True
        ),
        "lawn": st.column_config.CheckboxColumn("LAWN"),
        "epochs": st.column_config.NumberColumn("epochs", format="%d"),
        "batch_size": st.column_config.NumberColumn("batch size", format="%d"),
        "lr": st.column_config.NumberColumn("lr", format="%.3g"),
        "test_acc": st.column_config.NumberColumn("test acc (latest)", format="percent"),
        "best_test_acc": st.column_config.NumberColumn("test acc (best)", format="percent"),
        "val_acc": st.column_config.NumberColumn("val acc (latest)", format="percent"),
        "study": st.column_config.TextColumn("study"),
        "trial": st.column_config.NumberColumn("trial", format="%d"),
        "best": st.column_config.CheckboxColumn("best trial", help="the study's winner: highest final val acc"),
        "created_at": st.column_config.TextColumn("created"),
    },
)

hidden = [run_id for run_id in chosen if run_id not in visible]  # selected, but filtered out
rows = [row for row in event.selection.rows if row < len(visible)]
if rows != ticked:  # the user ticked or unticked: the hidden selected runs stay, the visible ones follow
    state.select_runs(hidden + [visible[row] for row in rows])

selected = state.selected_runs(runs)
how = "selected" if chosen else f"the {len(selected)} newest (tick rows to choose others)"
note = f" {len(hidden)} selected run{'s' if len(hidden) != 1 else ''} hidden by the filter." if hidden else ""
st.caption(
    f"{len(table)} of {len(runs)} runs shown.{note} The other pages show {how}: "
    + ", ".join(labels[run_id] for run_id in selected)
)
state.csv_download(table.drop(columns="label"), "runs.csv")
