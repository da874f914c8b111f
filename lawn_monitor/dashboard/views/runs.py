"""Runs: every run in the store with its status, config, progress and accuracy; filter, select
the runs the other pages show, download the table.

The selection is a set of run ids (the sidebar's ``runs``), never row numbers: the ticks shown
are the selected runs that pass the filter, and a selected run that the filter hides stays
selected (the page says how many are hidden)."""

import hashlib

import streamlit as st

from lawn_monitor.dashboard import state
from lawn_monitor.dashboard.tables import STATUSES, filter_options, filter_runs, mark_winning_trials

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
    "epochs",
    "dataset",
    "model",
    "optimizer",
    "lawn",
    "batch_size",
    "lr",
    "seed",
    "step",
    "study",
    "trial",
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
shown = filter_runs(state.filtered_runs(runs), status, config)
# Runs of a tuning study (`lawn-monitor tune`) show their study and trial, the best trial of each
# study marked; stores without studies show neither column.
shown = mark_winning_trials(shown)
studies = "study" in shown.columns and bool(shown["study"].notna().any())
shown_columns = [c for c in COLUMNS if c not in ("study", "trial", "val_acc") or studies]
table = (
    shown.assign(label=shown["run_id"].map(labels)).reindex(columns=["run_id", *shown_columns]).reset_index(drop=True)
)
table["created_at"] = table["created_at"].astype(str).str.slice(0, 16).str.replace("T", " ")

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
    column_order=shown_columns,
    column_config={  # widths in px that fit all columns beside a sidebar at 1600 px (tests/test_browser_views.py)
        "label": st.column_config.TextColumn("run", pinned=True, width=136),
        "status": st.column_config.TextColumn("status", pinned=True, width=72),
        "progress": st.column_config.ProgressColumn(
            "progress", min_value=0.0, max_value=1.0, format="percent", pinned=True, width=80
        ),
        "test_acc": st.column_config.NumberColumn(
            "acc (latest)", format="percent", width=82, help="test accuracy, latest evaluation"
        ),
        "best_test_acc": st.column_config.NumberColumn(
            "acc (best)", format="percent", width=76, help="test accuracy, best evaluation"
        ),
        "val_acc": st.column_config.NumberColumn(
            "val acc",
            format="percent",
            width=70,
            help="validation accuracy, latest evaluation (what tuning chooses by)",
        ),
        "epochs": st.column_config.NumberColumn("epochs", format="%d", width=56),
        "dataset": st.column_config.TextColumn("dataset", width=76),
        "model": st.column_config.TextColumn("model", width=64),
        "optimizer": st.column_config.TextColumn("optimizer", width=74),
        "lawn": st.column_config.CheckboxColumn("LAWN", width=52),
        "batch_size": st.column_config.NumberColumn("batch", format="%d", width=56, help="batch size"),
        "lr": st.column_config.NumberColumn("lr", format="%.3g", width=56),
        "seed": st.column_config.NumberColumn("seed", format="%d", width=46),
        "step": st.column_config.NumberColumn("step", format="%d", width=62),
        "created_at": st.column_config.TextColumn("created", width=112),
        "study": st.column_config.TextColumn("study", width=80),
        "trial": st.column_config.TextColumn(
            "trial", width=56, help="★: the study's winning trial (highest final validation accuracy)"
        ),
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
