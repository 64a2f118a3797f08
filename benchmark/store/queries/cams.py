"""CAM rows: the methods stored, lung-focus means, and the maps (BLOBs) a view draws.

Every function takes a connection and returns a DataFrame or a value; values are always
parameters. Reads see only done runs.
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def cam_array(row) -> np.ndarray:
    """Decode a cams row's `cam` BLOB (float16, height x width) into a float32 array."""
    buf = row["cam"]
    return np.frombuffer(bytes(buf), dtype=np.float16).reshape(int(row["height"]), int(row["width"])).astype(np.float32)


def cam_methods(con, dataset: str | None = None) -> list[str]:
    """CAM methods that have stored maps (for one dataset's done runs, or for all)."""
    sql = ("SELECT DISTINCT c.method FROM cams c JOIN runs r ON r.run_id = c.run_id "
           "WHERE r.status = 'done'")
    args: list = []
    if dataset is not None:
        sql, args = sql + " AND r.dataset = ?", [dataset]
    return [r[0] for r in con.execute(sql + " ORDER BY c.method", args).fetchall()]


def lung_focus_by_run(con, split: str = "test", target_kind: str = "pred") -> pd.DataFrame:
    """Mean lung-focus measures per (run, CAM method); maps without a defined measure are skipped.

    `n_cams` counts every map, `n_scored` those with a lung_mass (an image without a lung mask
    has none), so the dashboard can say how many maps a mean rests on. `marker_mass` (phantom
    data only) is the mean CAM mass on the planted text marker: the shortcut made visible.
    `lung_mass_ceiling` is the mean lung_mass a perfect lungs-only map at the CAMs' resolution gets.
    """
    return con.execute(
        """
        SELECT c.run_id, c.method, count(*) AS n_cams, count(c.lung_mass) AS n_scored,
               avg(c.lung_mass) AS lung_mass,
               avg(CASE WHEN c.pointing_hit THEN 1.0 WHEN NOT c.pointing_hit THEN 0.0 END) AS pointing_game,
               avg(c.lung_iou) AS lung_iou, avg(c.marker_mass) AS marker_mass,
               avg(c.lung_mass_ceiling) AS lung_mass_ceiling
        FROM cams c JOIN runs r ON r.run_id = c.run_id
        WHERE r.status = 'done' AND c.split = ? AND c.target_kind = ?
        GROUP BY c.run_id, c.method ORDER BY c.run_id, c.method
        """, [split, target_kind]).df()


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


def stored_pred_cams(con, run_id: str, split: str = "test") -> pd.DataFrame:
    """The run's `pred` maps of `split` with their BLOBs (for recomputing its CAM patterns)."""
    return con.execute(
        """SELECT image_id, method, target_class, target_kind, height, width, cam FROM cams
           WHERE run_id = ? AND split = ? AND target_kind = 'pred' ORDER BY method, image_id""",
        [run_id, split]).df()
