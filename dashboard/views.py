"""The dashboard's tables, built from query results with pandas only (no streamlit, no SQL).

Pages call these and only draw; tests call them directly. SQL stays in benchmark.store.queries.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

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
#: leaderboard sort choices -> (column, ascending)
SORT_KEYS = {
    "accuracy (high first)": ("accuracy", False),
    "lung mass (low first)": ("lung_mass", True),
    "lung mass (high first)": ("lung_mass", False),
    "shortcut gap: accuracy - lung mass": ("shortcut_gap", False),
    "AUC (high first)": ("auc", False),
    "lungs-removed accuracy (high first)": ("lungs_removed_acc", False),
    "marker mass (high first)": ("marker_mass", False),
    "external drop (large first)": ("external_drop", False),
}


def ci_text(low, high, digits: int = 2) -> str:
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return ""
    return f"[{low:.{digits}f}, {high:.{digits}f}]"


def class_choices(class_metrics: pd.DataFrame) -> list[str]:
    return sorted(class_metrics["class_name"].dropna().unique()) if not class_metrics.empty else []


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
                baselines: dict[str, float | None] | None = None) -> pd.DataFrame:
    """One row per done run: accuracy, sensitivity, specificity, AUC with CIs, lung focus of
    `method`'s maps, the lungs-removed probe and the worst external-validation drop.

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
    return board.merge(probe_summary(probes, summary), on="run_id", how="left")


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


