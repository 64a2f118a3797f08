"""The leaderboard's composition: one row per done run, test metrics with CIs beside lung focus
and the shortcut probes (pandas only, no SQL, no streamlit).

Both the dashboard's Leaderboard page and the replication report show this table, so it lives
here, below both (benchmark never imports dashboard); dashboard/views.py re-exports it.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from benchmark.analysis.external import BOARD_COLUMNS, board_columns

MEAN_OVER_CLASSES = "mean over classes"
# Which CAM method a page shows first: the audit's own default for lung focus (fine enough to
# tell a lung-reading model from a shortcut one on the phantom), else the paper's Grad-CAM.
PREFERRED_METHODS = ("hirescam@stride16", "gradcam")


def preferred_method_index(methods: list[str]) -> int:
    """Index of the first preferred method present in `methods` (0 when none is)."""
    for name in PREFERRED_METHODS:
        if name in methods:
            return methods.index(name)
    return 0


def ci_text(low, high, digits: int = 2) -> str:
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return ""
    return f"[{low:.{digits}f}, {high:.{digits}f}]"


def _per_class(class_metrics: pd.DataFrame, class_choice: str) -> pd.DataFrame:
    """run_id x {sensitivity, specificity, auc} value and CI for one class, or means over classes."""
    out = pd.DataFrame(columns=["run_id"])
    if class_metrics.empty:
        return out
    cm = class_metrics[class_metrics.metric.isin(["sensitivity", "specificity", "auc"])]
    if class_choice == MEAN_OVER_CLASSES:
        # a mean of per-class CIs is not a CI, so the mean comes without one
        wide = cm.pivot_table(index="run_id", columns="metric", values="value", aggfunc="mean")
        wide = wide.rename(columns={"auc": "_class_auc"})
        return wide.reset_index()
    one = cm[cm.class_name == class_choice]
    wide = one.pivot_table(index="run_id", columns="metric", values=["value", "ci_low", "ci_high"], aggfunc="first")
    wide.columns = [m if v == "value" else f"{m}_{v}" for v, m in wide.columns]
    return wide.rename(columns=lambda c: c.replace("auc", "_class_auc") if c.startswith("auc") else c).reset_index()


def leaderboard(summary: pd.DataFrame, class_metrics: pd.DataFrame, focus: pd.DataFrame,
                probes: pd.DataFrame, method: str | None, class_choice: str = MEAN_OVER_CLASSES,
                baselines: dict[str, float | None] | None = None, sanity: pd.DataFrame | None = None,
                external: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per done run: accuracy, sensitivity, specificity, AUC with CIs, lung focus of
    `method`'s maps, the lungs-removed probe, the worst external-validation drop, the source
    probes (`source_summary`) and, with `sanity` (queries.cam_sanity), the CAM sanity check of
    `method` (`sanity_summary`). With `external` (queries.external_metrics), `internal_auc`,
    `external_auc`, `auc_drop` and `external_set`: the set where the run's AUC fell most
    (analysis.external.board_columns); NaN without it.

    With a class chosen, sensitivity/specificity/AUC are that class's (one-vs-rest, with CIs);
    with `MEAN_OVER_CLASSES` they are means over classes and AUC is the stored macro AUC.
    """
    board = summary.copy()
    if board.empty:
        return board
    per_class = _per_class(class_metrics, class_choice)
    board = board.merge(per_class, on="run_id", how="left") if not per_class.empty else board
    for col in ("sensitivity", "specificity"):
        for suffix in ("", "_ci_low", "_ci_high"):
            if col + suffix not in board:
                board[col + suffix] = np.nan
    if class_choice == MEAN_OVER_CLASSES:
        board["auc"], board["auc_ci_low"], board["auc_ci_high"] = (
            board["macro_auc"], board["macro_auc_ci_low"], board["macro_auc_ci_high"])
    else:
        for suffix in ("", "_ci_low", "_ci_high"):
            board["auc" + suffix] = board.get("_class_auc" + suffix, np.nan)
    board = board.drop(columns=[c for c in board.columns if c.startswith("_class_auc")])

    f = focus[focus.method == method] if method is not None and not focus.empty else focus.iloc[0:0]
    focus_cols = ["run_id", "lung_mass", "pointing_game", "lung_iou", "marker_mass", "lung_mass_ceiling",
                  "n_cams", "n_scored"]
    f = f.reindex(columns=focus_cols) if not f.empty else pd.DataFrame(columns=focus_cols)
    board = board.merge(f, on="run_id", how="left")
    base = board["dataset"].map(lambda d: (baselines or {}).get(d))
    board["uniform_baseline"] = pd.to_numeric(base, errors="coerce")
    board["lung_mass_vs_uniform"] = board["lung_mass"] / board["uniform_baseline"]
    board["shortcut_gap"] = board["accuracy"] - board["lung_mass"]
    # 0 = no better than a uniform map, 1 = as lung-focused as a map of this resolution can be
    span = board["lung_mass_ceiling"] - board["uniform_baseline"]
    board["lung_focus_score"] = ((board["lung_mass"] - board["uniform_baseline"]) / span).where(span > 0.05)
    board = board.merge(probe_summary(probes, summary), on="run_id", how="left")
    board = board.merge(source_summary(probes), on="run_id", how="left")
    board = board.merge(sanity_summary(sanity, method), on="run_id", how="left")
    board = board.merge(board_columns(external), on="run_id", how="left")
    for col in SOURCE_COLUMNS[1:] + SANITY_COLUMNS[1:-1] + BOARD_COLUMNS[1:-1]:  # numeric even where no run has them
        board[col] = pd.to_numeric(board[col], errors="coerce")
    return board


