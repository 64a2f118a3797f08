"""Every registered architecture through the whole pipeline on real X-rays, at its own input size.

One training step (1 epoch, one batch) on a few pack images, then every default CAM method, the
faithfulness scores, the shortcut probes and the store, all through `benchmark run`; then the
dashboard pages on the database that holds every architecture's run.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from benchmark.cams import DEFAULT_CAM_METHODS
from benchmark.cli import main
from benchmark.models import get_spec, list_models
from benchmark.store import queries, reader
from tests.fixtures_db import open_page, texts

pytestmark = pytest.mark.slow

# 3 images per class (whole patients) is the smallest cap that leaves every split an image: 17 train,
# 2 val, 2 test (one Cohen covid image with a V7 lung mask, one Kermany normal image without one).
MAX_PER_CLASS = "3"
FINE = "hirescam@stride16"
# the stride-16 grid as each net rounds it (valid convolutions and ceil-mode pools); the rest: input / 16
STRIDE16_SIDE = {"alexnet": 13, "squeezenet1_1": 13, "inception_v3": 17, "inception_resnet_v2": 17, "xception": 19}
PHASES = ("decode", "train", "eval", "cam", "faithfulness", "probe", "store")


@pytest.fixture(scope="module")
def arch_dir(tmp_path_factory):
    """One results DB (and checkpoint folder) shared by every architecture of the module."""
    return tmp_path_factory.mktemp("architectures")


def run_architecture(name: str, folder, cxr_root) -> int:
    return main(["run", "--data", "cohen-kermany", "--data-root", str(cxr_root), "--models", name,
                 "--epochs", "1", "--max-per-class", MAX_PER_CLASS, "--faithfulness-sample", "1", "--n-boot", "50",
                 "--sanity-sample", "1",  # ROAD and the CAM sanity check on one image each: they run, cheaply
                 "--device", "cpu", "--no-progress", "--db", str(folder / "r.duckdb"),
                 "--checkpoint-dir", str(folder / "ck"),
                 # no lung segmenter: only ground-truth masks, whatever is trained in the working folder
                 "--segmenter", str(folder / "no-segmenter" / "lung_unet")])


@pytest.mark.parametrize("name", list_models())
def test_architecture_through_the_pipeline(name, arch_dir, cxr_root, cache_env):
    spec = get_spec(name)
    assert run_architecture(name, arch_dir, cxr_root) == 0
    with reader(arch_dir / "r.duckdb") as con:
        run = con.execute("SELECT * FROM runs WHERE model = ?", [name]).df()
        assert len(run) == 1
        run = run.iloc[0]
        test = con.execute("SELECT image_id, mask_source FROM images WHERE dataset = ? AND split = 'test'",
                           [run.dataset]).df()
        cams = con.execute("SELECT * FROM cams WHERE run_id = ?", [run.run_id]).df()
        skips = con.execute("SELECT * FROM cam_skips WHERE run_id = ?", [run.run_id]).df()
        faith = con.execute("SELECT * FROM faithfulness WHERE run_id = ?", [run.run_id]).df()
        probes = con.execute("SELECT * FROM probes WHERE run_id = ?", [run.run_id]).df()

    assert run.status == "done" and run.error is None
    assert run.image_size == spec.input_size  # a real preset: each model's own size
    assert (run.n_train, run.n_val, run.n_test) == (17, 2, 2) and len(test) == 2
    for phase in PHASES:
        assert run[f"{phase}_seconds"] > 0, phase
    assert run.train_images_per_s > 0

    # every default method either ran on every test image or is recorded as not applicable
    expected_skips = set() if spec.gap_head else {"cam"}
    applied = set(DEFAULT_CAM_METHODS) - expected_skips
    assert set(skips.method) == expected_skips and len(skips) == len(expected_skips)
    assert skips.reason.str.startswith("not applicable").all() and (skips.split == "test").all()
    pred = cams[cams.target_kind == "pred"]
    assert set(pred.method) == applied and set(pred.method) | set(skips.method) == set(DEFAULT_CAM_METHODS)
    for method in applied:
        mine = pred[pred.method == method]
        assert sorted(mine.image_id) == sorted(test.image_id), method  # each test image exactly once
    masked = pred[pred.mask_source.notna()]
    assert len(masked) == len(applied) * int(test.mask_source.astype(bool).sum()) > 0
    assert np.isfinite(masked.lung_mass.astype(float)).all() and masked.lung_mass.between(0, 1).all()
    assert pred[pred.mask_source.isna()].lung_mass.isna().all()  # no mask, no lung measure
    for _, row in pred.iterrows():
        cam = queries.cam_array(row)
        assert cam.shape == (row.height, row.width) and np.isfinite(cam).all()

    side = STRIDE16_SIDE.get(name, spec.input_size // 16)
    assert abs(math.log2(spec.input_size / side / 16)) <= 0.5  # the alias's own tolerance
    fine = pred[pred.method == FINE]
    assert set(zip(fine.height, fine.width)) == {(side, side)}

    assert set(faith.method) == applied and set(faith.metric) == {"road_combined", "confidence_drop"}
    assert (faith.n_images == 1).all() and np.isfinite(faith.value).all()
    assert {"intact", "lungs_removed", "lungs_only"} <= set(probes.probe)
    accuracy = probes[probes.probe.isin(["lungs_removed", "lungs_only"]) & (probes.metric == "accuracy")]
    assert len(accuracy) == 2 and accuracy.value.between(0, 1).all()  # (AUC needs both classes: NaN on 1 image)


def test_dashboard_pages_on_every_architecture(arch_dir, cxr_root, cache_env, monkeypatch):
    """Leaderboard, Compare and Misclassifications on the module's DB of real runs (after the
    architectures above; run alone, it trains `shallow` so there is something to show)."""
    db = arch_dir / "r.duckdb"
    if not db.exists():
        assert run_architecture("shallow", arch_dir, cxr_root) == 0
    with reader(db) as con:
        done = set(con.execute("SELECT model FROM runs WHERE status = 'done'").df().model)
        wrong = con.execute("SELECT count(*) FROM predictions JOIN runs USING (run_id) WHERE status = 'done' "
                            "AND predictions.split = 'test' AND label != pred").fetchone()[0]
    assert done
    monkeypatch.setenv("CXR_RESULTS_DB", str(db))
    monkeypatch.setenv("CXR_CHECKPOINTS", str(arch_dir / "ck"))
    monkeypatch.setenv("CXR_LUNG_SEGMENTER", str(arch_dir / "no-segmenter" / "lung_unet"))

    at = open_page()
    assert not at.exception
    board = at.dataframe[0].value
    assert set(board.model) == done and len(board) == len(done)
    assert at.selectbox(key="lb_method").value == FINE  # every architecture has the fine map
    at = open_page("pages/compare.py")
    assert not at.exception
    assert at.image, "the stored X-ray and its CAM overlays are drawn"
    at = open_page("pages/misclassifications.py")
    assert not at.exception
    assert f"({wrong} misclassified over {len(done)} models)" in texts(at)
    assert len(at.image) == min(12, wrong)  # one thumbnail per misclassified test prediction, first page
