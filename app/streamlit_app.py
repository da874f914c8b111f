"""`streamlit run app` from a checkout: the dashboard that ships in the package
(lawn_monitor/dashboard/streamlit_app.py; installed, it starts with `lawn-monitor dashboard`)."""

from lawn_monitor.dashboard.streamlit_app import main

main()
