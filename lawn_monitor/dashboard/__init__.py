"""The Streamlit dashboard (``lawn-monitor dashboard``): ``streamlit_app.py`` is the frame,
``views/`` the pages (layout only), ``charts.py`` / ``styles.py`` / ``tables.py`` / ``paper.py``
pure builders tested without a browser, ``state.py`` what the pages share. Needs the
``dashboard`` extra (streamlit, altair); nothing outside this folder imports it."""
