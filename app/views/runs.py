"""Runs: every run in the store with its status, config, progress and accuracy; filter, select
the runs the other pages show, download the table."""
import streamlit as st

import state
from tables import STATUSES, filter_options, filter_runs

# What a glance needs first (state, progress, accuracy), then the config that tells runs apart.
COLUMNS = ["name", "status", "progress", "test_acc", "best_test_acc", "dataset", "model", "optimizer", "lawn",
           "batch_size", "lr", "seed", "step", "created_at"]
ROW_PX, MAX_HEIGHT_PX = 35, 700  # the table grows with its rows up to this, then scrolls

root = state.store_root()
runs = state.load_runs(root)
st.title("Runs")

options = filter_options(runs)
filtering = any(state.get_list(key) for key in ["status", *options])
with st.expander("Filter", expanded=filtering):
    columns = st.columns(1 + len(options))
    with columns[0]:
        status = state.multiselect("status", STATUSES, key="status")
    config = {}
    for column, (key, values) in zip(columns[1:], options.items()):
        with column:
            config[key] = state.multiselect(key.replace("_", " "), values, key=key)
shown = filter_runs(runs, status, config)
table = shown.reindex(columns=["run_id", *COLUMNS]).reset_index(drop=True)

chosen = state.get_list("runs")
selection_default = table.index[table["run_id"].isin(chosen)].tolist()
event = st.dataframe(
    table,
    key="runs_table",
    on_select="rerun",
    selection_mode="multi-row",
    selection_default={"selection": {"rows": selection_default}},
    hide_index=True,
    height=min(ROW_PX * (len(table) + 1) + 3, MAX_HEIGHT_PX),
    column_order=COLUMNS,
    column_config={
        "name": st.column_config.TextColumn("run"),
        "lawn": st.column_config.CheckboxColumn("LAWN"),
        "batch_size": st.column_config.NumberColumn("batch size", format="%d"),
        "lr": st.column_config.NumberColumn("lr", format="%.3g"),
        "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0, format="percent"),
        "test_acc": st.column_config.NumberColumn("test acc (latest)", format="percent"),
        "best_test_acc": st.column_config.NumberColumn("test acc (best)", format="percent"),
        "created_at": st.column_config.TextColumn("created"),
    },
)
# The selection is rows of this table; it changes only when the user clicks, so a selection made
# earlier (or opened from a link) stays while the table itself is refreshed or filtered.
rows = [row for row in event.selection.rows if row < len(table)]
if rows != st.session_state.get("_runs_rows", selection_default):
    state.put("runs", table["run_id"].iloc[rows].tolist())
st.session_state["_runs_rows"] = rows

selected = state.selected_runs(runs)
labels = state.run_labels(runs)
how = "selected" if state.get_list("runs") else f"the {len(selected)} newest (select rows to choose others)"
st.caption(f"{len(table)} of {len(runs)} runs shown. The other pages show {how}: "
           + ", ".join(labels[run_id] for run_id in selected))
state.csv_download(table, "runs.csv")
