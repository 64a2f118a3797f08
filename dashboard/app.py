"""Streamlit entry point: the shared sidebar and navigation over pages/.

    streamlit run dashboard/app.py -- --db results.duckdb [--checkpoints DIR] [--segmenter STEM]

Streamlit puts this file's folder, not the repository, on sys.path; the one path insertion
below lets pages import `dashboard` and `benchmark` however the server was started.
"""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import streamlit as st  # noqa: E402

from dashboard import common  # noqa: E402

st.set_page_config(page_title="CXR shortcut audit", page_icon=":material/radiology:", layout="wide")

PAGES = [
    st.Page("pages/leaderboard.py", title="Leaderboard", icon=":material/leaderboard:", default=True),
    st.Page("pages/compare.py", title="Compare", icon=":material/compare:"),
    st.Page("pages/misclassifications.py", title="Misclassifications", icon=":material/error:"),
    st.Page("pages/live_cam.py", title="Live CAM", icon=":material/upload_file:"),
]

navigation = st.navigation(PAGES)
common.sidebar()
navigation.run()
