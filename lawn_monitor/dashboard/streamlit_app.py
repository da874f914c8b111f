"""The lawn-monitor dashboard: pick runs from the store, watch them live, compare them.

    lawn-monitor dashboard                   # reads $LAWN_MONITOR_ROOT, else ./runs
    streamlit run app                        # the same app, from a checkout of the repository
    http://localhost:8501/?root=/data/runs   # or name the store root in the URL

This file is the frame around the pages in views/: the store root, the URL state and the
navigation. Queries live in ``lawn_monitor.RunStore``, chart builders in ``charts.py``.
"""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from lawn_monitor.dashboard import state

VIEWS = Path(__file__).resolve().parent / "views"


def main() -> None:
    # Pages by absolute path, so that the frame runs the same from `streamlit run` on this file
    # or on the checkout's app/streamlit_app.py, which calls main().
    pages = [
        st.Page(VIEWS / "runs.py", title="Runs", icon=":material/table_rows:", default=True),  # at /
        st.Page(VIEWS / "live.py", title="Live", icon=":material/monitor_heart:", url_path="live"),
        st.Page(VIEWS / "flattening.py", title="Loss flattening", icon=":material/trending_down:",
                url_path="flattening"),
        st.Page(VIEWS / "adaptivity.py", title="Weight adaptivity", icon=":material/grid_on:", url_path="adaptivity"),
        st.Page(VIEWS / "compare.py", title="Compare", icon=":material/compare_arrows:", url_path="compare"),
    ]
    st.set_page_config(page_title="lawn-monitor", layout="wide")
    page = st.navigation(pages)
    st.sidebar.title("lawn-monitor")
    root = state.root_input()
    runs = state.load_runs(root)
    if runs.empty:
        st.title(page.title)
        st.info(state.start_hint(root))
        state.wait_for_runs(root)  # polls, and shows the page as soon as a run appears
        st.stop()
    state.runs_input(runs)
    state.smoothing_input()
    state.zoom_input()
    page.run()


if __name__ == "__main__":  # `streamlit run` runs this file as __main__
    main()