def probe_table(probes: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """Long table of every probe with its CI and its change from the reference accuracy: the
    'intact' probe for lungs_removed / lungs_only, the run's test accuracy for external sets."""
    cols = ["dataset", "model", "probe", "accuracy", "95% CI", "reference", "change"]
    if probes.empty:
        return pd.DataFrame(columns=cols)
    acc = summary.set_index("run_id")["accuracy"]
    out = []
    for run_id, p in probes[probes.metric == "accuracy"].groupby("run_id", sort=False):
        test_acc = float(acc[run_id]) if run_id in acc.index and pd.notna(acc[run_id]) else None
        intact_ref = _reference_accuracy(p, test_acc)
        for r in p.itertuples(index=False):
            ref = None if r.probe == "intact" else (test_acc if r.probe.startswith("external:") else intact_ref)
            out.append({"dataset": r.dataset, "model": r.model, "probe": r.probe, "accuracy": r.value,
                        "95% CI": ci_text(r.ci_low, r.ci_high), "reference": ref,
                        "change": None if ref is None else r.value - ref})
    return pd.DataFrame(out, columns=cols)


def sort_board(board: pd.DataFrame, sort_label: str) -> pd.DataFrame:
    col, ascending = SORT_KEYS.get(sort_label, ("accuracy", False))
    if board.empty or col not in board:
        return board
    return board.sort_values(col, ascending=ascending, na_position="last", kind="stable").reset_index(drop=True)


# ----------------------------------------------------------------------------- gallery filters

@dataclass(frozen=True)
class GalleryFilter:
    """What the misclassification gallery shows; empty tuples mean 'all'.

    A range filter over lung_mass or age keeps rows without a value only while the range is the
    full range, so opening the page never hides images that simply have no mask or no age.
    """

    run_ids: tuple[str, ...] = ()
    only_wrong: bool = True
    true_classes: tuple[str, ...] = ()
    pred_classes: tuple[str, ...] = ()
    confidence: tuple[float, float] = (0.0, 1.0)
    lung_mass: tuple[float, float] = (0.0, 1.0)
    sources: tuple[str, ...] = ()
    views: tuple[str, ...] = ()
    sexes: tuple[str, ...] = ()
    age: tuple[float, float] | None = None
    age_full_range: tuple[float, float] | None = field(default=None, compare=False)


def _in_range(values: pd.Series, bounds, full) -> pd.Series:
    lo, hi = bounds
    inside = values.between(lo, hi)
    if full is not None and (lo, hi) == tuple(full):
        inside |= values.isna()
    return inside


def filter_predictions(rows: pd.DataFrame, f: GalleryFilter) -> pd.DataFrame:
    """The rows of `queries.prediction_rows` that pass every filter, in their original order."""
    if rows.empty:
        return rows
    keep = pd.Series(True, index=rows.index)
    if f.run_ids:
        keep &= rows.run_id.isin(f.run_ids)
    if f.only_wrong:
        keep &= rows.label != rows.pred
    for col, chosen in (("label", f.true_classes), ("pred", f.pred_classes), ("source", f.sources),
                        ("view", f.views), ("sex", f.sexes)):
        if chosen:
            keep &= rows[col].isin(chosen)
    keep &= _in_range(rows.confidence, f.confidence, (0.0, 1.0))
    keep &= _in_range(rows.lung_mass, f.lung_mass, (0.0, 1.0))
    if f.age is not None:
        keep &= _in_range(rows.age, f.age, f.age_full_range)
    return rows[keep]


def known_values(rows: pd.DataFrame, col: str) -> list[str]:
    """Distinct non-empty values of a metadata column (a filter is offered only if there are any)."""
    if rows.empty or col not in rows:
        return []
    values = rows[col].dropna().astype(str)
    return sorted(v for v in values.unique() if v.strip())


def age_range(rows: pd.DataFrame) -> tuple[float, float] | None:
    if rows.empty or "age" not in rows or rows.age.dropna().empty:
        return None
    return float(math.floor(rows.age.min())), float(math.ceil(rows.age.max()))


def page_of(rows: pd.DataFrame, page: int, page_size: int) -> tuple[pd.DataFrame, int]:
    """Rows of 1-based `page` (clamped to the last page) and the number of pages."""
    n_pages = max(1, math.ceil(len(rows) / page_size))
    page = min(max(1, int(page)), n_pages)
    return rows.iloc[(page - 1) * page_size: page * page_size], n_pages


#: gallery order choices -> (column, ascending); confidently wrong first by default
GALLERY_ORDERS = {
    "confidence (high first)": ("confidence", False),
    "confidence (low first)": ("confidence", True),
    "lung mass (low first)": ("lung_mass", True),
    "model, then image": ("model", True),
}


def sort_gallery(rows: pd.DataFrame, order: str) -> pd.DataFrame:
    col, ascending = GALLERY_ORDERS.get(order, ("confidence", False))
    return rows.sort_values(col, ascending=ascending, kind="stable", na_position="last")


EXPORT_COLUMNS = ["run_id", "model", "image_id", "label", "pred", "confidence", "correct", "lung_mass",
                  "pointing_hit", "lung_iou", "source", "view", "sex", "age", "path"]


def export_csv(rows: pd.DataFrame) -> bytes:
    return rows[[c for c in EXPORT_COLUMNS if c in rows]].to_csv(index=False).encode()


# ----------------------------------------------------------------------------- models

def cam_from_row(row) -> np.ndarray:
    """A cams row's map as float32 h x w (layer resolution; render.overlay upsamples it)."""
    from benchmark.store.queries import cam_array

    return cam_array(row)


def checkpoint_label(meta: dict) -> str:
    acc = (meta.get("metrics") or {}).get("accuracy")
    acc_text = f", test acc {acc:.2f}" if isinstance(acc, (int, float)) and math.isfinite(acc) else ""
    extra = ", lungs only" if meta.get("lungs_only") else ""
    return f"{meta.get('architecture', '?')} on {meta.get('dataset', '?')}{acc_text}{extra}"


def rank_checkpoints(checkpoints: list[dict]) -> list[dict]:
    """Best test accuracy first (checkpoints without a number last), then by path for stability."""
    def key(meta):
        acc = (meta.get("metrics") or {}).get("accuracy")
        ok = isinstance(acc, (int, float)) and math.isfinite(acc)
        return (0 if ok else 1, -(acc if ok else 0.0), str(meta.get("path", "")))
    return sorted(checkpoints, key=key)