SOURCE_COLUMNS = ["run_id", "source_auc", "source_auc_ci_low", "source_auc_ci_high", "source_pixels_auc",
                  "source_pixels_auc_ci_low", "source_pixels_auc_ci_high"]


def source_summary(probes: pd.DataFrame) -> pd.DataFrame:
    """Per run: the source probes' macro AUC with CI bounds, on the model's features (`source_auc`)
    and on pooled pixels (`source_pixels_auc`); NaN where skipped (one source) or not run."""
    if probes.empty:
        return pd.DataFrame(columns=SOURCE_COLUMNS)
    rows = probes[probes.probe.isin(["source", "source_pixels"]) & (probes.metric == "auc")]
    if rows.empty:
        return pd.DataFrame(columns=SOURCE_COLUMNS)
    wide = rows.pivot_table(index="run_id", columns="probe", values=["value", "ci_low", "ci_high"],
                            aggfunc="first", dropna=False)
    wide.columns = [f"{probe}_auc" if part == "value" else f"{probe}_auc_{part}" for part, probe in wide.columns]
    wide = wide.reset_index().reindex(columns=SOURCE_COLUMNS)
    for col in SOURCE_COLUMNS[1:]:
        wide[col] = pd.to_numeric(wide[col], errors="coerce")
    return wide


SANITY_COLUMNS = ["run_id", "sanity_rank_corr", "sanity_ci_low", "sanity_ci_high", "sanity_flagged",
                  "sanity_flagged_methods"]


def sanity_summary(sanity: pd.DataFrame | None, method: str | None) -> pd.DataFrame:
    """Per run: the CAM sanity check of `method` (mean rank correlation between the trained and
    the randomised model's maps, its CI, and `sanity_flagged` as 1.0/0.0 so that a seed group's mean
    is the share of its seeds flagged) and every flagged method of the run, comma-joined."""
    if sanity is None or sanity.empty:
        return pd.DataFrame(columns=SANITY_COLUMNS)
    flagged = sanity[sanity.flagged.fillna(False).astype(bool)].groupby("run_id")["method"].agg(
        lambda m: ", ".join(sorted(m)))
    out = pd.DataFrame({"run_id": sorted(sanity.run_id.unique())})
    # no run flagged: map() gives float NaNs, which cannot take "" as a fill
    out["sanity_flagged_methods"] = out.run_id.map(flagged).astype(object).fillna("")
    one = sanity[sanity.method == method] if method is not None else sanity.iloc[0:0]
    one = one.drop_duplicates("run_id").set_index("run_id")
    out["sanity_rank_corr"] = pd.to_numeric(out.run_id.map(one["rank_corr"]), errors="coerce")
    out["sanity_ci_low"] = pd.to_numeric(out.run_id.map(one["ci_low"]), errors="coerce")
    out["sanity_ci_high"] = pd.to_numeric(out.run_id.map(one["ci_high"]), errors="coerce")
    out["sanity_flagged"] = pd.to_numeric(out.run_id.map(one["flagged"].astype(float)), errors="coerce")
    return out[SANITY_COLUMNS]


