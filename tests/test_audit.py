"""Issue 3 end to end: CAMs of every method with lung measures on real X-rays, external validation,
lungs-only control runs, recomputing CAMs for existing runs."""
from __future__ import annotations

import json

import numpy as np
import pytest

from benchmark.cli import main
from benchmark.store import queries, reader

ALL_METHODS = "cam,gradcam,gradcam++,hirescam,scorecam,layercam,eigencam,hirescam@stride16"
SMALL = ["--epochs", "1", "--image-size", "64", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory, cxr_root):
    """A small lung segmenter trained on the pack's cohen masks (1 epoch at 64 px: enough to run)."""
    out = tmp_path_factory.mktemp("seg") / "lung_unet"
    db = out.parent / "seg.duckdb"
    assert main(["lungs", "train", "--data-root", str(cxr_root), "--out", str(out), "--size", "64",
                 "--epochs", "1", "--n-phantom", "8", "--device", "cpu", "--db", str(db)]) == 0
    with reader(db) as con:
        row = con.execute("SELECT * FROM lung_segmenters").df().iloc[0]
    assert 0 < row.dice_heldout <= 1 and row.n_train > 0
    return out


@pytest.mark.slow
def test_cohen_kermany_every_test_image_every_method(tmp_path, cache_env, cxr_root, segmenter):
    db = tmp_path / "r.duckdb"
    assert main(["run", "--data", "cohen-kermany", "--data-root", str(cxr_root), "--models", "shallow,resnet18",
                 "--max-per-class", "12", "--cam-methods", ALL_METHODS, "--faithfulness-sample", "2",
                 "--segmenter", str(segmenter), "--db", str(db), "--checkpoint-dir", str(tmp_path / "ck"),
                 *SMALL]) == 0
    with reader(db) as con:
        runs = queries.runs(con)
        test_ids = set(con.execute("SELECT image_id FROM images WHERE split='test'").df().image_id)
        cams = con.execute("SELECT * FROM cams").df()
        faith = con.execute("SELECT * FROM faithfulness").df()
        seg = con.execute("SELECT * FROM lung_segmenters").df()
        probes = con.execute("SELECT * FROM probes").df()
    assert sorted(runs.model) == ["resnet18", "shallow"] and set(runs.status) == {"done"}
    pred = cams[cams.target_kind == "pred"]
    for run_id in runs.run_id:  # every model, every method, every test image
        for method in ALL_METHODS.split(","):
            mine = pred[(pred.run_id == run_id) & (pred.method == method)]
            assert set(mine.image_id) == test_ids, (run_id, method)
    # the stride alias gives the same resolution on both architectures (64 px / 16)
    fine = pred[pred.method == "hirescam@stride16"]
    assert set(zip(fine.height, fine.width)) == {(4, 4)}
    assert pred.lung_mass.notna().all() and pred.lung_iou.notna().all()
    # kermany images have no ground-truth mask: the segmenter's masks are used and say so
    assert set(pred.mask_source) <= {"gt-v7", "gt-lungvae", "predicted"}
    assert "predicted" in set(pred.mask_source)
    # the segmenter whose masks were used is recorded with its held-out Dice
    assert seg.checkpoint_path.tolist() == [f"{segmenter}.safetensors"] and 0 < seg.dice_heldout.iloc[0] <= 1
    row = pred.iloc[0]
    cam = queries.cam_array(row)
    assert cam.shape == (row.height, row.width) and 0 <= cam.min() and cam.max() <= 1
    assert set(faith.method) == set(ALL_METHODS.split(",")) and set(faith.run_id) == set(runs.run_id)
    assert set(faith.metric) == {"road_combined", "confidence_drop"}
    assert np.isfinite(faith.value).all()
    assert {"intact", "lungs_removed", "lungs_only"} <= set(probes.probe) and set(probes.run_id) == set(runs.run_id)


