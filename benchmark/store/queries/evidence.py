"""Shortcut evidence beside the CAMs: probes (lungs removed or alone, source probe, external scores),
the CAM sanity check and the methods that did not apply.

Every function takes a connection and returns a DataFrame or a value; values are always
parameters. Reads see only done runs.
"""
from __future__ import annotations

import pandas as pd


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


def cam_sanity(con) -> pd.DataFrame:
    """CAM sanity checks of done runs (trained vs randomised-weight maps, per run and method)."""
    return con.execute(
        """
        SELECT s.run_id, r.dataset, r.model, s.method, s.n_images, s.rank_corr, s.ci_low, s.ci_high, s.flagged,
               s.detail
        FROM cam_sanity s JOIN runs r ON r.run_id = s.run_id
        WHERE r.status = 'done' ORDER BY r.dataset, r.model, s.run_id, s.method
        """).df()


def cam_skips(con) -> pd.DataFrame:
    """CAM methods asked for but not run, per done run and split, with the reason."""
    return con.execute(
        """
        SELECT s.run_id, r.dataset, r.model, s.split, s.method, s.reason
        FROM cam_skips s JOIN runs r ON r.run_id = s.run_id
        WHERE r.status = 'done' ORDER BY r.dataset, r.model, s.run_id, s.split, s.method
        """).df()
