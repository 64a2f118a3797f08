"""Calibration: does a model that says 90 % turn out right 90 % of the time? Reliability bins and ECE.

Top-label calibration (Guo et al. 2017, "On calibration of modern neural networks"): each image's
confidence is its highest class probability and it counts as correct when that class (the arg-max,
the first one on a tie, as in benchmark/training/metrics.py) is its label. Confidences fall into
`n_bins` equal-width bins over [0, 1], right-closed as in the paper: (0, 0.1], (0.1, 0.2], ...,
the first bin also holding 0, so a confidence on an edge belongs to the bin below it.

    ECE = sum over bins b of (n_b / N) * |accuracy_b - mean confidence_b|

the expected calibration error: the gap between the reliability diagram's bars and its diagonal,
weighted by how many images each bar holds. MCE is the largest gap over non-empty bins. numpy only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_BINS = 10


@dataclass(frozen=True)
class Reliability:
    """Per bin: edges (n_bins + 1), image counts, mean confidence and accuracy (NaN where empty)."""

    edges: np.ndarray
    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    ece: float
    mce: float
    n: int

    @property
    def gap(self) -> np.ndarray:
        """accuracy - confidence per bin: negative = over-confident."""
        return self.accuracy - self.confidence


def top_label(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, correct) per image from class indices and N x C probabilities."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels)
    if p.ndim != 2 or y.shape != (p.shape[0],):
        raise ValueError(f"probs must be N x C and labels one class index per row, got {p.shape} and {y.shape}")
    return p.max(axis=1), p.argmax(axis=1) == y


def reliability(confidence: np.ndarray, correct: np.ndarray, n_bins: int = N_BINS) -> Reliability:
    """Reliability bins and ECE of top-label confidences (see the module docstring)."""
    conf = np.asarray(confidence, dtype=np.float64).ravel()
    hit = np.asarray(correct, dtype=bool).ravel()
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if conf.shape != hit.shape:
        raise ValueError(f"confidence and correct must be the same length, got {conf.size} and {hit.size}")
    if conf.size and (not np.isfinite(conf).all() or conf.min() < 0 or conf.max() > 1):
        raise ValueError("confidences must be finite and in [0, 1]")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.searchsorted(edges[1:-1], conf, side="left")  # right-closed bins
    counts = np.bincount(index, minlength=n_bins)
    conf_sum = np.bincount(index, weights=conf, minlength=n_bins)
    hit_sum = np.bincount(index, weights=hit.astype(np.float64), minlength=n_bins)
    filled = counts > 0
    mean_conf = np.full(n_bins, np.nan)
    mean_acc = np.full(n_bins, np.nan)
    mean_conf[filled] = conf_sum[filled] / counts[filled]
    mean_acc[filled] = hit_sum[filled] / counts[filled]
    gaps = np.abs(mean_acc[filled] - mean_conf[filled])
    n = int(conf.size)
    ece = float((counts[filled] / n * gaps).sum()) if n else float("nan")
    mce = float(gaps.max()) if n else float("nan")
    return Reliability(edges, counts, mean_conf, mean_acc, ece, mce, n)


def reliability_of(labels: np.ndarray, probs: np.ndarray, n_bins: int = N_BINS) -> Reliability:
    """`reliability` of a classifier's N x C probabilities against its labels (class indices)."""
    return reliability(*top_label(labels, probs), n_bins=n_bins)
