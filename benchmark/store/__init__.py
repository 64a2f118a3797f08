"""results.duckdb: schema, one-transaction-per-run writes, and the read queries the dashboard uses.

All SQL of the project lives in this package.
"""
from benchmark.store import queries
from benchmark.store.connection import reader, writer
from benchmark.store.writes import RunBundle, replace_run_rows, replace_run_tables, write_run, write_segmenter

__all__ = ["reader", "writer", "RunBundle", "write_run", "replace_run_rows",
           "write_segmenter", "replace_run_tables", "queries"]
