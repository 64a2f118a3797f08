"""Every table on the dashboard can be taken away: CSV and Parquet buttons under it.

The file holds exactly the frame the page passed to st.dataframe (all its columns, also those the
page hides, such as run_id), so a downloaded table can be traced back to its runs. The bytes are
built only when a button is clicked (a callable given to st.download_button), so a page that is
never downloaded never pays for the encoding. Parquet is written by pyarrow (pinned in
requirements.txt); a column that mixes Python types Arrow cannot put in one column is written as
text.
"""
from __future__ import annotations

import functools
import io
import re

import pandas as pd
import pyarrow as pa
import streamlit as st

PARQUET_MIME = "application/vnd.apache.parquet"


def csv_bytes(frame: pd.DataFrame) -> bytes:
    """The frame as UTF-8 CSV, without the index."""
    return frame.to_csv(index=False).encode("utf-8")


def _arrow_ready(frame: pd.DataFrame) -> pd.DataFrame:
    """Object columns that Arrow cannot type as one column (mixed types) become text."""
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype == object:
            try:
                pa.array(out[col], from_pandas=True)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                out[col] = out[col].map(lambda v: None if v is None or (isinstance(v, float) and v != v) else str(v))
    return out


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    """The frame as a Parquet file (pyarrow), without the index."""
    buf = io.BytesIO()
    _arrow_ready(frame).to_parquet(buf, index=False, engine="pyarrow")
    return buf.getvalue()


def file_stem(name: str) -> str:
    """A safe file name stem: letters, digits, '.', '_' and '-' only."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "table"


def table_buttons(frame: pd.DataFrame, name: str, key: str, container=None) -> None:
    """'CSV' and 'Parquet' download buttons for `frame` (widget keys `<key>_csv`, `<key>_parquet`)."""
    row = (container or st).container(horizontal=True, gap="small")  # buttons as wide as their labels
    stem = file_stem(name)
    rows = f"{len(frame)} rows"
    row.download_button("CSV", data=functools.partial(csv_bytes, frame), file_name=f"{stem}.csv", mime="text/csv",
                        key=f"{key}_csv", icon=":material/download:", on_click="ignore",
                        help=f"Download this table ({rows}, every column) as CSV")
    row.download_button("Parquet", data=functools.partial(parquet_bytes, frame), file_name=f"{stem}.parquet",
                        mime=PARQUET_MIME, key=f"{key}_parquet", icon=":material/download:", on_click="ignore",
                        help=f"Download this table ({rows}, every column, typed) as Parquet")
