"""Metrics agree with scikit-learn; bootstrap CIs resample patients, not images."""
from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from benchmark.training.metrics import (
    MetricRow,
    bootstrap_mean_ci,
    metrics_with_ci,
    point_metrics,
    weighted_auc,
    weighted_metrics,
)


def _fake_predictions(n: int, n_classes: int, seed: int, signal: float = 1.0):
    """Probabilities that favour the true class by ``signal`` (logits), so metrics are neither 0 nor 1."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    logits = rng.normal(size=(n, n_classes))
    logits[np.arange(n), y] += signal
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, probs


def _by_key(rows: list[MetricRow]) -> dict[tuple[str, str], MetricRow]:
    return {(r.metric, r.class_name): r for r in rows}


def _width(row: MetricRow) -> float:
    return row.ci_high - row.ci_low


@pytest.mark.parametrize("n_classes", [2, 3])
def test_point_metrics_match_sklearn(n_classes):
    y, probs = _fake_predictions(300, n_classes, seed=n_classes)
    classes = [f"c{k}" for k in range(n_classes)]
    m = _by_key(point_metrics(y, probs, classes))
    pred = probs.argmax(axis=1)
    labels = list(range(n_classes))

    assert m[("accuracy", "")].value == pytest.approx(accuracy_score(y, pred))
    assert m[("balanced_accuracy", "")].value == pytest.approx(balanced_accuracy_score(y, pred))
    assert m[("macro_f1", "")].value == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
    expected_auc = (roc_auc_score(y, probs[:, 1]) if n_classes == 2
                    else roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert m[("macro_auc", "")].value == pytest.approx(expected_auc)

    prec, rec, f1, _ = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    cm = confusion_matrix(y, pred, labels=labels)
    for k, name in enumerate(classes):
        assert m[("precision", name)].value == pytest.approx(prec[k])
        assert m[("sensitivity", name)].value == pytest.approx(rec[k])
        assert m[("f1", name)].value == pytest.approx(f1[k])
        assert m[("auc", name)].value == pytest.approx(roc_auc_score(y == k, probs[:, k]))
        for j, other in enumerate(classes):
            assert m[("confusion", f"{name}->{other}")].value == cm[k, j]
    assert all(r.ci_low is None and r.ci_high is None for r in m.values())


def test_specificity_by_hand():
    # true:  a a a b b c ; pred: a b a b a c
    y = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([0, 1, 0, 1, 0, 2])
    probs = np.eye(3)[pred] * 0.8 + 0.2 / 3
    m = _by_key(point_metrics(y, probs, ["a", "b", "c"]))
    # a: negatives are the 3 b/c images, one (b predicted a) is a false positive -> 2/3
    assert m[("specificity", "a")].value == pytest.approx(2 / 3)
    # b: negatives are the 4 a/c images, one (a predicted b) is a false positive -> 3/4
    assert m[("specificity", "b")].value == pytest.approx(3 / 4)
    # c: 5 negatives, none predicted c -> 1
    assert m[("specificity", "c")].value == pytest.approx(1.0)
    assert m[("precision", "a")].value == pytest.approx(2 / 3)
    assert m[("sensitivity", "b")].value == pytest.approx(1 / 2)


def test_specificity_without_negatives_is_nan_and_precision_of_unpredicted_class_is_zero():
    y = np.array([1, 1, 1])
    probs = np.array([[0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    m = _by_key(point_metrics(y, probs, ["neg", "pos"]))
    assert math.isnan(m[("specificity", "pos")].value)
    assert math.isnan(m[("auc", "pos")].value)
    assert math.isnan(m[("sensitivity", "neg")].value)
    assert m[("precision", "neg")].value == 0.0  # predicted once, never right
    assert m[("specificity", "neg")].value == pytest.approx(2 / 3)


def test_weighted_auc_equals_sklearn_unweighted_with_ties():
    rng = np.random.default_rng(1)
    scores = np.round(rng.random(200), 1)  # many tied scores
    positive = rng.random(200) < 0.4
    ours = weighted_auc(scores, positive, np.ones(200))
    assert ours == pytest.approx(roc_auc_score(positive, scores))


def test_weighted_auc_equals_sklearn_with_sample_weight():
    rng = np.random.default_rng(2)
    scores = np.round(rng.random(150), 2)
    positive = rng.random(150) < 0.5
    weights = np.stack([rng.integers(0, 4, 150).astype(float), rng.random(150) * 3])
    ours = weighted_auc(scores, positive, weights)
    assert ours.shape == (2,)
    for b in range(2):
        expected = roc_auc_score(positive, scores, sample_weight=weights[b])
        assert ours[b] == pytest.approx(expected)


def test_weighted_auc_nan_without_positives():
    assert math.isnan(weighted_auc(np.array([0.1, 0.9]), np.array([False, False]), np.ones(2)))


def test_integer_weights_equal_repeated_images():
    """A bootstrap sample scored by weights equals scikit-learn-checked metrics of the repeated data."""
    y, probs = _fake_predictions(80, 3, seed=3)
    classes = ["x", "y", "z"]
    counts = np.random.default_rng(4).integers(0, 3, size=(5, 80))
    batch = weighted_metrics(y, probs, classes, counts)
    for b in range(counts.shape[0]):
        idx = np.repeat(np.arange(80), counts[b])
        expected = _by_key(point_metrics(y[idx], probs[idx], classes))
        for key, samples in batch.items():
            np.testing.assert_allclose(samples[b], expected[key].value, rtol=1e-12, equal_nan=True)


def _patients(n_patients: int, images_per_patient: int, seed: int):
    """Realistic set: several images per patient sharing the patient's label."""
    y_pat, _ = _fake_predictions(n_patients, 3, seed)
    y = np.repeat(y_pat, images_per_patient)
    rng = np.random.default_rng(seed + 100)
    logits = rng.normal(size=(y.size, 3))
    logits[np.arange(y.size), y] += 1.2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    groups = [f"pat{i}" for i in np.repeat(np.arange(n_patients), images_per_patient)]
    return y, probs, groups


