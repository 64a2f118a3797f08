"""Read queries, each a plain function of a connection returning a DataFrame or value.

The dashboard and the CLI call only these (values always as parameters).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from benchmark.store.schema import PHASES, columns


def done_run_ids(con) -> set[str]:
    return {r[0] for r in con.execute("SELECT run_id FROM runs WHERE status = 'done'").fetchall()}


def external_done(con) -> set[tuple[str, str]]:
    """(run_id, 'external:<dataset>') of every external validation already stored."""
    return {(r[0], r[1]) for r in con.execute(
        "SELECT DISTINCT run_id, split FROM metrics WHERE split LIKE 'external:%'").fetchall()}


def runs(con, status: str | None = None) -> pd.DataFrame:
    if status is None:
        return con.execute("SELECT * FROM runs ORDER BY dataset, model").df()
    return con.execute("SELECT * FROM runs WHERE status = ? ORDER BY dataset, model", [status]).df()


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


def cam_array(row) -> np.ndarray:
    """Decode a cams row's `cam` BLOB (float16, height x width) into a float32 array."""
    buf = row["cam"]
    return np.frombuffer(bytes(buf), dtype=np.float16).reshape(int(row["height"]), int(row["width"])).astype(np.float32)


# ----------------------------------------------------------------------------- dashboard reads
# Every function below reads only rows of runs whose status is 'done' (a failed run's partial
# numbers must never reach the leaderboard) and never selects the `cam` BLOB except where a
# caller asks for the maps of a few images.

def datasets(con) -> list[str]:
    """Datasets with at least one done run, sorted."""
    rows = con.execute("SELECT DISTINCT dataset FROM runs WHERE status = 'done' ORDER BY dataset").fetchall()
    return [r[0] for r in rows]


def cam_methods(con, dataset: str | None = None) -> list[str]:
    """CAM methods that have stored maps (for one dataset's done runs, or for all)."""
    sql = ("SELECT DISTINCT c.method FROM cams c JOIN runs r ON r.run_id = c.run_id "
           "WHERE r.status = 'done'")
    args: list = []
    if dataset is not None:
        sql, args = sql + " AND r.dataset = ?", [dataset]
    return [r[0] for r in con.execute(sql + " ORDER BY c.method", args).fetchall()]


def class_metrics(con, split: str = "test") -> pd.DataFrame:
    """Per-class metrics (sensitivity, specificity, precision, f1, auc) with CIs of done runs."""
    return con.execute(
        """
        SELECT m.run_id, m.metric, m.class_name, m.value, m.ci_low, m.ci_high
        FROM metrics m JOIN runs r ON r.run_id = m.run_id
        WHERE r.status = 'done' AND m.split = ? AND m.class_name <> '' AND m.metric <> 'confusion'
        ORDER BY m.run_id, m.class_name, m.metric
        """, [split]).df()


def lung_focus_by_run(con, split: str = "test", target_kind: str = "pred") -> pd.DataFrame:
    """Mean lung-focus measures per (run, CAM method); maps without a defined measure are skipped.

    `n_cams` counts every map, `n_scored` those with a lung_mass (an image without a lung mask
    has none), so the dashboard can say how many maps a mean rests on. `marker_mass` (phantom
    data only) is the mean CAM mass on the planted text marker: the shortcut made visible.
    `lung_mass_ceiling` is the mean lung_mass a perfect lungs-only map at the CAMs' resolution gets.
    """
    # a results file written before marker_mass existed still opens (CREATE IF NOT EXISTS keeps old tables)
    cols = columns(con, "cams")
    marker = "avg(c.marker_mass)" if "marker_mass" in cols else "NULL::DOUBLE"
    ceiling = "avg(c.lung_mass_ceiling)" if "lung_mass_ceiling" in cols else "NULL::DOUBLE"
    return con.execute(
        f"""
        SELECT c.run_id, c.method, count(*) AS n_cams, count(c.lung_mass) AS n_scored,
               avg(c.lung_mass) AS lung_mass,
               avg(CASE WHEN c.pointing_hit THEN 1.0 WHEN NOT c.pointing_hit THEN 0.0 END) AS pointing_game,
               avg(c.lung_iou) AS lung_iou, {marker} AS marker_mass, {ceiling} AS lung_mass_ceiling
        FROM cams c JOIN runs r ON r.run_id = c.run_id
        WHERE r.status = 'done' AND c.split = ? AND c.target_kind = ?
        GROUP BY c.run_id, c.method ORDER BY c.run_id, c.method
        """, [split, target_kind]).df()


