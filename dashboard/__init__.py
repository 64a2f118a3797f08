"""Streamlit dashboard over results.duckdb: leaderboard, compare, misclassifications, live CAM.

Start it with `python -m dashboard --db results.duckdb` (or
`streamlit run dashboard/app.py -- --db results.duckdb`). Pages only draw; tables come from
views.py, pictures from render.py, caching from cache.py, SQL from benchmark.store.queries.
"""