def test_ci_contains_point_estimate_and_confusion_has_no_ci():
    y, probs, groups = _patients(150, 2, seed=5)
    rows = metrics_with_ci(y, probs, ["a", "b", "c"], groups, n_boot=300, seed=0)
    checked = 0
    for r in rows:
        if r.metric == "confusion":
            assert r.ci_low is None and r.ci_high is None
            continue
        assert r.ci_low is not None and r.ci_high is not None, r
        assert r.ci_low <= r.value <= r.ci_high, r
        assert r.ci_low < r.ci_high, r
        checked += 1
    assert checked == 4 + 5 * 3


def test_ci_narrower_with_more_patients():
    def ci(n_patients):
        y, probs, groups = _patients(n_patients, 2, seed=6)
        return _by_key(metrics_with_ci(y, probs, ["a", "b", "c"], groups, n_boot=300))

    small, large = ci(40), ci(640)
    for key in [("accuracy", ""), ("macro_auc", ""), ("sensitivity", "a")]:
        assert _width(large[key]) < 0.5 * _width(small[key]), key


def test_accuracy_ci_matches_binomial_width_for_one_image_per_patient():
    y, probs = _fake_predictions(400, 2, seed=7)
    groups = [f"p{i}" for i in range(400)]
    row = _by_key(metrics_with_ci(y, probs, ["n", "p"], groups, n_boot=2000, seed=1))[("accuracy", "")]
    acc = row.value
    normal_width = 2 * 1.96 * math.sqrt(acc * (1 - acc) / 400)
    assert _width(row) == pytest.approx(normal_width, rel=0.15)


def test_ci_deterministic_per_seed():
    y, probs, groups = _patients(60, 3, seed=8)
    a = metrics_with_ci(y, probs, ["a", "b", "c"], groups, n_boot=200, seed=11)
    b = metrics_with_ci(y, probs, ["a", "b", "c"], groups, n_boot=200, seed=11)
    c = metrics_with_ci(y, probs, ["a", "b", "c"], groups, n_boot=200, seed=12)
    assert a == b
    assert a != c


def test_duplicating_each_patients_images_leaves_ci_unchanged_image_bootstrap_shrinks():
    y, probs, groups = _patients(80, 1, seed=9)
    k = 4
    y_dup, probs_dup = np.tile(y, k), np.tile(probs, (k, 1))
    groups_dup = list(groups) * k
    classes = ["a", "b", "c"]
    base = _by_key(metrics_with_ci(y, probs, classes, groups, n_boot=400, seed=3))
    dup = _by_key(metrics_with_ci(y_dup, probs_dup, classes, groups_dup, n_boot=400, seed=3))
    per_image = [f"img{i}" for i in range(y_dup.size)]
    image_level = _by_key(metrics_with_ci(y_dup, probs_dup, classes, per_image, n_boot=400, seed=3))
    for key in [("accuracy", ""), ("macro_f1", ""), ("macro_auc", ""), ("specificity", "b")]:
        assert dup[key].value == pytest.approx(base[key].value)
        assert dup[key].ci_low == pytest.approx(base[key].ci_low)
        assert dup[key].ci_high == pytest.approx(base[key].ci_high)
        assert _width(image_level[key]) < 0.7 * _width(base[key]), key


