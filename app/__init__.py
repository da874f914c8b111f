"""The Streamlit dashboard (`streamlit run app`); a package only so that tests can import app.charts."""
