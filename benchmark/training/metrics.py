"""Test metrics with patient-level bootstrap confidence intervals.

Why patients and not images: chest X-ray sets hold several images per patient, and images of
one patient are correlated (same anatomy, same scanner, same markers). Resampling images would
treat them as independent evidence and give CIs that are too narrow, worst when one patient
contributes many images. So every bootstrap sample draws PATIENTS with replacement and keeps
all images of a drawn patient; a patient drawn twice counts twice.

Why weights: a bootstrap sample is the original images with integer weights (how often each
image's patient was drawn). Every metric here is computed from weighted confusion matrices and
a weighted rank formula for ROC-AUC, so all samples are evaluated at once with numpy and the
point estimate is the same code with weights all 1 (so it agrees with scikit-learn).

Conventions (documented once, used everywhere):
- prediction = argmax of the class probabilities (first class wins a tie);
- precision and f1 follow scikit-learn's ``zero_division=0``: 0 when undefined;
- sensitivity (recall) of a class with no positives, specificity of a class with no negatives
  and AUC of a class without both positives and negatives are NaN (not measurable, not 0);
- balanced_accuracy averages recall over classes present in ``y_true`` (as scikit-learn);
- macro_f1 averages f1 over classes present in ``y_true`` or predicted (scikit-learn's
  default labels), so a class neither present nor predicted does not drag it to 0;
- macro_auc: binary -> AUC of class 1; otherwise the mean one-vs-rest AUC over classes
  whose AUC is defined;
- CIs are percentile intervals; NaN samples are ignored; fewer than 2 valid samples -> None.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

OVERALL_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc")
PER_CLASS_METRICS = ("sensitivity", "specificity", "precision", "f1", "auc")

# Bootstrap samples evaluated per block: bounds memory at _BLOCK x n_images floats. Fixed (not
# derived from the data size) so the random stream, hence the CI, depends only on the seed.
_BLOCK = 128


@dataclass(frozen=True)
class MetricRow:
    """One row of the ``metrics`` table; ``class_name`` is '' for overall metrics."""

    metric: str
    class_name: str
    value: float
    ci_low: float | None = None
    ci_high: float | None = None


# ----------------------------------------------------------------------------- validation


def _check_inputs(y_true, probs, classes) -> tuple[np.ndarray, np.ndarray, list[str]]:
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    names = [str(c) for c in classes]
    if p.ndim != 2 or p.shape[1] != len(names):
        raise ValueError(f"probs must be N x {len(names)} (one column per class), got {p.shape}")
    if len(names) < 2:
        raise ValueError(f"need at least 2 classes, got {names}")
    if y.ndim != 1 or y.shape[0] != p.shape[0]:
        raise ValueError(f"y_true must have one entry per row of probs ({p.shape[0]}), got {y.shape}")
    if y.shape[0] == 0:
        raise ValueError("no images to score")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y_true must hold integer class indices, got dtype {y.dtype}")
    if y.min() < 0 or y.max() >= len(names):
        raise ValueError(f"y_true must be class indices in [0, {len(names) - 1}] for classes {names}")
    if not np.isfinite(p).all():
        raise ValueError("probs contain NaN or infinite values")
    return y.astype(np.int64), p, names


def _patient_index(groups: Sequence[str], n_images: int) -> tuple[np.ndarray, int]:
    g = np.asarray([str(x) for x in groups])
    if g.shape != (n_images,):
        raise ValueError(f"groups must give one patient id per image ({n_images}), got {g.shape[0]}")
    _, inverse = np.unique(g, return_inverse=True)
    return inverse.astype(np.int64), int(inverse.max()) + 1 if n_images else 0


def _check_boot(n_boot: int, alpha: float) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


# ------------------------------------------------------------------------ vectorised core


def _safe_div(num: np.ndarray, den: np.ndarray, fill: float) -> np.ndarray:
    out = np.full(np.broadcast(num, den).shape, fill, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _masked_mean(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean over the last axis where ``mask``; NaN where nothing is selected (no warnings)."""
    count = mask.sum(axis=-1)
    total = np.where(mask, values, 0.0).sum(axis=-1)
    return _safe_div(total, count, np.nan)


