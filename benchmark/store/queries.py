"""Read queries, each a plain function of a connection returning a DataFrame or value.

The dashboard and the CLI call only these (values always as parameters).
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def done_run_ids(con) -> set[str]:
    return {r[0] for r in con.execute("SELECT run_id FROM runs WHERE status = 'done'").fetchall()}


def runs(con, status: str | None = None) -> pd.DataFrame:
    if status is None:
        return con.execute("SELECT * FROM runs ORDER BY dataset, model").df()
    return con.execute("SELECT * FROM runs WHERE status = ? ORDER BY dataset, model", [status]).df()


def run(con, run_id: str) -> dict | None:
    df = con.execute("SELECT * FROM runs WHERE run_id = ?", [run_id]).df()
    return None if df.empty else df.iloc[0].to_dict()


def images(con, dataset: str | None = None) -> pd.DataFrame:
    if dataset is None:
        return con.execute("SELECT * FROM images").df()
    return con.execute("SELECT * FROM images WHERE dataset = ?", [dataset]).df()


def rejected(con, dataset: str | None = None) -> pd.DataFrame:
    if dataset is None:
        return con.execute("SELECT * FROM rejected_images").df()
    return con.execute("SELECT * FROM rejected_images WHERE dataset = ?", [dataset]).df()


def predictions(con, run_id: str) -> pd.DataFrame:
    return con.execute(
        "SELECT * FROM predictions WHERE run_id = ? ORDER BY image_id", [run_id]).df()


def metrics(con, run_id: str | None = None, split: str | None = None) -> pd.DataFrame:
    sql, args = "SELECT * FROM metrics WHERE 1=1", []
    if run_id is not None:
        sql, args = sql + " AND run_id = ?", args + [run_id]
    if split is not None:
        sql, args = sql + " AND split = ?", args + [split]
    return con.execute(sql, args).df()


def summary(con, split: str = "test") -> pd.DataFrame:
    """One row per done run: headline metrics with CIs (the CLI's end table, the leaderboard's base)."""
    return con.execute(
        """
        SELECT r.run_id, r.dataset, r.model, r.pretrained, r.lungs_only, r.epochs_run, r.device,
               r.n_test,
               max(CASE WHEN m.metric = 'accuracy' THEN m.value END) AS accuracy,
               max(CASE WHEN m.metric = 'accuracy' THEN m.ci_low END) AS accuracy_ci_low,
               max(CASE WHEN m.metric = 'accuracy' THEN m.ci_high END) AS accuracy_ci_high,
               max(CASE WHEN m.metric = 'macro_auc' THEN m.value END) AS macro_auc,
               max(CASE WHEN m.metric = 'macro_auc' THEN m.ci_low END) AS macro_auc_ci_low,
               max(CASE WHEN m.metric = 'macro_auc' THEN m.ci_high END) AS macro_auc_ci_high,
               max(CASE WHEN m.metric = 'macro_f1' THEN m.value END) AS macro_f1,
               avg(CASE WHEN m.metric = 'sensitivity' THEN m.value END) AS mean_sensitivity,
               avg(CASE WHEN m.metric = 'specificity' THEN m.value END) AS mean_specificity
        FROM runs r LEFT JOIN metrics m ON m.run_id = r.run_id AND m.split = ?
        WHERE r.status = 'done'
        GROUP BY ALL ORDER BY r.dataset, accuracy DESC NULLS LAST
        """, [split]).df()


def cam_array(row) -> np.ndarray:
    """Decode a cams row's `cam` BLOB (float16, height x width) into a float32 array."""
    buf = row["cam"]
    return np.frombuffer(bytes(buf), dtype=np.float16).reshape(int(row["height"]), int(row["width"])).astype(np.float32)
