"""Per-run numbers the report tabulates, as numeric frames with a run_id column (pandas only).

Each frame has one row per run (or per run and class / external set), so seeds.aggregate can
pool it over a seed group; tables.py then writes the numbers. The leaderboard's own composition
(board.leaderboard: focus score between the uniform baseline and the ceiling, probe drops) is
reused, not rewritten; what is added here are the CIs the leaderboard shows only as text or not
at all, and the phase costs.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from benchmark.analysis.board import MEAN_OVER_CLASSES, leaderboard
from benchmark.store.schema import PHASES

LUNG_PROBES = ("intact", "lungs_removed", "lungs_only")
PROBE_NUMBERS = ("lungs_removed_acc", "lungs_removed_drop", "lungs_only_acc", "external_acc", "external_drop")


def _wide(rows: pd.DataFrame, index: list[str], name_col: str) -> pd.DataFrame:
    """(index..., name, value, ci_low, ci_high) long rows -> one row per index with `<name>`,
    `<name>_ci_low`, `<name>_ci_high` columns."""
    if rows.empty:
        return pd.DataFrame(columns=index)
    wide = rows.pivot_table(index=index, columns=name_col, values=["value", "ci_low", "ci_high"],
                            aggfunc="first", dropna=False)
    wide.columns = [name if part == "value" else f"{name}_{part}" for part, name in wide.columns]
    return wide.reset_index()


def run_board(summary: pd.DataFrame, class_metrics: pd.DataFrame, focus: pd.DataFrame, probes: pd.DataFrame,
              overall: pd.DataFrame, method: str | None, baselines: dict[str, float | None],
              sanity: pd.DataFrame | None = None, external: pd.DataFrame | None = None) -> pd.DataFrame:
    """The leaderboard (means over classes; with `sanity` and `external`, the CAM sanity check and
    the external AUC drop too) plus balanced accuracy with its CI, and the lungs probes (intact,
    lungs_removed, lungs_only) with their CIs, one row per done run."""
    board = leaderboard(summary, class_metrics, focus, probes, method, MEAN_OVER_CLASSES, baselines,
                        sanity=sanity, external=external)
    if board.empty:
        return board
    bal = overall[(overall.metric == "balanced_accuracy") & (overall.class_name.fillna("") == "")]
    board = board.merge(_wide(bal, ["run_id"], "metric"), on="run_id", how="left")
    lung = probes[(probes.metric == "accuracy") & probes.probe.isin(LUNG_PROBES)] if not probes.empty else probes
    wide = _wide(lung, ["run_id"], "probe") if not lung.empty else pd.DataFrame(columns=["run_id"])
    wide = wide.rename(columns=lambda c: c if c == "run_id" else f"probe_{c}")
    board = board.merge(wide, on="run_id", how="left")
    for col in PROBE_NUMBERS:  # a drop without a reference arrives as None, i.e. object dtype
        board[col] = pd.to_numeric(board[col], errors="coerce")
    return board


def per_class(class_metrics: pd.DataFrame) -> pd.DataFrame:
    """run_id, class_name, sensitivity/specificity/auc with their CIs (one row per run and class)."""
    rows = class_metrics[class_metrics.metric.isin(["sensitivity", "specificity", "auc"])]
    return _wide(rows, ["run_id", "class_name"], "metric")


def detail_dict(text) -> dict:
    """A stored `detail` JSON text as a dict ({} when absent or not an object)."""
    try:
        out = json.loads(text) if isinstance(text, str) and text else {}
    except ValueError:
        return {}
    return out if isinstance(out, dict) else {}


def external(probes: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, external set): internal test accuracy, external accuracy with CI, the drop,
    how many images were scored and how many the model had seen in training (left out)."""
    cols = ["run_id", "external_set", "internal_accuracy", "external_accuracy", "external_accuracy_ci_low",
            "external_accuracy_ci_high", "drop", "n_images", "n_left_out_seen"]
    if probes.empty:
        return pd.DataFrame(columns=cols)
    ext = probes[(probes.metric == "accuracy") & probes.probe.str.startswith("external:")]
    acc = summary.set_index("run_id")["accuracy"] if not summary.empty else pd.Series(dtype=float)
    rows = []
    for r in ext.itertuples(index=False):
        detail = detail_dict(r.detail)
        internal = detail.get("internal_test_accuracy")
        if internal is None and r.run_id in acc.index:
            internal = acc[r.run_id]
        internal = float(internal) if internal is not None and pd.notna(internal) else np.nan
        rows.append({"run_id": r.run_id, "external_set": r.probe.split(":", 1)[1], "internal_accuracy": internal,
                     "external_accuracy": r.value, "external_accuracy_ci_low": r.ci_low,
                     "external_accuracy_ci_high": r.ci_high,
                     "drop": internal - r.value,
                     "n_images": pd.to_numeric(detail.get("n_images"), errors="coerce"),
                     "n_left_out_seen": pd.to_numeric(detail.get("n_left_out_seen"), errors="coerce")})
    return pd.DataFrame(rows, columns=cols).astype({c: float for c in cols[2:]})


def phase_costs(details: pd.DataFrame) -> pd.DataFrame:
    """Wall seconds per phase of each run (`<phase>_seconds`, NaN where not recorded), their total
    over the recorded phases, and the training throughput."""
    phase_cols = [f"{p}_seconds" for p in PHASES]
    keep = ["run_id", "dataset", "model", "seed", "device", *phase_cols, "train_images_per_s"]
    out = details.reindex(columns=keep).copy()
    for col in [*phase_cols, "train_images_per_s"]:
        out[col] = pd.to_numeric(out[col], errors="coerce")
    recorded = out[phase_cols].notna().any(axis=1)
    out["total_seconds"] = out[phase_cols].sum(axis=1, min_count=1).where(recorded)
    return out
