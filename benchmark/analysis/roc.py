"""One-vs-rest ROC curves with a patient-bootstrap band, on a fixed false-positive-rate grid.

Why patients: images of one patient are correlated, so (as for the stored metric CIs, see
benchmark/training/metrics.py) each bootstrap sample draws patients with replacement and keeps all
their images, as integer weights. Why a grid: bootstrap curves, and the curves of several seeds,
can then be averaged point by point; the band is the percentile interval of the resampled TPRs at
each FPR. numpy only; every resample is evaluated at once.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from benchmark.training.metrics import patient_weights, weighted_auc

FPR_GRID = np.linspace(0.0, 1.0, 101)
ROC_BOOT = 200   # resamples per curve: enough for a drawn band; the tables' CIs use the run's own 1000
ALPHA = 0.05


@dataclass(frozen=True)
class RocCurve:
    """TPR on FPR_GRID with its band, and the AUC; `n_pos`/`n_neg` images of the class / the rest."""

    tpr: np.ndarray
    low: np.ndarray
    high: np.ndarray
    auc: float
    n_pos: int
    n_neg: int


def weighted_roc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """TPR at each FPR_GRID point for each row of `weights` (B x N): tied scores are one threshold.

    Rows without positive or negative weight come back as NaN.
    """
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    order = np.argsort(-s, kind="stable")
    s_sorted, pos_sorted, w_sorted = s[order], pos[order], w[:, order]
    last_of_tie = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    tp = np.cumsum(w_sorted * pos_sorted, axis=1)[:, last_of_tie]
    fp = np.cumsum(w_sorted * ~pos_sorted, axis=1)[:, last_of_tie]
    out = np.full((w.shape[0], FPR_GRID.size), np.nan)
    for i in range(w.shape[0]):
        if tp[i, -1] <= 0 or fp[i, -1] <= 0:
            continue
        fpr = np.r_[0.0, fp[i] / fp[i, -1]]
        tpr = np.r_[0.0, tp[i] / tp[i, -1]]
        # the highest TPR reached at each FPR (a vertical step counts at its top)
        out[i] = np.maximum.accumulate(np.interp(FPR_GRID, fpr, tpr, left=0.0, right=1.0))
        out[i, 0] = tpr[fpr == 0].max()
    return out


def roc_curves(labels: np.ndarray, probs: np.ndarray, patients, *, n_boot: int = ROC_BOOT,
               seed: int = 0) -> dict[int, RocCurve]:
    """One-vs-rest curve per class index present with both positives and negatives.

    `labels` are class indices, `probs` N x C; the band is the 1 - ALPHA percentile interval over
    `n_boot` patient resamples.
    """
    y = np.asarray(labels)
    p = np.asarray(probs, dtype=np.float64)
    boot = patient_weights(patients, n_boot, seed)
    ones = np.ones((1, y.size))
    out = {}
    for k in range(p.shape[1]):
        positive = y == k
        if positive.all() or not positive.any():
            continue
        tpr = weighted_roc(p[:, k], positive, ones)[0]
        samples = weighted_roc(p[:, k], positive, boot)
        valid = samples[~np.isnan(samples).any(axis=1)]
        if len(valid) >= 2:
            low, high = np.percentile(valid, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)], axis=0)
        else:
            low = high = np.full(FPR_GRID.size, np.nan)
        out[k] = RocCurve(tpr, low, high, float(weighted_auc(p[:, k], positive, ones[0])),
                          int(positive.sum()), int((~positive).sum()))
    return out


def mean_curve(curves: list[RocCurve]) -> RocCurve:
    """Seeds of one group: TPR, band bounds and AUC averaged point by point (counts of the first)."""
    if len(curves) == 1:
        return curves[0]
    return RocCurve(np.mean([c.tpr for c in curves], axis=0), np.nanmean([c.low for c in curves], axis=0),
                    np.nanmean([c.high for c in curves], axis=0), float(np.mean([c.auc for c in curves])),
                    curves[0].n_pos, curves[0].n_neg)
