"""Streamlit entry point: the shared sidebar and navigation over pages/.

    streamlit run dashboard/app.py -- --db results.duckdb [--checkpoint-dir DIR] [--segmenter STEM]

Pages import `dashboard` and `benchmark` as the installed package (`pip install -e .`, which
requirements.txt does), whatever folder streamlit was started in.
"""
import streamlit as st

from dashboard import cache, common

# The tab's icon is an emoji, which the browser draws itself: for a `:material/...:` page icon
# streamlit points the favicon at a font CDN, a request that leaves the network (and fails offline).
# Material icons inside the pages are fine: they come from the font streamlit serves.
st.set_page_config(page_title="CXR shortcut audit", page_icon="🩻", layout="wide")
# the live CAM's worker starts with the first session (with --live-workers 0: torch's imports, in
# the background while the first page draws)
cache.model_worker(cache.settings().live_workers)

PAGES = [
    st.Page("pages/leaderboard.py", title="Leaderboard", icon=":material/leaderboard:", default=True),
    st.Page("pages/patterns.py", title="Patterns", icon=":material/grid_view:"),
    st.Page("pages/performance.py", title="Performance", icon=":material/monitoring:"),
    st.Page("pages/compare.py", title="Compare", icon=":material/compare:"),
    st.Page("pages/misclassifications.py", title="Misclassifications", icon=":material/error:"),
    st.Page("pages/live_cam.py", title="Live CAM", icon=":material/upload_file:"),
]

navigation = st.navigation(PAGES)
common.sidebar()
navigation.run()
