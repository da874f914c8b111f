"""The lawn-monitor dashboard: pick runs from the store, watch them live, compare them.

    streamlit run app                        # reads $LAWN_MONITOR_ROOT, else ./runs
    http://localhost:8501/?root=/data/runs   # or name the store root in the URL

This file is the frame around the pages in views/: the store root, the URL state and the
navigation. Queries live in ``lawn_monitor.RunStore``, chart builders in ``charts.py``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

# `streamlit run app` puts app/ on sys.path, AppTest.from_file does not: import the app's
# modules the same way under both (the pages import them too).
APP_DIR = str(Path(__file__).resolve().parent)
if APP_DIR not in sys.path:
    sys.path.insert(0, APP_DIR)
import state  # noqa: E402

PAGES = [
    st.Page("views/runs.py", title="Runs", icon=":material/table_rows:", default=True),  # at /
    st.Page("views/live.py", title="Live", icon=":material/monitor_heart:", url_path="live"),
    st.Page("views/flattening.py", title="Loss flattening", icon=":material/trending_down:", url_path="flattening"),
    st.Page("views/adaptivity.py", title="Weight adaptivity", icon=":material/grid_on:", url_path="adaptivity"),
    st.Page("views/compare.py", title="Compare", icon=":material/compare_arrows:", url_path="compare"),
]

st.set_page_config(page_title="lawn-monitor", layout="wide")
page = st.navigation(PAGES)
st.sidebar.title("lawn-monitor")
root = state.root_input()
runs = state.load_runs(root)
state.store_warnings(root)
if runs.empty:
    st.title(page.title)
    st.info(state.start_hint(root))
    state.wait_for_runs(root)  # polls, and shows the page as soon as a run appears
    st.stop()
state.runs_input(runs)
state.smoothing_input()
state.zoom_input()
page.run()