def probe_results(con) -> pd.DataFrame:
    """Shortcut probes of done runs, plus the external-validation metrics stored in `metrics`.

    External validation may be stored either as a probe ('external:<ds>') or as a metrics split
    ('external:<ds>'); both come back here as probe rows, the probe table's own row winning.
    """
    return con.execute(
        """
        WITH ext AS (
            SELECT m.run_id, m.split AS probe, m.metric, m.value, m.ci_low, m.ci_high,
                   NULL::VARCHAR AS detail
            FROM metrics m
            WHERE m.split LIKE 'external:%' AND m.class_name = '' AND m.metric = 'accuracy'
              AND NOT EXISTS (SELECT 1 FROM probes p WHERE p.run_id = m.run_id AND p.probe = m.split
                              AND p.metric = m.metric)
        ), allp AS (
            SELECT run_id, probe, metric, value, ci_low, ci_high, detail FROM probes
            UNION ALL SELECT * FROM ext
        )
        SELECT a.*, r.dataset, r.model
        FROM allp a JOIN runs r ON r.run_id = a.run_id
        WHERE r.status = 'done'
        ORDER BY r.dataset, r.model, a.probe, a.metric
        """).df()


def mask_paths(con, dataset: str, split: str = "test") -> pd.DataFrame:
    """Lung-mask files of a dataset's images in one split (for the uniform-map baseline)."""
    return con.execute(
        """
        SELECT image_id, mask_path, mask_source FROM images
        WHERE dataset = ? AND split = ? AND mask_path IS NOT NULL AND mask_path <> ''
        ORDER BY image_id
        """, [dataset, split]).df()


def predicted_images(con, dataset: str, split: str = "test") -> pd.DataFrame:
    """The dataset's images with at least one `split` prediction of a done run, with their metadata."""
    return con.execute(
        """
        SELECT i.image_id, i.label, i.source, i.path, i.key, i.mask_path, i.view, i.sex, i.age
        FROM images i
        WHERE i.dataset = ? AND EXISTS (
            SELECT 1 FROM predictions p JOIN runs r ON r.run_id = p.run_id
            WHERE p.image_id = i.image_id AND p.split = ? AND r.status = 'done')
        ORDER BY i.label, i.image_id
        """, [dataset, split]).df()


def image_predictions(con, image_id: str, split: str = "test") -> pd.DataFrame:
    """Every done run's `split` prediction of one image, with the run's model and test accuracy.

    The split matters: `benchmark evaluate` stores a model's predictions on another dataset's
    images as split 'external:<dataset>', and those are not that image's test predictions.
    """
    return con.execute(
        """
        SELECT p.run_id, r.model, r.dataset, r.pretrained, p.label, p.pred, p.confidence, p.probs,
               r.classes_json,
               (SELECT max(m.value) FROM metrics m WHERE m.run_id = p.run_id AND m.split = 'test'
                  AND m.metric = 'accuracy' AND m.class_name = '') AS accuracy
        FROM predictions p JOIN runs r ON r.run_id = p.run_id
        WHERE p.image_id = ? AND p.split = ? AND r.status = 'done'
        ORDER BY accuracy DESC NULLS LAST, r.model
        """, [image_id, split]).df()


def image_cams(con, image_id: str, method: str | None = None, target_kind: str = "pred",
               split: str = "test") -> pd.DataFrame:
    """The stored maps (BLOBs) of one image, every done run, one method or all."""
    sql = """
        SELECT c.run_id, c.method, c.target_class, c.height, c.width, c.cam,
               c.lung_mass, c.pointing_hit, c.lung_iou
        FROM cams c JOIN runs r ON r.run_id = c.run_id
        WHERE c.image_id = ? AND c.target_kind = ? AND c.split = ? AND r.status = 'done'"""
    args: list = [image_id, target_kind, split]
    if method is not None:
        sql, args = sql + " AND c.method = ?", args + [method]
    return con.execute(sql + " ORDER BY c.run_id, c.method", args).df()


def prediction_rows(con, dataset: str, method: str | None, target_kind: str = "pred",
                    split: str = "test") -> pd.DataFrame:
    """One row per (done run, `split` prediction) of a dataset, with image metadata and the
    lung-focus measures of that prediction's map for `method` (NULL where none is stored).

    No BLOBs: this is the misclassification gallery's filter table, fetched once and filtered
    in memory; the maps of one gallery page come from `cams_for_pairs`.
    """
    return con.execute(
        """
        SELECT p.run_id, r.model, r.pretrained, p.image_id, p.label, p.pred, p.confidence,
               p.label = p.pred AS correct, i.source, i.view, i.sex, i.age, i.path, i.key,
               i.mask_path, c.lung_mass, c.pointing_hit, c.lung_iou
        FROM predictions p
        JOIN runs r ON r.run_id = p.run_id
        JOIN images i ON i.image_id = p.image_id
        LEFT JOIN cams c ON c.run_id = p.run_id AND c.image_id = p.image_id AND c.split = p.split
             AND c.method = ? AND c.target_kind = ?
        WHERE r.status = 'done' AND r.dataset = ? AND p.split = ?
        ORDER BY r.model, p.run_id, p.image_id
        """, [method or "", target_kind, dataset, split]).df()


