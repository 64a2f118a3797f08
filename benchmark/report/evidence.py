"""Shortcut evidence beyond CAMs, as long tables (pandas only): the source probes (Zech et al.
2018) and the CAM sanity check (Adebayo et al. 2018), one row per run and probe / method.

Shared by the dashboard's leaderboard page and the replication report; the per-run summary
columns of the leaderboard itself are board.source_summary and board.sanity_summary.
"""
from __future__ import annotations

import pandas as pd

from benchmark.report.board import ci_text
from benchmark.report.measures import detail_dict

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


def _num(value, digits: int = 3) -> str:
    return "" if value is None or pd.isna(value) else f"{float(value):.{digits}f}"


def source_report_table(probes: pd.DataFrame):
    """The report's table of the source probes (display strings)."""
    from benchmark.report.document import Table

    rows = source_table(probes)
    frame = pd.DataFrame({
        "Dataset": rows["dataset"], "Model": rows["model"], "Features": rows["features"], "Metric": rows["metric"],
        "Source AUC": [(_num(v) + (f" {ci}" if ci else "")) if pd.notna(v) else "" for v, ci in
                       zip(rows["auc"], rows["95% CI"])],
        "Sources": rows["sources"], "n test": [_num(n, 0) for n in rows["n_test"]],
        "Skipped because": rows["note"], "Run id": rows["run_id"]})
    return Table("Source probe: how recognisable is the source database?", frame, notes=(
        "A logistic regression (L2, C=1, balanced class weights, standardised inputs) fitted on each run's train "
        "split to tell the image's source database, scored on its test split (patient-level split, so no patient "
        "on both sides). Model features: the input of the trained model's classifier layer (frozen). Pixels 16x16: "
        "the image area-pooled to 16 x 16, no model at all (the same for every model of a dataset and input size).",
        "AUC: macro one-vs-rest over sources with a 95% CI by patient bootstrap; 0.5 = indistinguishable, 1 = "
        "always told apart (Zech et al. 2018). Where the class decides the source (covid only from one "
        "collection), this AUC partly restates the class; `auc_within:<class>` repeats the probe within one "
        "class that mixes sources.",
    ), empty_text="No source probe stored (runs made before the probe existed, or `source_probe` off).")


def sanity_report_table(sanity: pd.DataFrame):
    """The report's table of the CAM sanity check (display strings)."""
    from benchmark.report.document import Table

    rows = sanity_table(sanity)
    frame = pd.DataFrame({
        "Dataset": rows["dataset"], "Model": rows["model"], "CAM method": rows["method"],
        "Images": [_num(n, 0) for n in rows["n_images"]],
        "Rank correlation": [(_num(v) + (f" {ci}" if ci else "")) for v, ci in zip(rows["rank_corr"], rows["95% CI"])],
        "Flagged": ["yes" if f else "no" for f in rows["flagged"]], "Run id": rows["run_id"]})
    threshold = _threshold(sanity)
    return Table("CAM sanity check: do the maps change when the weights are randomised?", frame, notes=(
        "Adebayo et al. (2018), model randomisation: each method's maps of the trained model (predicted class) "
        "against the maps of the same architecture with every weight re-initialised (full, not cascading, "
        "randomisation; fixed seed), on a seeded sample of test images. Spearman rank correlation of the two maps "
        "per image, mean with a 95% CI by patient bootstrap.",
        "Flagged: mean correlation at or above " + (f"{threshold:g}" if threshold is not None else "the threshold")
        + ": the maps barely depend on what the model learned, so they do not explain it.",
    ), empty_text="No CAM sanity check stored (runs made before it existed, or `--sanity-sample 0`).")


def _threshold(sanity: pd.DataFrame) -> float | None:
    if sanity is None or sanity.empty or "detail" not in sanity:
        return None
    values = {detail_dict(d).get("threshold") for d in sanity.detail}
    values.discard(None)
    return float(values.pop()) if len(values) == 1 else None
