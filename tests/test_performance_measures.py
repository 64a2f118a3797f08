"""Calibration (reliability bins, ECE), confusion matrices and per-source performance, checked by hand
and against scikit-learn; the dashboard's CSV/Parquet and PNG downloads parse back."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import confusion_matrix as sk_confusion
from sklearn.metrics import roc_auc_score

from benchmark.analysis.calibration import reliability, reliability_of, top_label
from benchmark.analysis.performance import (
    confusion_frame,
    per_source,
    performance,
    reliability_frame,
    scored,
)
from benchmark.analysis.roc import roc_curves
from benchmark.training.metrics import confusion_matrix, row_normalised
from dashboard import downloads, render

# ----------------------------------------------------------------------------- calibration


def test_reliability_bins_and_ece_by_hand():
    conf = np.array([0.95, 0.85, 0.75, 0.65, 0.55, 0.92])
    correct = np.array([1, 0, 1, 1, 0, 1], bool)
    rel = reliability(conf, correct, n_bins=5)  # bins (0, .2], (.2, .4], (.4, .6], (.6, .8], (.8, 1]
    assert rel.counts.tolist() == [0, 0, 1, 2, 3] and rel.n == 6
    assert np.isnan(rel.confidence[:2]).all() and np.isnan(rel.accuracy[:2]).all()
    assert rel.confidence[2:] == pytest.approx([0.55, 0.70, (0.95 + 0.85 + 0.92) / 3])
    assert rel.accuracy[2:] == pytest.approx([0.0, 1.0, 2 / 3])
    # ECE = (1 * |0 - .55| + 2 * |1 - .70| + 3 * |2/3 - .9067|) / 6 = (.55 + .60 + .72) / 6
    assert rel.ece == pytest.approx(1.87 / 6)
    assert rel.mce == pytest.approx(0.55)
    assert rel.gap[4] == pytest.approx(2 / 3 - 2.72 / 3)  # negative: over-confident


def test_bins_are_right_closed_and_zero_and_one_are_kept():
    rel = reliability(np.array([0.0, 0.2, 0.3, 0.6, 1.0]), np.ones(5, bool), n_bins=5)
    # 0 and 0.2 in (0, .2]; 0.3 in (.2, .4]; 0.6 on an edge goes to the bin below, (.4, .6]; 1.0 in the last
    assert rel.counts.tolist() == [2, 1, 1, 0, 1]
    ten = reliability(np.array([0.3, 0.7]), np.ones(2, bool), n_bins=10)  # 0.3 * 10 is not exactly 3 in floats
    assert ten.counts[2] == 1 and ten.counts[6] == 1


def test_ece_is_zero_when_confidence_matches_accuracy():
    conf = np.array([0.75] * 4 + [1.0] * 3)
    correct = np.array([1, 1, 1, 0, 1, 1, 1], bool)
    assert reliability(conf, correct, n_bins=10).ece == pytest.approx(0.0, abs=1e-12)
    assert reliability(np.full(5, 0.9), np.zeros(5, bool)).ece == pytest.approx(0.9)


def test_top_label_uses_the_argmax_first_class_on_a_tie():
    probs = np.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    conf, correct = top_label(np.array([0, 1, 0]), probs)
    assert conf.tolist() == [0.5, 0.5, 0.6] and correct.tolist() == [True, False, True]
    assert reliability_of(np.array([0, 1, 0]), probs, n_bins=2).counts.tolist() == [2, 1]


@pytest.mark.parametrize("conf, correct, bins", [
    (np.array([0.5, 1.2]), np.array([1, 1], bool), 10),
    (np.array([0.5, np.nan]), np.array([1, 1], bool), 10),
    (np.array([0.5]), np.array([1, 1], bool), 10),
    (np.array([0.5]), np.array([1], bool), 0),
])
def test_reliability_rejects_bad_input(conf, correct, bins):
    with pytest.raises(ValueError):
        reliability(conf, correct, n_bins=bins)


# ----------------------------------------------------------------------------- confusion


def test_confusion_matrix_matches_sklearn_and_rows_normalise():
    rng = np.random.default_rng(3)
    y, pred = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    cm = confusion_matrix(y, pred, 3)
    assert cm.tolist() == sk_confusion(y, pred, labels=[0, 1, 2]).tolist()
    assert row_normalised(cm).sum(axis=1) == pytest.approx(np.ones(3))
    # a class without images has a NaN row (not 0 %: nothing was measured), a never-predicted class a 0 column
    cm = confusion_matrix(np.array([0, 0, 1]), np.array([0, 1, 1]), 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 0]]
    share = row_normalised(cm)
    assert share[0].tolist() == [0.5, 0.5, 0.0] and np.isnan(share[2]).all()
    with pytest.raises(ValueError):
        confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)


# ----------------------------------------------------------------------------- a run's performance


def _frame(n: int, seed: int, accuracy: float = 0.8) -> pd.DataFrame:
    """Prediction rows of a 3-class run; source 'a' holds only class 2 (the shortcut's shape)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    pred = np.where(rng.random(n) < accuracy, labels, (labels + 1) % 3)
    probs = rng.dirichlet(np.ones(3), n) * 0.4
    probs[np.arange(n), pred] += 0.6
    return pd.DataFrame({"image_id": [f"i{i}" for i in range(n)], "label": np.array(["x", "y", "z"])[labels],
                         "probs": list(probs), "patient_id": [f"p{i // 2}" for i in range(n)],
                         "source": np.where(labels == 2, "a", "b")})


def test_one_run_agrees_with_roc_confusion_and_calibration():
    rows = _frame(60, 0)
    run = scored(rows, ["x", "y", "z"], run_id="r0", split="test")
    assert run.labels.tolist() == (np.arange(60) % 3).tolist() and run.patients[:3] == ("p0", "p0", "p1")
    perf = performance([run], n_bins=10, n_boot=50)
    probs = np.stack(rows.probs)
    assert perf.confusion.tolist() == sk_confusion(run.labels, probs.argmax(1)).tolist()
    assert perf.reliability.ece == pytest.approx(reliability_of(run.labels, probs).ece)
    assert perf.ece_per_run == {"r0": pytest.approx(perf.reliability.ece)}
    for k, cls in enumerate(["x", "y", "z"]):
        assert perf.roc[cls].auc == pytest.approx(roc_auc_score(run.labels == k, probs[:, k]))
        assert perf.roc[cls].tpr == pytest.approx(roc_curves(run.labels, probs, list(run.patients), n_boot=50)[k].tpr)
    table = confusion_frame(perf)
    assert len(table) == 9 and table["count"].sum() == 60
    assert table.groupby("true_class")["row_share"].sum().tolist() == pytest.approx([1, 1, 1])
    bins = reliability_frame(perf.reliability)
    assert len(bins) == 10 and bins.n_images.sum() == 60


def test_seed_group_pools_confusion_and_calibration_and_averages_roc():
    runs = [scored(_frame(30, s), ["x", "y", "z"], run_id=f"r{s}", split="test", seed=s) for s in range(3)]
    group = performance(runs, n_bins=10, n_boot=40)
    alone = [performance([r], n_bins=10, n_boot=40) for r in runs]
    assert (group.confusion == sum(a.confusion for a in alone)).all()
    assert group.ece_per_run == {f"r{s}": pytest.approx(alone[s].reliability.ece) for s in range(3)}
    pooled = reliability(np.concatenate([top_label(r.labels, r.probs)[0] for r in runs]),
                         np.concatenate([top_label(r.labels, r.probs)[1] for r in runs]))
    assert group.reliability.ece == pytest.approx(pooled.ece) and group.reliability.n == 90
    assert group.roc["y"].auc == pytest.approx(np.mean([a.roc["y"].auc for a in alone]))
    assert group.n_runs == 3 and group.n_images == 30


def test_stored_probabilities_must_match_the_classes():
    with pytest.raises(ValueError, match="3 columns for 2 classes"):
        scored(_frame(6, 0), ["x", "y"], run_id="r", split="test")
    # labels outside the class list are left out, not mis-indexed
    run = scored(_frame(6, 0), ["x", "y", "w"], run_id="r", split="test")
    assert run.labels.tolist() == [0, 1, 0, 1] and run.probs.shape == (4, 3)


def test_per_source_accuracy_and_auc_by_hand():
    rows = _frame(60, 1)
    run = scored(rows, ["x", "y", "z"], run_id="r0", split="test")
    table = per_source([run], n_boot=100)
    assert table.columns.tolist()[:4] == ["split", "source", "n_images", "class_counts"]
    correct = np.stack(rows.probs).argmax(1) == run.labels
    for source in ("a", "b"):
        row = table[table.source == source].iloc[0]
        sel = rows.source.to_numpy() == source
        assert row.n_images == sel.sum() and row.accuracy == pytest.approx(correct[sel].mean())
        assert row.accuracy_ci_low <= row.accuracy <= row.accuracy_ci_high
    a = table[table.source == "a"].iloc[0]
    assert np.isnan(a.macro_auc) and a.class_counts == "z 20"  # one class only: nothing to rank
    b = table[table.source == "b"].iloc[0]
    probs = np.stack(rows.probs)[rows.source.to_numpy() == "b"]
    y = run.labels[rows.source.to_numpy() == "b"]
    # macro AUC over the classes with positives and negatives there: x and y (z has no positives)
    expected = np.mean([roc_auc_score(y == k, probs[:, k]) for k in (0, 1)])
    assert b.macro_auc == pytest.approx(expected)


def test_per_source_averages_seeds_and_orders_test_first():
    runs = [scored(_frame(30, s), ["x", "y", "z"], run_id=f"r{s}", split=split, seed=s)
            for s in range(2) for split in ("external:other", "test")]
    table = per_source(runs, n_boot=50)
    assert table.split.tolist() == ["test", "test", "external:other", "external:other"]
    assert (table.n_seeds == 2).all() and table.accuracy_sd.notna().all()
    one = per_source([runs[1]], n_boot=50)
    other = per_source([runs[3]], n_boot=50)
    assert table.accuracy.iloc[0] == pytest.approx((one.accuracy.iloc[0] + other.accuracy.iloc[0]) / 2)


# ----------------------------------------------------------------------------- downloads


def test_csv_and_parquet_parse_back_to_the_frame():
    frame = pd.DataFrame({"run_id": ["a", "b", "c"], "accuracy": [0.91234567891, np.nan, 1 / 3],
                          "n": [1, 2, 3], "ok": [True, False, True], "probs": [[0.1, 0.9], [0.5, 0.5], [1.0, 0.0]],
                          "mixed": [1, "two", None]})
    back = pd.read_csv(io.BytesIO(downloads.csv_bytes(frame)))
    pd.testing.assert_frame_equal(back.drop(columns=["probs", "mixed"]), frame.drop(columns=["probs", "mixed"]),
                                  check_dtype=False)
    parquet = pd.read_parquet(io.BytesIO(downloads.parquet_bytes(frame)))
    pd.testing.assert_frame_equal(parquet.drop(columns=["probs", "mixed"]), frame.drop(columns=["probs", "mixed"]))
    assert [list(p) for p in parquet.probs] == [list(p) for p in frame.probs]
    assert parquet.mixed[:2].tolist() == ["1", "two"] and pd.isna(parquet.mixed[2])  # mixed types: kept as text
    assert downloads.file_stem("phantom clean/resnet18:test") == "phantom-clean-resnet18-test"


def test_comparison_png_puts_the_tiles_side_by_side():
    rgb = np.zeros((40, 30, 3), np.uint8)
    rgb[..., 0] = 255
    png = render.comparison_png([("X-ray", rgb, ["true covid"]), ("resnet18", rgb, ["pred covid", "lung 0.2"]),
                                 ("vgg16", rgb[:, :, 0], [])], columns=2, title="a title")
    image = Image.open(io.BytesIO(png))
    side = render.TILE_MIN_SIDE  # a 40 px picture is scaled up to it, keeping its aspect (256 x 192)
    assert image.format == "PNG" and image.width == 2 * (side + 10) + 10 and image.height > 2 * side
    pixels = np.asarray(image.convert("RGB"))
    assert (pixels == [255, 0, 0]).all(axis=2).sum() >= 2 * side * (side * 30 // 40) * 0.9  # both red tiles
    with pytest.raises(ValueError):
        render.comparison_png([])
