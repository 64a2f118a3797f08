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


def cam_sanity(con) -> pd.DataFrame:
    """CAM sanity checks of done runs (trained vs randomised-weight maps, per run and method); an
    older results file without the table gives no rows."""
    cols = ["run_id", "dataset", "model", "method", "n_images", "rank_corr", "ci_low", "ci_high", "flagged",
            "detail"]
    if not _has_table(con, "cam_sanity"):
        return pd.DataFrame(columns=cols)
    return con.execute(
        """
        SELECT s.run_id, r.dataset, r.model, s.method, s.n_images, s.rank_corr, s.ci_low, s.ci_high, s.flagged,
               s.detail
        FROM cam_sanity s JOIN runs r ON r.run_id = s.run_id
        WHERE r.status = 'done' ORDER BY r.dataset, r.model, s.run_id, s.method
        """).df()


# ----------------------------------------------------------------------------- external drops
# What benchmark.analysis.external compares with the audit: each done run's scores on other
# datasets (split 'external:<set>'), and the same rules on its own test split ('internal_*').

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


# ----------------------------------------------------------------------------- dashboard reads sized to the view
# The compare and misclassification pages fetch only what they draw: one image's row, predictions and
# maps; one gallery page (filtered, ordered and paged here) and its count; the filter choices as one
# aggregate. So a view's cost follows what it shows, not how many rows the DB holds.

def image_list(con, dataset: str, split: str = "test") -> pd.DataFrame:
    """(image_id, label, source) of the dataset's images with a `split` prediction of a done run, in the
    compare page's order (label, image_id): the image picker's list, without paths or metadata."""
    return con.execute(
        """
        SELECT i.image_id, i.label, i.source
        FROM images i
        WHERE i.dataset = ? AND i.image_id IN (
            SELECT p.image_id FROM predictions p JOIN runs r ON r.run_id = p.run_id
            WHERE p.split = ? AND r.status = 'done' AND r.dataset = ?)
        ORDER BY i.label, i.image_id
        """, [dataset, split, dataset]).df()


def image_row(con, image_id: str) -> pd.DataFrame:
    """One image's metadata row (the columns `predicted_images` gives), empty if unknown."""
    return con.execute(
        "SELECT image_id, label, source, path, key, mask_path, view, sex, age FROM images WHERE image_id = ?",
        [image_id]).df()


def run_image_cams(con, image_id: str, run_ids: tuple[str, ...], method: str | None = None,
                   target_kind: str = "pred", split: str = "test") -> pd.DataFrame:
    """The maps of one image for the given runs only (one method or all): the compare panels.

    run_id is a constant IN list, so DuckDB skips the row groups of other runs (rows are stored run by run).
    """
    cols = ["run_id", "method", "target_class", "height", "width", "cam", "lung_mass", "pointing_hit", "lung_iou"]
    run_ids = tuple(run_ids)
    if not run_ids:
        return pd.DataFrame(columns=cols)
    sql = f"""
        SELECT c.run_id, c.method, c.target_class, c.height, c.width, c.cam, c.lung_mass, c.pointing_hit, c.lung_iou
        FROM cams c
        WHERE c.run_id IN ({", ".join("?" * len(run_ids))}) AND c.image_id = ? AND c.target_kind = ? AND c.split = ?
          AND c.run_id IN (SELECT run_id FROM runs WHERE status = 'done')"""
    args: list = [*run_ids, image_id, target_kind, split]
    if method is not None:
        sql, args = sql + " AND c.method = ?", args + [method]
    return con.execute(sql + " ORDER BY c.run_id, c.method", args).df()


_GALLERY_COLUMNS = """p.run_id, r.model, r.pretrained, p.image_id, p.label, p.pred, p.confidence,
               p.label = p.pred AS correct, i.source, i.view, i.sex, i.age, i.path, i.key, i.mask_path"""
_GALLERY_FROM = """
        FROM predictions p
        JOIN runs r ON r.run_id = p.run_id
        JOIN images i ON i.image_id = p.image_id
        {cams_join}
        WHERE r.status = 'done' AND r.dataset = ? AND p.split = ?"""
_CAMS_JOIN = """LEFT JOIN cams c ON c.run_id = p.run_id AND c.image_id = p.image_id AND c.split = p.split
             AND c.method = ? AND c.target_kind = ?"""
#: what the misclassification gallery can be ordered by -> (table alias, column, numeric); ties by model, run, image
GALLERY_ORDER_COLUMNS = {"confidence": ("p", "confidence", True), "lung_mass": ("c", "lung_mass", True),
                         "model": ("r", "model", False), "age": ("i", "age", True), "label": ("p", "label", False),
                         "pred": ("p", "pred", False)}


def _order_expr(order: str, alias: str | None = None) -> str:
    """The ORDER BY expression of a gallery order; NaN sorts with NULL (last), as pandas sorts it."""
    table, column, numeric = GALLERY_ORDER_COLUMNS[order]
    expr = f"{alias or table}.{column}"
    return f"(CASE WHEN isnan({expr}) THEN NULL ELSE {expr} END)" if numeric else expr


