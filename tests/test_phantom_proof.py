"""The measure measures, on data whose truth we know.

phantom-shortcut: only an out-of-lung marker tells the class. A trained resnet18 keeps its
accuracy with the lungs removed, falls towards chance with everything but the lungs removed, and
its CAMs lie mostly off the lungs.

phantom-clean: only the lungs tell the class. The same architecture falls to chance with the
lungs removed, its CAMs lie mostly on the lungs, and no cluster of its maps is flagged.

phantom-half: half the images carry the class marker and no lung pattern, the other half the lung
pattern and no marker, so the model must read the marker on the first and the lungs on the second.
The clusters of its maps separate the images with the marker from those without it.

Both are scored with the audit's default fine map, `hirescam@stride16` (resnet18's layer3). The
last block's Grad-CAM is stored too but not asserted on: at these sizes it is a 4 x 4 to 7 x 7
map whose upsampling caps lung_mass at 0.50 to 0.72, and in practice it did not separate the two
models (bench/RESULTS.md, "Proving the measure").
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import adjusted_rand_score

from benchmark.cli import main
from benchmark.store import reader
from tests.conftest import SHORTCUT_RUN

pytestmark = pytest.mark.slow  # trains resnet18 for minutes

FINE = "hirescam@stride16"
# Sizes: the shortcut is learnt at once; the lung patterns need enough pixels and images.
SHORTCUT = SHORTCUT_RUN  # the shared phantom-shortcut run's sizes; phantom-half uses them too
# 192 px, not the bench's 224: 27% fewer pixels for the suite's longest test, with the same outcome.
# 480 images x 5 epochs in batches of 16, not 600 x 8 in 32s: twice the steps per epoch learn the lungs
# sooner, so the test is faster and further from its bound (the sizes tried and what each gave:
# bench/RESULTS.md, "The suite's longest test").
CLEAN = {"n": 480, "size": 192, "epochs": 5, "batch": 16}


def _run(tmp_path, preset: str, *, n: int, size: int, epochs: int, batch: int) -> dict:
    db = tmp_path / f"{preset}.duckdb"
    assert main(["run", "--data", preset, "--n-phantom", str(n), "--models", "resnet18",
                 "--image-size", str(size), "--epochs", str(epochs), "--batch-size", str(batch),
                 "--device", "cpu", "--no-progress",
                 "--cam-methods", f"gradcam,{FINE}", "--faithfulness-sample", "0", "--db", str(db),
                 "--checkpoint-dir", str(tmp_path / "ck")]) == 0
    return _read(db, preset)


def _read(db, preset: str) -> dict:
    with reader(db) as con:
        probes = dict(con.execute("SELECT probe, value FROM probes WHERE metric = 'accuracy'").fetchall())
        focus = {m: (lm, ceil, mm) for m, lm, ceil, mm in con.execute(
            "SELECT method, avg(lung_mass), avg(lung_mass_ceiling), avg(marker_mass) FROM cams "
            "WHERE target_kind = 'pred' GROUP BY method").fetchall()}
        unmeasured = con.execute("SELECT count(*) FROM cams WHERE method = ? AND lung_mass IS NULL",
                                 [FINE]).fetchone()[0]
        clusters = con.execute("SELECT class_name, cluster, n_images, class_share, lung_focus, corner_share, "
                               "border_share, flagged FROM cam_clusters WHERE method = ? AND split = 'test' "
                               "ORDER BY class_name, cluster", [FINE]).df()
        members = con.execute("SELECT m.class_name, m.cluster, i.marker_mask_path "
                              "FROM cam_cluster_members m JOIN images i USING (image_id) "
                              "WHERE m.method = ? AND m.split = 'test'", [FINE]).df()
    # the planted truth: does the image carry the marker (its exact mask, as the generator drew it)
    members["marker"] = [bool(np.asarray(Image.open(p)).any()) for p in members.marker_mask_path]
    assert unmeasured == 0  # every map was measured (the phantom's masks are exact)
    print(preset, probes, focus)  # the numbers behind bench/RESULTS.md's CI row (pytest -s)
    print(clusters.to_string())
    return {"probes": probes, "focus": focus, "clusters": clusters, "members": members}


def test_shortcut_model_looks_off_the_lungs_and_survives_lung_removal(shortcut_run):
    r = _read(shortcut_run / "results.duckdb", "phantom-shortcut")  # SHORTCUT's sizes (tests/conftest.py)
    probes, (lung_mass, ceiling, marker_mass) = r["probes"], r["focus"][FINE]
    assert probes["intact"] >= 0.9
    assert probes["lungs_removed"] >= 0.9   # the lungs carry nothing it needs
    assert probes["lungs_only"] <= 0.6      # without the marker region: towards chance (1/3)
    assert lung_mass < 0.4
    assert ceiling > 0.6                    # low because of the model, not because the map is coarse
    assert marker_mass > 0
    # Every image is decided by the marker, so most images are in flagged clusters. Not every class
    # need be: a three-class model can call "normal" from the other two markers' absence, and its
    # normal maps then spread over the image rather than on the normal marker (lung focus 0.58-0.67
    # where the covid and pneumonia clusters had 0.15 and 0.48).
    clusters = r["clusters"]
    in_flagged = clusters[clusters.flagged].groupby("class_name").n_images.sum()
    assert in_flagged.sum() >= 0.5 * clusters.n_images.sum(), clusters
    assert (in_flagged >= 0.5 * clusters.groupby("class_name").n_images.sum()[in_flagged.index]).sum() >= 2, clusters


def test_clean_model_looks_at_the_lungs_and_falls_to_chance_without_them(tmp_path, cache_env):
    r = _run(tmp_path, "phantom-clean", **CLEAN)
    probes, (lung_mass, ceiling, marker_mass) = r["probes"], r["focus"][FINE]
    assert probes["intact"] >= 0.9
    assert probes["lungs_removed"] <= 0.45  # chance is 1/3
    assert lung_mass > 0.6
    assert ceiling > 0.8                    # a stride-16 map (12 x 12 at 192 px) can score high
    assert marker_mass is None              # phantom-clean has no marker to measure against
    assert not r["clusters"].empty and not r["clusters"].flagged.any()  # no strategy off the lungs


def test_clusters_separate_the_images_read_by_the_marker(tmp_path, cache_env):
    r = _run(tmp_path, "phantom-half", **SHORTCUT)
    assert r["probes"]["intact"] >= 0.9
    members = r["members"]
    scores = {}
    for class_name, group in members.groupby("class_name"):
        scores[class_name] = adjusted_rand_score(group.marker.astype(int), group.cluster)
    print("adjusted Rand index per predicted class:", scores)
    assert all(g.marker.nunique() == 2 for _, g in members.groupby("class_name"))  # both kinds in every class
    assert np.mean(list(scores.values())) >= 0.8 and min(scores.values()) >= 0.6, scores
