"""The report's tables of the shortcut evidence beyond CAMs (display strings): the source probes and
the CAM sanity check, from analysis/evidence.py's long tables."""
from __future__ import annotations

import pandas as pd

from benchmark.analysis.evidence import sanity_table, source_table
from benchmark.analysis.measures import detail_dict
from benchmark.report.document import Table


def _num(value, digits: int = 3) -> str:
    return "" if value is None or pd.isna(value) else f"{float(value):.{digits}f}"


def source_report_table(probes: pd.DataFrame):
    """The report's table of the source probes (display strings)."""
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