def _gallery_where(run_ids=(), only_wrong=True, true_classes=(), pred_classes=(), confidence=(0.0, 1.0),
                   lung_mass=(0.0, 1.0), sources=(), views=(), sexes=(), age=None, age_full_range=None
                   ) -> tuple[str, list, bool]:
    """SQL conditions of the gallery filter, the rules of dashboard.views.filter_predictions: empty
    tuples mean all; a range keeps rows without a value only while it is the full range. Returns
    (" AND ..." conditions, their parameters, whether they need the cams join: lung mass narrowed)."""
    sql, args = [], []
    for expr, chosen in (("p.run_id", run_ids), ("p.label", true_classes), ("p.pred", pred_classes),
                         ("i.source", sources), ("i.view", views), ("i.sex", sexes)):
        if chosen:
            sql.append(f"list_contains(?::VARCHAR[], {expr})")
            args.append([str(v) for v in chosen])
    if only_wrong:
        sql.append("p.label <> p.pred")

    def in_range(expr: str, bounds, full) -> None:
        lo, hi = float(bounds[0]), float(bounds[1])
        cond = f"({expr} BETWEEN ? AND ? AND NOT isnan({expr}))"
        if full is not None and (lo, hi) == (float(full[0]), float(full[1])):
            cond = f"({cond} OR {expr} IS NULL OR isnan({expr}))"
        sql.append(cond)
        args.extend([lo, hi])

    in_range("p.confidence", confidence, (0.0, 1.0))
    needs_cams = (float(lung_mass[0]), float(lung_mass[1])) != (0.0, 1.0)
    if needs_cams:  # the full range keeps every row (lung_mass is a share in [0, 1] or missing)
        in_range("c.lung_mass", lung_mass, (0.0, 1.0))
    if age is not None:
        in_range("i.age", age, age_full_range)
    return "".join(f" AND {s}" for s in sql), args, needs_cams


def gallery_page(con, dataset: str, method: str | None, *, order: str = "confidence", ascending: bool = False,
                 limit: int | None = 12, offset: int = 0, target_kind: str = "pred", split: str = "test",
                 **filters) -> pd.DataFrame:
    """One page of the misclassification gallery, filtered, ordered and paged in SQL.

    The dataset's done runs' `split` predictions that pass `filters` (keywords of `_gallery_where`),
    ordered by `order` (a GALLERY_ORDER_COLUMNS key; then model, run, image), `limit` rows from `offset`
    (None: every row, for the CSV export), with the columns of `prediction_rows`. Unless lung mass
    filters or orders, the maps' measures are joined to the page's rows only.
    """
    if order not in GALLERY_ORDER_COLUMNS:
        raise ValueError(f"unknown gallery order {order!r}; choose one of {sorted(GALLERY_ORDER_COLUMNS)}")
    where, args, needs_cams = _gallery_where(**filters)
    direction = "ASC" if ascending else "DESC"
    page = "" if limit is None else f" LIMIT {int(limit)} OFFSET {max(0, int(offset))}"
    if needs_cams or order == "lung_mass" or limit is None:
        return con.execute(
            f"""SELECT {_GALLERY_COLUMNS}, c.lung_mass, c.pointing_hit, c.lung_iou
            {_GALLERY_FROM.format(cams_join=_CAMS_JOIN)}{where}
            ORDER BY {_order_expr(order)} {direction} NULLS LAST, r.model, p.run_id, p.image_id{page}""",
            [method or "", target_kind, dataset, split, *args]).df()
    return con.execute(
        f"""WITH page AS (
            SELECT {_GALLERY_COLUMNS} {_GALLERY_FROM.format(cams_join="")}{where}
            ORDER BY {_order_expr(order)} {direction} NULLS LAST, r.model, p.run_id, p.image_id{page})
        SELECT page.*, c.lung_mass, c.pointing_hit, c.lung_iou
        FROM page LEFT JOIN cams c ON c.run_id = page.run_id AND c.image_id = page.image_id AND c.split = ?
             AND c.method = ? AND c.target_kind = ?
        ORDER BY {_order_expr(order, "page")} {direction} NULLS LAST, page.model, page.run_id, page.image_id""",
        [dataset, split, *args, split, method or "", target_kind]).df()


def gallery_count(con, dataset: str, method: str | None, *, target_kind: str = "pred", split: str = "test",
                  **filters) -> int:
    """How many predictions pass the gallery filters (the maps are joined only when lung mass filters)."""
    where, args, needs_cams = _gallery_where(**filters)
    join_args = [method or "", target_kind] if needs_cams else []
    return con.execute(f"SELECT count(*) {_GALLERY_FROM.format(cams_join=_CAMS_JOIN if needs_cams else '')}{where}",
                       [*join_args, dataset, split, *args]).fetchone()[0]


def gallery_facets(con, dataset: str, split: str = "test") -> dict:
    """What the gallery's filters can offer for a dataset, in one pass over its predictions: the runs
    (run_id, model, in page order), classes, the non-empty values of source, view and sex, the age range (None without
    ages), and the counts of predictions, wrong predictions and runs."""
    row = con.execute(
        f"""SELECT count(*), count(*) FILTER (WHERE p.label <> p.pred), count(DISTINCT p.run_id),
                   list(DISTINCT p.label), list(DISTINCT p.pred), list(DISTINCT i.source), list(DISTINCT i.view),
                   list(DISTINCT i.sex), min(i.age) FILTER (WHERE NOT isnan(i.age)),
                   max(i.age) FILTER (WHERE NOT isnan(i.age))
        {_GALLERY_FROM.format(cams_join="")}""", [dataset, split]).fetchone()
    runs = con.execute(
        f"""SELECT p.run_id, any_value(r.model) AS model {_GALLERY_FROM.format(cams_join="")}
        GROUP BY p.run_id ORDER BY model, p.run_id""", [dataset, split]).df()

    def values(items) -> list[str]:
        return sorted({str(v) for v in items or () if v is not None and str(v).strip()})

    return {"n_rows": int(row[0]), "n_wrong": int(row[1]), "n_runs": int(row[2]),
            "runs": list(zip(runs.run_id, runs.model)),
            "classes": sorted({str(v) for v in [*(row[3] or ()), *(row[4] or ())] if v is not None}),
            "source": values(row[5]), "view": values(row[6]), "sex": values(row[7]),
            "age": None if row[8] is None else (float(row[8]), float(row[9]))}