@pytest.mark.slow
def test_cams_command_and_external_validation(tmp_path, cache_env):
    db, ck = tmp_path / "r.duckdb", tmp_path / "ck"
    assert main(["run", "--data", "phantom", "--n-phantom", "45", "--models", "shallow", "--cam-methods", "none",
                 "--db", str(db), "--checkpoint-dir", str(ck), *SMALL]) == 0
    with reader(db) as con:
        assert con.execute("SELECT count(*) FROM cams").fetchone()[0] == 0
        n_test = con.execute("SELECT count(*) FROM images WHERE split='test'").fetchone()[0]
    assert main(["cams", "--db", str(db), "--cam-methods", "gradcam,eigencam", "--device", "cpu",
                 "--faithfulness-sample", "0"]) == 0
    with reader(db) as con:
        got = con.execute("SELECT method, count(*) FROM cams WHERE target_kind='pred' GROUP BY 1").fetchall()
    assert dict(got) == {"gradcam": n_test, "eigencam": n_test}
    checkpoint = next(ck.rglob("*.safetensors"))
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data", "phantom-clean", "--db", str(db),
                 "--device", "cpu", "--cam-methods", "gradcam", "--n-boot", "50"]) == 0
    with reader(db) as con:
        ext = con.execute("SELECT * FROM metrics WHERE split = 'external:phantom-clean'").df()
        preds = con.execute("SELECT count(*) FROM predictions WHERE split = 'external:phantom-clean'").fetchone()[0]
        ext_cams = con.execute("SELECT count(*) FROM cams WHERE split = 'external:phantom-clean'").fetchone()[0]
        probe = con.execute("SELECT * FROM probes WHERE probe = 'external:phantom-clean'").df()
    assert preds == 600 and ext_cams >= 600
    assert "accuracy" in set(ext.metric)
    assert json.loads(probe.detail.iloc[0])["n_images"] == 600


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_evaluate_refuses_dataset_without_known_classes(tmp_path, cache_env, capsys):
    from tests.conftest import write_png
    ck = tmp_path / "ck"
    assert main(["run", "--data", "phantom", "--n-phantom", "45", "--models", "shallow", "--cam-methods", "none",
                 "--db", str(tmp_path / "r.duckdb"), "--checkpoint-dir", str(ck), *SMALL]) == 0
    for i in range(3):
        write_png(tmp_path / "folder" / "tuberculosis" / f"{i}.png", i)
    rc = main(["evaluate", "--checkpoint", str(next(ck.rglob("*.safetensors"))), "--data", str(tmp_path / "folder"),
               "--db", str(tmp_path / "r.duckdb"), "--device", "cpu"])
    assert rc == 2 and "no image has a class the model knows" in capsys.readouterr().err


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_lungs_only_control_run(tmp_path, cache_env):
    db = tmp_path / "r.duckdb"
    assert main(["run", "--data", "phantom", "--n-phantom", "45", "--models", "shallow", "--lungs-only",
                 "--cam-methods", "gradcam", "--faithfulness-sample", "0", "--db", str(db),
                 "--checkpoint-dir", str(tmp_path / "ck"), *SMALL]) == 0
    with reader(db) as con:
        run = queries.runs(con).iloc[0]
        assert bool(run.lungs_only) and "lungsonly" in run.run_id
        assert con.execute("SELECT count(*) FROM cams").fetchone()[0] > 0
        assert con.execute("SELECT count(*) FROM probes").fetchone()[0] == 0


@pytest.mark.slow
def test_lungs_only_run_keeps_the_source_of_predicted_masks(tmp_path, cache_env, cxr_root, segmenter):
    """Kermany images have no ground-truth mask: a lungs-only run predicts them before training,
    and its CAM rows and lung_segmenters row must still say so."""
    db = tmp_path / "r.duckdb"
    assert main(["run", "--data", "cohen-kermany", "--data-root", str(cxr_root), "--models", "shallow",
                 "--max-per-class", "6", "--lungs-only", "--cam-methods", "gradcam", "--faithfulness-sample", "0",
                 "--segmenter", str(segmenter), "--db", str(db), "--checkpoint-dir", str(tmp_path / "ck"),
                 *SMALL]) == 0
    with reader(db) as con:
        sources = set(con.execute("SELECT mask_source FROM cams").df().mask_source)
        n_segmenters = con.execute("SELECT count(*) FROM lung_segmenters").fetchone()[0]
    assert "predicted" in sources and None not in sources
    assert n_segmenters == 1
