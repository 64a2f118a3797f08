"""Runs: which exist, their headline numbers, details and costs, and the DB at a glance.

Every function takes a connection and returns a DataFrame or a value; values are always
parameters. Reads see only done runs.
"""
from __future__ import annotations

import pandas as pd

from benchmark.store.schema import PHASES


def done_run_ids(con) -> set[str]:
    return {r[0] for r in con.execute("SELECT run_id FROM runs WHERE status = 'done'").fetchall()}


def runs(con, status: str | None = None) -> pd.DataFrame:
    if status is None:
        return con.execute("SELECT * FROM runs ORDER BY dataset, model").df()
    return con.execute("SELECT * FROM runs WHERE status = ? ORDER BY dataset, model", [status]).df()


def summary(con, split: str = "test") -> pd.DataFrame:
    """One row per done run: headline metrics with CIs (the CLI's end table, the leaderboard's base)."""
    return con.execute(
        """
        SELECT r.run_id, r.dataset, r.model, r.pretrained, r.lungs_only, r.seed, r.epochs_run, r.device,
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


def run_details(con) -> pd.DataFrame:
    """One row per done run: what makes it a run (seed-group keys, seed), its classes, and its cost
    per phase (`<phase>_seconds` for schema.PHASES, NULL where the run did not record it: runs of an
    older version, whose file gained the column on open)."""
    phases = ", ".join([f"{p}_seconds" for p in PHASES] + ["train_images_per_s"])
    return con.execute(
        f"""
        SELECT run_id, dataset, model, pretrained, coalesce(lungs_only, FALSE) AS lungs_only, image_size, epochs,
               seed, epochs_run, best_epoch, device, n_train, n_val, n_test, classes_json, git_commit,
               started_at, finished_at, {phases}
        FROM runs WHERE status = 'done' ORDER BY dataset, model, seed, run_id
        """).df()


def db_overview(con) -> dict:
    """Counts for the sidebar: done and failed runs, images, CAM rows."""
    row = con.execute(
        """SELECT (SELECT count(*) FROM runs WHERE status = 'done'),
                  (SELECT count(*) FROM runs WHERE status <> 'done'),
                  (SELECT count(*) FROM images),
                  (SELECT count(*) FROM cams),
                  (SELECT max(finished_at) FROM runs WHERE status = 'done')""").fetchone()
    return {"done_runs": row[0], "other_runs": row[1], "images": row[2], "cams": row[3],
            "last_finished": row[4]}


def datasets(con) -> list[str]:
    """Datasets with at least one done run, sorted."""
    rows = con.execute("SELECT DISTINCT dataset FROM runs WHERE status = 'done' ORDER BY dataset").fetchall()
    return [r[0] for r in rows]


def segmenters(con) -> pd.DataFrame:
    """The lung segmenters whose masks runs used (for the report's provenance)."""
    return con.execute("SELECT * FROM lung_segmenters ORDER BY created_at").df()