def cams_for_pairs(con, run_ids: list[str], image_ids: list[str], method: str,
                   target_kind: str = "pred", split: str = "test") -> pd.DataFrame:
    """Maps for the given (run_id, image_id) pairs (zipped lists) of one method."""
    if len(run_ids) != len(image_ids):
        raise ValueError("run_ids and image_ids must be the same length (they are zipped into pairs)")
    if not run_ids:
        return pd.DataFrame(columns=["run_id", "image_id", "height", "width", "cam", "lung_mass"])
    return con.execute(
        """
        WITH wanted AS (SELECT unnest(?::VARCHAR[]) AS run_id, unnest(?::VARCHAR[]) AS image_id)
        SELECT c.run_id, c.image_id, c.height, c.width, c.cam, c.lung_mass, c.pointing_hit
        FROM cams c JOIN wanted w ON w.run_id = c.run_id AND w.image_id = c.image_id
        WHERE c.method = ? AND c.target_kind = ? AND c.split = ?
        """, [list(run_ids), list(image_ids), method, target_kind, split]).df()


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


# ----------------------------------------------------------------------------- report reads
# The replication report (benchmark/report/) and the leaderboard's seed groups and phase costs.
# Like the dashboard reads, only done runs; a results file written before a column or table
# existed still opens (the read-only reader cannot add them), and the missing values are NULL.

def _has_table(con, table: str) -> bool:
    return bool(con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [table]).fetchone()[0])


def run_details(con) -> pd.DataFrame:
    """One row per done run: what makes it a run (seed-group keys, seed), its classes, and its cost
    per phase (`<phase>_seconds` for schema.PHASES, NULL where the run did not record it)."""
    have = set(columns(con, "runs"))
    phases = ", ".join(f"{col}" if col in have else f"NULL::DOUBLE AS {col}"
                       for col in [f"{p}_seconds" for p in PHASES] + ["train_images_per_s"])
    return con.execute(
        f"""
        SELECT run_id, dataset, model, pretrained, coalesce(lungs_only, FALSE) AS lungs_only, image_size, epochs,
               seed, epochs_run, best_epoch, device, n_train, n_val, n_test, classes_json, git_commit,
               started_at, finished_at, {phases}
        FROM runs WHERE status = 'done' ORDER BY dataset, model, seed, run_id
        """).df()


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


def lung_focus_by_class(con, split: str = "test", target_kind: str = "pred") -> pd.DataFrame:
    """Mean lung mass and pointing game per (done run, CAM method, true class of the image)."""
    return con.execute(
        """
        SELECT c.run_id, c.method, i.label AS class_name, count(c.lung_mass) AS n_scored,
               avg(c.lung_mass) AS lung_mass,
               avg(CASE WHEN c.pointing_hit THEN 1.0 WHEN NOT c.pointing_hit THEN 0.0 END) AS pointing_game
        FROM cams c JOIN runs r ON r.run_id = c.run_id JOIN images i ON i.image_id = c.image_id
        WHERE r.status = 'done' AND c.split = ? AND c.target_kind = ?
        GROUP BY ALL ORDER BY c.run_id, c.method, class_name
        """, [split, target_kind]).df()


def image_counts(con) -> pd.DataFrame:
    """Images per (dataset, source, split, class), and how many have a lung mask from where."""
    return con.execute(
        """
        SELECT dataset, coalesce(source, '') AS source, coalesce(split, '') AS split, label,
               count(*) AS n_images, count(nullif(mask_path, '')) AS n_masks,
               string_agg(DISTINCT nullif(mask_source, ''), ', ' ORDER BY nullif(mask_source, '')) AS mask_sources
        FROM images GROUP BY ALL ORDER BY dataset, source, label, split
        """).df()


def rejected_summary(con) -> pd.DataFrame:
    """Unreadable files per (dataset, source, reason), with one example path."""
    return con.execute(
        """
        SELECT coalesce(dataset, '') AS dataset, coalesce(source, '') AS source, reason, count(*) AS n_files,
               min(path) AS example
        FROM rejected_images GROUP BY ALL ORDER BY dataset, source, n_files DESC, reason
        """).df()


def cam_skips(con) -> pd.DataFrame:
    """CAM methods asked for but not run, per done run and split, with the reason."""
    cols = ["run_id", "dataset", "model", "split", "method", "reason"]
    if not _has_table(con, "cam_skips"):
        return pd.DataFrame(columns=cols)
    return con.execute(
        """
        SELECT s.run_id, r.dataset, r.model, s.split, s.method, s.reason
        FROM cam_skips s JOIN runs r ON r.run_id = s.run_id
        WHERE r.status = 'done' ORDER BY r.dataset, r.model, s.run_id, s.split, s.method
        """).df()


def segmenters(con) -> pd.DataFrame:
    """The lung segmenters whose masks runs used (for the report's provenance)."""
    return con.execute("SELECT * FROM lung_segmenters ORDER BY created_at").df()
