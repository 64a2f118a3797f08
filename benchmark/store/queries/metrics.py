"""Metrics and predictions of done runs: test, val and external splits.

Every function takes a connection and returns a DataFrame or a value; values are always
parameters. Reads see only done runs.
"""
from __future__ import annotations

import pandas as pd


def metrics(con, run_id: str | None = None, split: str | None = None) -> pd.DataFrame:
    sql, args = "SELECT * FROM metrics WHERE 1=1", []
    if run_id is not None:
        sql, args = sql + " AND run_id = ?", args + [run_id]
    if split is not None:
        sql, args = sql + " AND split = ?", args + [split]
    return con.execute(sql, args).df()


def class_metrics(con, split: str = "test") -> pd.DataFrame:
    """Per-class metrics (sensitivity, specificity, precision, f1, auc) with CIs of done runs."""
    return con.execute(
        """
        SELECT m.run_id, m.metric, m.class_name, m.value, m.ci_low, m.ci_high
        FROM metrics m JOIN runs r ON r.run_id = m.run_id
        WHERE r.status = 'done' AND m.split = ? AND m.class_name <> '' AND m.metric <> 'confusion'
        ORDER BY m.run_id, m.class_name, m.metric
        """, [split]).df()


def predictions(con, run_id: str) -> pd.DataFrame:
    return con.execute(
        "SELECT * FROM predictions WHERE run_id = ? ORDER BY image_id", [run_id]).df()


def split_predictions(con, run_id: str, split: str = "test") -> pd.DataFrame:
    """(image_id, label, pred) of one run's `split`."""
    return con.execute("SELECT image_id, label, pred FROM predictions WHERE run_id = ? AND split = ?",
                       [run_id, split]).df()


def scored_predictions(con, split: str = "test") -> pd.DataFrame:
    """Every done run's `split` predictions with the image's patient (ROC curves, bootstrapped by patient)."""
    return con.execute(
        """
        SELECT p.run_id, p.image_id, p.label, p.pred, p.probs, i.patient_id
        FROM predictions p JOIN runs r ON r.run_id = p.run_id
        LEFT JOIN images i ON i.image_id = p.image_id
        WHERE r.status = 'done' AND p.split = ?
        ORDER BY p.run_id, p.image_id
        """, [split]).df()


def performance_predictions(con, run_ids) -> pd.DataFrame:
    """Every prediction (all splits: test, external:<dataset>) of the given done runs, with the image's
    patient, source database and dataset: the Performance page's ROC, confusion, calibration and
    per-source numbers."""
    return con.execute(
        """
        WITH wanted AS (SELECT DISTINCT unnest(?::VARCHAR[]) AS run_id)
        SELECT p.run_id, coalesce(p.split, 'test') AS split, p.image_id, p.label, p.pred, p.confidence, p.probs,
               i.patient_id, i.source, i.dataset AS image_dataset
        FROM predictions p JOIN wanted w ON w.run_id = p.run_id JOIN runs r ON r.run_id = p.run_id
        LEFT JOIN images i ON i.image_id = p.image_id
        WHERE r.status = 'done'
        ORDER BY p.run_id, split, p.image_id
        """, [list(run_ids)]).df()


def external_done(con) -> set[tuple[str, str]]:
    """(run_id, 'external:<dataset>') of every external validation already stored."""
    return {(r[0], r[1]) for r in con.execute(
        "SELECT DISTINCT run_id, split FROM metrics WHERE split LIKE 'external:%'").fetchall()}


#: the overall (class_name '') metrics of an external split that the external-drop analysis reads
EXTERNAL_METRICS = ("accuracy", "balanced_accuracy", "macro_auc", "macro_f1", "set_auc", "off_set_share",
                    "internal_set_auc", "internal_balanced_accuracy", "internal_accuracy")


def external_metrics(con) -> pd.DataFrame:
    """Long rows (run_id, dataset, model, split, external_set, metric, value, ci_low, ci_high,
    n_images) of every done run's external scores: metrics of splits 'external:<set>' with
    class_name '' and a metric in EXTERNAL_METRICS; `n_images` counts the run's predictions in
    that split (NULL where none are stored)."""
    return con.execute(
        """
        WITH n AS (
            SELECT run_id, split, count(*) AS n_images FROM predictions
            WHERE split LIKE 'external:%' GROUP BY run_id, split)
        SELECT m.run_id, r.dataset, r.model, m.split, substr(m.split, length('external:') + 1) AS external_set,
               m.metric, m.value, m.ci_low, m.ci_high, n.n_images
        FROM metrics m JOIN runs r ON r.run_id = m.run_id
        LEFT JOIN n ON n.run_id = m.run_id AND n.split = m.split
        WHERE r.status = 'done' AND m.split LIKE 'external:%' AND m.class_name = ''
          AND list_contains(?::VARCHAR[], m.metric)
        ORDER BY r.dataset, r.model, m.run_id, m.split, m.metric
        """, [list(EXTERNAL_METRICS)]).df()
