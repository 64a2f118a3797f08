"""A run's or a seed group's classification performance from its stored predictions.

ROC per class with its patient-bootstrap band (roc.py), the confusion matrix, reliability bins and
ECE (calibration.py), and accuracy / AUC per source database (`images.source`) with patient-bootstrap
CIs (benchmark/training/metrics.py). Inputs are the rows of `queries.performance_predictions`
(or any frame with label, probs, patient_id, image_id, source) and the run's class list; numpy and
pandas only, so the dashboard's Performance page and the report share it.

A seed group (runs differing only by their training seed, seeds.py) is pooled the way the
leaderboard pools it: ROC curves and band bounds averaged point by point over seeds, confusion
counts summed over seeds, the reliability diagram over every seed's predictions (beside each seed's
own ECE), and per-source numbers averaged over seeds (CI bounds: the mean of the per-seed bounds).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from benchmark.analysis.calibration import N_BINS, Reliability, reliability, top_label
from benchmark.analysis.roc import ROC_BOOT, RocCurve, mean_curve, roc_curves
from benchmark.training.metrics import confusion_matrix, metrics_with_ci

#: patient-bootstrap resamples of the per-source CIs (the run's own metric CIs use 1000)
SOURCE_BOOT = 500
SOURCE_COLUMNS = ["split", "source", "n_images", "class_counts", "accuracy", "accuracy_ci_low", "accuracy_ci_high",
                  "macro_auc", "macro_auc_ci_low", "macro_auc_ci_high", "n_seeds", "accuracy_sd"]


def classes_of(classes_json) -> list[str]:
    """A run's class names from `runs.classes_json` ([] when missing or unreadable)."""
    try:
        names = json.loads(classes_json or "[]")
    except (TypeError, ValueError):
        return []
    return [str(c) for c in names] if isinstance(names, list) else []


@dataclass(frozen=True)
class Scored:
    """One run's predictions in one split as arrays: class indices, N x C probabilities, patients, sources."""

    run_id: str
    split: str
    classes: tuple[str, ...]
    labels: np.ndarray
    probs: np.ndarray
    patients: tuple[str, ...]
    sources: np.ndarray
    seed: int = 0


def scored(preds: pd.DataFrame, classes, *, run_id: str, split: str, seed: int = 0) -> Scored:
    """Arrays of a run's prediction rows; rows whose label is not one of `classes` are left out.

    ValueError when the stored probabilities do not have one column per class.
    """
    classes = tuple(str(c) for c in classes)
    index = {c: i for i, c in enumerate(classes)}
    known = preds[preds["label"].isin(index)] if not preds.empty else preds
    probs = np.array([list(p) for p in known["probs"]], dtype=np.float64).reshape(len(known), -1)
    if len(known) and probs.shape[1] != len(classes):
        raise ValueError(f"run {run_id}: stored probabilities have {probs.shape[1]} columns for "
                         f"{len(classes)} classes {list(classes)}")
    patients = known["image_id"].astype(str)  # an image without a patient is its own patient
    if "patient_id" in known:
        given = known["patient_id"].notna() & (known["patient_id"].astype(str) != "")
        patients = known["patient_id"].astype(str).where(given, patients)
    sources = known["source"].fillna("").astype(str).to_numpy() if "source" in known else np.full(len(known), "")
    return Scored(run_id, split, classes, known["label"].map(index).to_numpy(dtype=np.int64),
                  probs.reshape(len(known), len(classes)), tuple(str(p) for p in patients), sources, int(seed))


@dataclass(frozen=True)
class Performance:
    """What the Performance page draws for one run or seed group in one split."""

    classes: tuple[str, ...]
    roc: dict[str, RocCurve]
    confusion: np.ndarray          # C x C counts, rows = true class (summed over seeds)
    reliability: Reliability       # over every seed's predictions
    ece_per_run: dict[str, float]  # run_id -> that run's own ECE
    n_runs: int
    n_images: int                  # predictions per run (the first run's count)