def weighted_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC-AUC for each row of ``weights`` (B x N, or N for one sample) by the rank formula.

    AUC = sum over (positive i, negative j) of w_i w_j ([s_i > s_j] + 0.5 [s_i == s_j]),
    divided by W_pos W_neg: the probability a random positive outranks a random negative,
    ties counted half, which is exactly the trapezoidal area scikit-learn reports (also with
    ``sample_weight``). Images are sorted by score once and tied scores pooled, so each sample
    costs O(N). NaN where a sample has no positive or no negative weight.
    """
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    w = np.asarray(weights, dtype=np.float64)
    single = w.ndim == 1
    w = np.atleast_2d(w)
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    w_sorted = w[:, order]
    pos_sorted = pos[order]
    pos_tie = np.add.reduceat(w_sorted * pos_sorted, starts, axis=1)
    neg_tie = np.add.reduceat(w_sorted * ~pos_sorted, starts, axis=1)
    neg_below = np.cumsum(neg_tie, axis=1) - neg_tie
    num = (pos_tie * (neg_below + 0.5 * neg_tie)).sum(axis=1)
    auc = _safe_div(num, pos_tie.sum(axis=1) * neg_tie.sum(axis=1), np.nan)
    return auc[0] if single else auc


def _confusion_weighted(y: np.ndarray, pred: np.ndarray, weights: np.ndarray, n_classes: int) -> np.ndarray:
    """Confusion matrices (B x C x C, rows = true) of all samples in one matrix product."""
    cell = np.zeros((y.shape[0], n_classes * n_classes))
    cell[np.arange(y.shape[0]), y * n_classes + pred] = 1.0
    return (weights @ cell).reshape(-1, n_classes, n_classes)


def _metrics_from_counts(cm: np.ndarray, auc: np.ndarray, names: list[str]) -> dict[tuple[str, str], np.ndarray]:
    """All non-confusion metrics from weighted confusion matrices and per-class AUCs (B rows)."""
    tp = np.diagonal(cm, axis1=1, axis2=2)
    support = cm.sum(axis=2)
    predicted = cm.sum(axis=1)
    total = cm.sum(axis=(1, 2))
    negatives = total[:, None] - support
    true_neg = negatives - (predicted - tp)
    sensitivity = _safe_div(tp, support, np.nan)
    specificity = _safe_div(true_neg, negatives, np.nan)
    precision = _safe_div(tp, predicted, 0.0)
    f1 = _safe_div(2.0 * tp, support + predicted, 0.0)
    macro_auc = auc[:, 1] if len(names) == 2 else _masked_mean(auc, ~np.isnan(auc))
    out: dict[tuple[str, str], np.ndarray] = {
        ("accuracy", ""): _safe_div(tp.sum(axis=1), total, np.nan),
        ("balanced_accuracy", ""): _masked_mean(sensitivity, support > 0),
        ("macro_f1", ""): _masked_mean(f1, (support + predicted) > 0),
        ("macro_auc", ""): macro_auc,
    }
    per_class = {"sensitivity": sensitivity, "specificity": specificity,
                 "precision": precision, "f1": f1, "auc": auc}
    for k, name in enumerate(names):
        for metric in PER_CLASS_METRICS:
            out[(metric, name)] = per_class[metric][:, k]
    return out


def weighted_metrics(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str],
                     weights: np.ndarray) -> dict[tuple[str, str], np.ndarray]:
    """Every metric of ``point_metrics`` (not the confusion rows) for each row of image weights.

    ``weights`` is B x N (e.g. bootstrap counts); integer weights give exactly the metrics of
    the data with each image repeated that many times. Returns {(metric, class_name): (B,)}.
    """
    y, p, names = _check_inputs(y_true, probs, classes)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if w.shape[1] != y.shape[0]:
        raise ValueError(f"weights must be B x {y.shape[0]} (one column per image), got {w.shape}")
    pred = p.argmax(axis=1)
    cm = _confusion_weighted(y, pred, w, len(names))
    auc = np.stack([weighted_auc(p[:, k], y == k, w) for k in range(len(names))], axis=1)
    return _metrics_from_counts(cm, auc, names)


# ------------------------------------------------------------------------------ public API


def _rows(values: dict[tuple[str, str], np.ndarray], cis: dict[tuple[str, str], tuple] | None,
          cm: np.ndarray, names: list[str]) -> list[MetricRow]:
    rows = []
    for key, value in values.items():
        low, high = cis[key] if cis else (None, None)
        rows.append(MetricRow(key[0], key[1], float(value[0]), low, high))
    for i, true in enumerate(names):
        for j, pred in enumerate(names):
            rows.append(MetricRow("confusion", f"{true}->{pred}", float(cm[i, j])))
    return rows


def point_metrics(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> list[MetricRow]:
    """Overall, per-class and confusion rows without CIs (conventions in the module docstring)."""
    y, p, names = _check_inputs(y_true, probs, classes)
    ones = np.ones((1, y.shape[0]))
    values = weighted_metrics(y, p, names, ones)
    cm = _confusion_weighted(y, p.argmax(axis=1), ones, len(names))[0]
    return _rows(values, None, cm, names)


def confusion_matrix(y_true: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """C x C counts, rows = true class, columns = predicted class (class indices in [0, n_classes))."""
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(pred, dtype=np.int64)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError(f"y_true and pred must be 1-D and the same length, got {y.shape} and {p.shape}")
    if y.size and (min(y.min(), p.min()) < 0 or max(y.max(), p.max()) >= n_classes):
        raise ValueError(f"class indices must lie in [0, {n_classes - 1}]")
    return _confusion_weighted(y, p, np.ones((1, y.size)), n_classes)[0].astype(np.int64)


def row_normalised(counts: np.ndarray) -> np.ndarray:
    """Each row of a confusion matrix divided by its sum (the share of a true class predicted as
    each class; the diagonal is the sensitivity); NaN for a class without images."""
    c = np.asarray(counts, dtype=np.float64)
    return _safe_div(c, c.sum(axis=1, keepdims=True), np.nan)


def _patient_counts(rng: np.random.Generator, n_patients: int, n_samples: int) -> np.ndarray:
    """How often each patient is drawn in each of ``n_samples`` resamples of size n_patients."""
    draws = rng.integers(0, n_patients, size=(n_samples, n_patients))
    offsets = (np.arange(n_samples) * n_patients)[:, None]
    flat = np.bincount((draws + offsets).ravel(), minlength=n_samples * n_patients)
    return flat.reshape(n_samples, n_patients)


def patient_weight_blocks(groups: Sequence[str], n_boot: int, seed: int):
    """The one patient resampler: blocks of at most _BLOCK rows of image weights, B x N in all (how
    often each image's patient is drawn in each resample of the patients, with replacement).
    The draws depend only on the seed and the sorted set of patient ids."""
    patient, n_patients = _patient_index(groups, len(groups))
    rng = np.random.default_rng(seed)
    for start in range(0, n_boot, _BLOCK):
        yield _patient_counts(rng, n_patients, min(_BLOCK, n_boot - start))[:, patient]


def patient_weights(groups: Sequence[str], n_boot: int, seed: int) -> np.ndarray:
    """All of `patient_weight_blocks` as one B x N array."""
    blocks = list(patient_weight_blocks(groups, n_boot, seed))
    return np.concatenate(blocks) if blocks else np.zeros((0, len(groups)), dtype=np.int64)


def _percentile_ci(samples: np.ndarray, alpha: float) -> tuple[float | None, float | None]:
    valid = samples[~np.isnan(samples)]
    if valid.size < 2:
        return None, None
    low, high = np.percentile(valid, [100.0 * alpha / 2, 100.0 * (1 - alpha / 2)])
    return float(low), float(high)


def metrics_with_ci(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str], groups: Sequence[str], *,
                    n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> list[MetricRow]:
    """``point_metrics`` rows with percentile CIs from resampling patients (``groups``).

    Confusion rows carry no CI. Deterministic for a given seed; the random draws depend only
    on the seed and the sorted set of patient ids, so repeating every image of every patient
    k times leaves the CIs unchanged (an image-level bootstrap would shrink them).
    """
    y, p, names = _check_inputs(y_true, probs, classes)
    _check_boot(n_boot, alpha)
    _, n_patients = _patient_index(groups, y.shape[0])
    blocks = [weighted_metrics(y, p, names, w) for w in patient_weight_blocks(groups, n_boot, seed)]
    samples = {key: np.concatenate([b[key] for b in blocks]) for key in blocks[0]}
    cis = {key: _percentile_ci(s, alpha) for key, s in samples.items()}
    ones = np.ones((1, y.shape[0]))
    values = weighted_metrics(y, p, names, ones)
    cm = _confusion_weighted(y, p.argmax(axis=1), ones, len(names))[0]
    log.debug("bootstrap: %d resamples over %d patients, %d images", n_boot, n_patients, y.shape[0])
    return _rows(values, cis, cm, names)


def bootstrap_mean_ci(values: np.ndarray, groups: Sequence[str], *, n_boot: int = 1000, seed: int = 0,
                      alpha: float = 0.05) -> tuple[float, float | None, float | None]:
    """Mean of per-image values (NaN ignored) with a patient-resampled percentile CI.

    Used for per-model means of CAM measures such as lung_mass, where images of one patient
    are just as correlated as for the classification metrics. All NaN -> (nan, None, None).
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    _check_boot(n_boot, alpha)
    patient, n_patients = _patient_index(groups, v.shape[0])
    valid = ~np.isnan(v)
    if not valid.any():
        return float("nan"), None, None
    # Per-patient sum and count of valid values: a resample's mean is counts @ sum / counts @ n.
    patient_sum = np.bincount(patient[valid], weights=v[valid], minlength=n_patients)
    patient_n = np.bincount(patient[valid], minlength=n_patients).astype(np.float64)
    rng = np.random.default_rng(seed)
    means = []
    for start in range(0, n_boot, _BLOCK):
        counts = _patient_counts(rng, n_patients, min(_BLOCK, n_boot - start)).astype(np.float64)
        means.append(_safe_div(counts @ patient_sum, counts @ patient_n, np.nan))
    low, high = _percentile_ci(np.concatenate(means), alpha)
    return float(v[valid].mean()), low, high


# ------------------------------------------------------------- a model scored on a subset of its classes

SET_METRICS = ("accuracy", "balanced_accuracy", "set_auc", "off_set_share")


def set_metric_values(y_true: np.ndarray, probs: np.ndarray, set_index: Sequence[int],
                      weights: np.ndarray) -> dict[str, np.ndarray]:
    """The rule for a model scored on a set whose classes are some of the model's own (an external
    set of 2 classes for a 3- or 4-class model), for each row of ``weights``:

    - accuracy: argmax over all of the model's classes equals the label;
    - balanced_accuracy: that accuracy averaged over the set's classes present;
    - set_auc: a 2-class set: AUC of p(the set's last class, e.g. covid) over the set's images;
      more classes: the mean one-vs-rest AUC of p(c) over the set's classes;
    - off_set_share: share of images sent to a class the set does not have.
    """
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    pred = p.argmax(axis=1)
    total = w.sum(axis=1)
    correct = (pred == y).astype(np.float64)
    recalls = np.stack([_safe_div((w * ((y == k) & (pred == k))).sum(1), (w * (y == k)).sum(1), np.nan)
                        for k in set_index], axis=1)
    present = np.stack([(w * (y == k)).sum(1) > 0 for k in set_index], axis=1)
    if len(set_index) == 2:
        positive = set_index[-1]
        auc = weighted_auc(p[:, positive], y == positive, w)
    else:
        aucs = np.stack([weighted_auc(p[:, k], y == k, w) for k in set_index], axis=1)
        auc = _masked_mean(aucs, ~np.isnan(aucs))
    return {"accuracy": _safe_div(w @ correct, total, np.nan),
            "balanced_accuracy": _masked_mean(recalls, present),
            "set_auc": auc,
            "off_set_share": _safe_div(w @ (~np.isin(pred, list(set_index))).astype(np.float64), total, np.nan)}


def set_metrics_with_ci(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str], set_classes: Sequence[str],
                        groups: Sequence[str], *, n_boot: int = 1000, seed: int = 0,
                        alpha: float = 0.05) -> list[MetricRow]:
    """``set_metric_values`` (SET_METRICS) with patient-bootstrap percentile CIs; ``y_true`` indexes
    ``classes`` (the model's), every label being one of ``set_classes``."""
    y, p, names = _check_inputs(y_true, probs, classes)
    missing = [c for c in set_classes if c not in names]
    if missing:
        raise ValueError(f"set classes {missing} are not among the model's classes {names}")
    set_index = [names.index(c) for c in set_classes]
    if not np.isin(y, set_index).all():
        raise ValueError("every label must be one of the set's classes")
    _check_boot(n_boot, alpha)
    _patient_index(groups, y.shape[0])  # one patient id per image, checked
    blocks = [set_metric_values(y, p, set_index, w) for w in patient_weight_blocks(groups, n_boot, seed)]
    values = set_metric_values(y, p, set_index, np.ones((1, y.shape[0])))
    rows = []
    for name in SET_METRICS:
        low, high = _percentile_ci(np.concatenate([b[name] for b in blocks]), alpha) if blocks else (None, None)
        rows.append(MetricRow(name, "", float(values[name][0]), low, high))
    return rows
