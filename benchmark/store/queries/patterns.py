"""Where a model looks over all its images (audit/cam_patterns.py): class-mean maps and clusters of
CAMs.

Every function takes a connection and returns a DataFrame or a value; values are always
parameters. Reads see only done runs.
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def grid_array(blob, grid: int) -> np.ndarray:
    """A stored class-mean, cluster or lung map (`mean_map`, `lung_map`: float32 bytes, row-major,
    grid x grid; written by audit/cam_grid.py's `to_blob`) as an array."""
    return np.frombuffer(bytes(blob), dtype=np.float32).reshape(int(grid), int(grid))


def class_maps(con, run_ids: list[str] | tuple[str, ...], split: str = "test",
               method: str | None = None) -> pd.DataFrame:
    """cam_class_maps rows (with the run's dataset and model) of done runs in `run_ids`."""
    return con.execute(
        """SELECT r.dataset, r.model, c.* FROM cam_class_maps c JOIN runs r USING (run_id)
           WHERE r.status = 'done' AND list_contains(?::VARCHAR[], c.run_id) AND c.split = ?
             AND (?::VARCHAR IS NULL OR c.method = ?)
           ORDER BY r.dataset, r.model, c.run_id, c.method, c.class_name""",
        [list(run_ids), split, method, method]).df()


def cam_clusters(con, run_ids: list[str] | tuple[str, ...], split: str = "test",
                 method: str | None = None) -> pd.DataFrame:
    """cam_clusters rows (with the run's dataset and model) of done runs in `run_ids`."""
    return con.execute(
        """SELECT r.dataset, r.model, c.* FROM cam_clusters c JOIN runs r USING (run_id)
           WHERE r.status = 'done' AND list_contains(?::VARCHAR[], c.run_id) AND c.split = ?
             AND (?::VARCHAR IS NULL OR c.method = ?)
           ORDER BY r.dataset, r.model, c.run_id, c.method, c.class_name, c.cluster""",
        [list(run_ids), split, method, method]).df()


def pattern_index(con) -> pd.DataFrame:
    """(run_id, dataset, model, split, method, test accuracy) of every done run with class-mean maps:
    what the Patterns page offers."""
    return con.execute(
        """SELECT DISTINCT c.run_id, r.dataset, r.model, c.split, c.method, m.value AS accuracy
           FROM cam_class_maps c JOIN runs r USING (run_id)
           LEFT JOIN metrics m ON m.run_id = c.run_id AND m.split = 'test' AND m.metric = 'accuracy'
                              AND m.class_name = ''
           WHERE r.status = 'done' ORDER BY r.dataset, accuracy DESC NULLS LAST, r.model, c.split, c.method""").df()
