"""The lawn-monitor dashboard: pick runs from the store, watch them live, compare them.

    lawn-monitor dashboard                   # reads $LAWN_MONITOR_ROOT, else ./runs
    lawn-monitor dashboard --root runs --allow-root /data/runs   # a second store on offer
    streamlit run app                        # the same app, from a checkout of the repository

This file is the frame around the pages in views/: the store root, the URL state and the
navigation. Queries live in ``lawn_monitor.RunStore``, chart builders in ``charts.py``.
"""

from __future__ import annotations

import time
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
        st.Page(
            VIEWS / "flattening.py", title="Loss flattening", icon=":material/trending_down:", url_path="flattening"
        ),
        st.Page(VIEWS / "adaptivity.py", title="Weight adaptivity", icon=":material/grid_on:", url_path="adaptivity"),
        st.Page(VIEWS / "compare.py", title="Compare", icon=":material/compare_arrows:", url_path="compare"),
    ]
    # A page icon of its own: otherwise the browser fetches each page's Material icon from Google
    # as its favicon (the icons in the app itself come from a font Streamlit serves).
    st.set_page_config(page_title="lawn-monitor", page_icon="📉", layout="wide")
    page = st.navigation(pages)
    st.sidebar.title("lawn-monitor")
    started = time.perf_counter()
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
    state.outliers_input()
    state.zoom_input()
    state.crosshair_input()
    with st.sidebar:
        state.chip_colours(runs)
        state.history_fix()
    try:
        page.run()
    except Exception as exc:  # Streamlit's own stop and rerun are not Exceptions: they pass
        # The page says what kind of failure; the traceback, with server paths, goes to the log only.
        state.log.exception("page %s failed", page.title)
        st.error(f"This page failed ({type(exc).__name__}). The details are in the dashboard's log.")
    state.record(f"page {page.title}", time.perf_counter() - started)


if __name__ == "__main__":  # `streamlit run` runs this file as __main__
    main()