def test_dominant_patient_widens_ci_over_image_level_bootstrap():
    rng = np.random.default_rng(10)
    # 30 patients with one image each, about half right; one patient with 150 images, all right.
    y = np.concatenate([rng.integers(0, 2, 30), np.ones(150, dtype=int)])
    pred = np.concatenate([np.where(rng.random(30) < 0.5, y[:30], 1 - y[:30]), np.ones(150, dtype=int)])
    probs = np.where(np.eye(2)[pred] == 1, 0.7, 0.3)
    patient_ids = [f"p{i}" for i in range(30)] + ["dominant"] * 150
    image_ids = [f"img{i}" for i in range(180)]
    by_patient = _by_key(metrics_with_ci(y, probs, ["n", "p"], patient_ids, n_boot=500))[("accuracy", "")]
    by_image = _by_key(metrics_with_ci(y, probs, ["n", "p"], image_ids, n_boot=500))[("accuracy", "")]
    assert by_patient.value == by_image.value
    assert _width(by_patient) > 3 * _width(by_image)


def test_perfect_predictions_give_accuracy_one_with_ci_one():
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 2])
    probs = np.eye(3)[y] * 0.9 + 0.1 / 3
    groups = ["a", "a", "b", "c", "d", "e", "f", "g", "g", "h"]
    m = _by_key(metrics_with_ci(y, probs, ["a", "b", "c"], groups, n_boot=200))
    for metric in ["accuracy", "balanced_accuracy", "macro_f1"]:
        assert (m[(metric, "")].value, m[(metric, "")].ci_low, m[(metric, "")].ci_high) == (1.0, 1.0, 1.0)
    assert m[("macro_auc", "")].ci_low == 1.0


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_class_absent_from_test_set_does_not_crash():
    y, probs = _fake_predictions(120, 3, seed=12)
    keep = y != 2
    y, probs = y[keep], probs[keep]
    groups = [f"p{i // 2}" for i in range(y.size)]
    m = _by_key(metrics_with_ci(y, probs, ["a", "b", "c"], groups, n_boot=200))
    assert math.isnan(m[("auc", "c")].value) and m[("auc", "c")].ci_low is None
    assert math.isnan(m[("sensitivity", "c")].value) and m[("sensitivity", "c")].ci_high is None
    present_auc = [roc_auc_score(y == k, probs[:, k]) for k in (0, 1)]
    assert m[("macro_auc", "")].value == pytest.approx(np.mean(present_auc))
    pred = probs.argmax(axis=1)
    assert m[("balanced_accuracy", "")].value == pytest.approx(balanced_accuracy_score(y, pred))
    assert m[("macro_f1", "")].value == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
    assert m[("specificity", "c")].ci_low is not None
    assert m[("macro_auc", "")].ci_low <= m[("macro_auc", "")].value <= m[("macro_auc", "")].ci_high


def test_bootstrap_mean_ci_resamples_patients_and_ignores_nan():
    rng = np.random.default_rng(13)
    values = rng.random(200)
    values[::17] = np.nan
    groups = [f"p{i // 4}" for i in range(200)]
    mean, low, high = bootstrap_mean_ci(values, groups, n_boot=500, seed=2)
    assert mean == pytest.approx(np.nanmean(values))
    assert low < mean < high
    assert bootstrap_mean_ci(values, groups, n_boot=500, seed=2) == (mean, low, high)
    # every image of every patient repeated: same CI; as images: narrower
    dup = bootstrap_mean_ci(np.tile(values, 3), groups * 3, n_boot=500, seed=2)
    assert dup == pytest.approx((mean, low, high))
    per_image = bootstrap_mean_ci(np.tile(values, 3), [f"i{i}" for i in range(600)], n_boot=500, seed=2)
    assert per_image[2] - per_image[1] < 0.8 * (high - low)


def test_bootstrap_mean_ci_all_nan_and_single_patient():
    assert math.isnan(bootstrap_mean_ci(np.full(4, np.nan), ["a"] * 4)[0])
    assert bootstrap_mean_ci(np.full(4, np.nan), ["a"] * 4)[1:] == (None, None)
    mean, low, high = bootstrap_mean_ci(np.array([0.2, 0.4]), ["a", "a"], n_boot=50)
    assert (mean, low, high) == pytest.approx((0.3, 0.3, 0.3))


@pytest.mark.parametrize("bad", [
    dict(groups=["a", "b"]),                      # wrong length
    dict(probs=np.ones((4, 2)) / 2),              # wrong number of columns
    dict(y_true=np.array([0, 1, 3, 0])),          # class index out of range
    dict(y_true=np.array([0.0, 1.0, 2.0, 0.0])),  # not integer indices
    dict(n_boot=0),
    dict(alpha=1.5),
])
def test_invalid_inputs_raise_value_error(bad):
    kwargs = dict(y_true=np.array([0, 1, 2, 0]), probs=np.full((4, 3), 1 / 3), classes=["a", "b", "c"],
                  groups=["a", "b", "c", "d"], n_boot=10)
    kwargs.update(bad)
    with pytest.raises(ValueError):
        metrics_with_ci(**kwargs)