def performance(runs: list[Scored], *, n_bins: int = N_BINS, n_boot: int = ROC_BOOT,
                with_roc: bool = True) -> Performance:
    """ROC, confusion matrix and reliability of one run (one Scored) or a seed group (several);
    `with_roc=False` skips the ROC curves (their bootstrap is the costly part), leaving `roc` empty."""
    if not runs:
        raise ValueError("no predictions to measure")
    classes = runs[0].classes
    if any(r.classes != classes for r in runs):
        raise ValueError("the runs of a seed group must share their classes")
    per_class: dict[str, list[RocCurve]] = {}
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    ece = {}
    for r in runs:
        if not r.labels.size:
            continue
        curves = roc_curves(r.labels, r.probs, list(r.patients), n_boot=n_boot, seed=r.seed) if with_roc else {}
        for k, curve in curves.items():
            per_class.setdefault(classes[k], []).append(curve)
        confusion += confusion_matrix(r.labels, r.probs.argmax(axis=1), len(classes))
        ece[r.run_id] = reliability(*top_label(r.labels, r.probs), n_bins=n_bins).ece
    filled = [r for r in runs if r.labels.size]
    conf = np.concatenate([top_label(r.labels, r.probs)[0] for r in filled]) if filled else np.zeros(0)
    hit = np.concatenate([top_label(r.labels, r.probs)[1] for r in filled]) if filled else np.zeros(0, bool)
    return Performance(classes, {c: mean_curve(v) for c, v in per_class.items()}, confusion,
                       reliability(conf, hit, n_bins=n_bins), ece, len(runs), int(runs[0].labels.size))


def confusion_frame(perf: Performance) -> pd.DataFrame:
    """The confusion matrix as rows (true, predicted, count, row_share): a downloadable table."""
    c = perf.classes
    share = perf.confusion / np.maximum(perf.confusion.sum(axis=1, keepdims=True), 1)
    return pd.DataFrame([{"true_class": c[i], "predicted_class": c[j], "count": int(perf.confusion[i, j]),
                          "row_share": float(share[i, j]) if perf.confusion[i].sum() else float("nan")}
                         for i in range(len(c)) for j in range(len(c))])


def reliability_frame(rel: Reliability) -> pd.DataFrame:
    """The reliability bins as a table (bin bounds, images, mean confidence, accuracy, gap)."""
    return pd.DataFrame({"bin_low": rel.edges[:-1], "bin_high": rel.edges[1:], "n_images": rel.counts,
                         "mean_confidence": rel.confidence, "accuracy": rel.accuracy, "gap": rel.gap})


def _per_source_one(r: Scored, n_boot: int) -> list[dict]:
    rows = []
    for source in sorted(set(r.sources)):
        sel = r.sources == source
        y, p = r.labels[sel], r.probs[sel]
        got = {(m.metric, m.class_name): m for m in metrics_with_ci(
            y, p, r.classes, [r.patients[i] for i in np.flatnonzero(sel)], n_boot=n_boot, seed=r.seed)}
        acc, auc = got[("accuracy", "")], got[("macro_auc", "")]
        counts = np.bincount(y, minlength=len(r.classes))
        rows.append({"run_id": r.run_id, "split": r.split, "source": source or "(unknown)", "n_images": int(sel.sum()),
                     "class_counts": ", ".join(f"{c} {n}" for c, n in zip(r.classes, counts) if n),
                     "accuracy": acc.value, "accuracy_ci_low": acc.ci_low, "accuracy_ci_high": acc.ci_high,
                     "macro_auc": auc.value, "macro_auc_ci_low": auc.ci_low, "macro_auc_ci_high": auc.ci_high})
    return rows


def per_source(runs: list[Scored], *, n_boot: int = SOURCE_BOOT) -> pd.DataFrame:
    """Accuracy and macro AUC (patient-bootstrap 95% CIs) per (split, source database), seeds averaged.

    A source that holds one class only has no AUC (NaN): there is nothing to rank against, and a
    model that tells that source from the others gets its accuracy there for free.
    """
    rows = [row for r in runs if r.labels.size for row in _per_source_one(r, n_boot)]
    if not rows:
        return pd.DataFrame(columns=SOURCE_COLUMNS)
    df = pd.DataFrame(rows).astype({c: "float64" for c in SOURCE_COLUMNS[4:10]})
    grouped = df.groupby(["split", "source"], sort=True)
    out = grouped[SOURCE_COLUMNS[4:10]].mean()
    out.insert(0, "n_images", grouped["n_images"].max())
    out.insert(1, "class_counts", grouped["class_counts"].first())
    out["n_seeds"] = grouped["run_id"].nunique()
    out["accuracy_sd"] = grouped["accuracy"].std(ddof=1)
    out = out.reset_index()
    test_first = out["split"].ne("test")
    return out.assign(_o=test_first).sort_values(["_o", "split", "source"], kind="stable").drop(
        columns="_o").reset_index(drop=True)[SOURCE_COLUMNS]