def _reference_accuracy(p: pd.DataFrame, test_accuracy: float | None) -> float | None:
    """What a lungs probe is compared with: the 'intact' probe (same images, those with a mask)
    when stored, else the run's test accuracy."""
    intact = p[p.probe == "intact"]
    return float(intact.iloc[0].value) if not intact.empty else test_accuracy


def probe_summary(probes: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """Per run: lungs-removed and lungs-only accuracy, the lungs-removed drop, the worst external drop."""
    cols = ["run_id", "lungs_removed_acc", "lungs_removed_ci", "lungs_removed_drop", "lungs_only_acc",
            "external_acc", "external_drop", "external_dataset"]
    if probes.empty:
        return pd.DataFrame(columns=cols)
    acc = summary.set_index("run_id")["accuracy"]
    rows = []
    for run_id, p in probes[probes.metric == "accuracy"].groupby("run_id"):
        row = {"run_id": run_id}
        test_acc = float(acc[run_id]) if run_id in acc.index and pd.notna(acc[run_id]) else None
        reference = _reference_accuracy(p, test_acc)
        removed = p[p.probe == "lungs_removed"]
        if not removed.empty:
            r = removed.iloc[0]
            row["lungs_removed_acc"], row["lungs_removed_ci"] = r.value, ci_text(r.ci_low, r.ci_high)
            row["lungs_removed_drop"] = None if reference is None else reference - r.value
        only = p[p.probe == "lungs_only"]
        if not only.empty:
            row["lungs_only_acc"] = only.iloc[0].value
        ext = p[p.probe.str.startswith("external:")]
        if not ext.empty and test_acc is not None:
            worst = ext.loc[ext.value.idxmin()]
            row["external_acc"] = worst.value
            row["external_drop"] = test_acc - worst.value
            row["external_dataset"] = worst.probe.split(":", 1)[1]
        rows.append(row)
    return pd.DataFrame(rows, columns=cols)


def _probe_reference(probe: str, p: pd.DataFrame, test_acc: float | None, intact_ref: float | None):
    """What one probe row is compared with. A probe on an external set's images
    (`<probe>@external:<set>`) is compared with `intact@external:<set>` (the same images, intact),
    else with the set's own accuracy; 'intact' probes are the reference, so they have none."""
    name, _, images = probe.partition("@")
    if name == "intact":
        return None
    if images:
        own = p[p.probe == f"intact@{images}"]
        if own.empty:
            own = p[p.probe == images]
        return float(own.iloc[0].value) if not own.empty else None
    return test_acc if probe.startswith("external:") else intact_ref


def probe_table(probes: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """Long table of every probe with its CI and its change from the reference accuracy: the
    'intact' probe for lungs_removed / lungs_only, the run's test accuracy for external sets, and
    `intact@external:<set>` for the lungs probes on that set's images (`<probe>@external:<set>`)."""
    cols = ["dataset", "model", "probe", "accuracy", "95% CI", "reference", "change"]
    if probes.empty:
        return pd.DataFrame(columns=cols)
    acc = summary.set_index("run_id")["accuracy"]
    out = []
    for run_id, p in probes[probes.metric == "accuracy"].groupby("run_id", sort=False):
        test_acc = float(acc[run_id]) if run_id in acc.index and pd.notna(acc[run_id]) else None
        intact_ref = _reference_accuracy(p, test_acc)
        for r in p.itertuples(index=False):
            ref = _probe_reference(r.probe, p, test_acc, intact_ref)
            out.append({"dataset": r.dataset, "model": r.model, "probe": r.probe, "accuracy": r.value,
                        "95% CI": ci_text(r.ci_low, r.ci_high), "reference": ref,
                        "change": None if ref is None else r.value - ref})
    return pd.DataFrame(out, columns=cols)

