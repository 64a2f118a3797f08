"""Shortcut evidence beyond CAMs, as long tables (pandas only): the source probes (Zech et al.
2018) and the CAM sanity check (Adebayo et al. 2018), one row per run and probe / method.

Shared by the dashboard's leaderboard page and the replication report (report/evidence_tables.py
renders them); the per-run summary columns of the leaderboard itself are board.source_summary and
board.sanity_summary.
"""
from __future__ import annotations

import pandas as pd

from benchmark.analysis.board import ci_text
from benchmark.analysis.measures import detail_dict

FEATURES = {"source": "model features", "source_pixels": "pixels 16x16"}
SOURCE_COLUMNS = ["dataset", "model", "features", "metric", "auc", "95% CI", "sources", "n_test", "note", "run_id"]
SANITY_COLUMNS = ["dataset", "model", "method", "n_images", "rank_corr", "95% CI", "flagged", "run_id"]


def source_table(probes: pd.DataFrame) -> pd.DataFrame:
    """Every source-probe row of done runs (probes 'source' and 'source_pixels'), with its sources,
    test size and, where the probe was skipped, why (`note`)."""
    if probes.empty:
        return pd.DataFrame(columns=SOURCE_COLUMNS)
    rows = probes[probes.probe.isin(list(FEATURES))]
    out = []
    for r in rows.itertuples(index=False):
        d = detail_dict(r.detail)
        value = pd.to_numeric(r.value, errors="coerce")
        out.append({"dataset": r.dataset, "model": r.model, "features": FEATURES[r.probe], "metric": r.metric,
                    "auc": value, "95% CI": ci_text(r.ci_low, r.ci_high), "sources": ", ".join(d.get("sources", [])),
                    "n_test": d.get("n_test"), "note": d.get("skipped", ""), "run_id": r.run_id})
    return pd.DataFrame(out, columns=SOURCE_COLUMNS)


def sanity_table(sanity: pd.DataFrame) -> pd.DataFrame:
    """Every CAM sanity-check row of done runs with its CI as text."""
    if sanity is None or sanity.empty:
        return pd.DataFrame(columns=SANITY_COLUMNS)
    out = sanity.assign(**{"95% CI": [ci_text(lo, hi) for lo, hi in zip(sanity.ci_low, sanity.ci_high)]})
    out["flagged"] = out["flagged"].fillna(False).astype(bool)
    return out.reindex(columns=SANITY_COLUMNS).reset_index(drop=True)
