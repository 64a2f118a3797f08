"""`cxr-audit import`: a model trained elsewhere (torchvision or timm state dict) audited like the tool's own.

The acceptance path runs end to end on the real data pack: a torchvision resnet18 state dict saved
here is imported, evaluated on real X-rays into a DB, explained again by `cams`, shown on the
leaderboard and in Live CAM.
"""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torchvision import models as tvm

from benchmark.cams.layers import layer_at_stride
from benchmark.cli import main
from benchmark.data.imageio import read_image, resize_image
from benchmark.store import queries, reader
from benchmark.training.checkpoints import list_checkpoints, load_checkpoint
from dashboard import live
from tests.fixtures_db import make_segmenter, open_page, texts

CLASSES = ["normal", "pneumonia", "covid"]  # the classes of the cohen-nih preset (datasets.toml)
SIZE = 64  # CPU-friendly input size for every imported model here


def _import(tmp_path, arch, weights, *extra, classes=CLASSES, out=None) -> Path:
    out = out or tmp_path / "checkpoints" / "imported" / f"{arch}-test"
    rc = main(["import", "--arch", arch, "--weights", str(weights), "--classes", ",".join(classes),
               "--input-size", str(SIZE), "--out", str(out), *extra])
    assert rc == 0
    return Path(out).with_suffix(".safetensors")


def _resnet18_state(seed=0, num_classes=3, in_chans=3):
    torch.manual_seed(seed)
    net = tvm.resnet18(weights=None, num_classes=num_classes)
    if in_chans != 3:
        net.conv1 = torch.nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False)
    return net.eval()


def _gray_batch(seed=0, n=2):
    return torch.rand(n, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _same_outputs(model, net, mean, std, in_chans):
    x = _gray_batch()
    with torch.no_grad():
        ours = model(x)
        ref = net((x.expand(-1, in_chans, -1, -1) - torch.tensor(mean).view(1, -1, 1, 1))
                  / torch.tensor(std).view(1, -1, 1, 1))
    assert torch.allclose(ours, ref, atol=1e-5), "the imported weights must give the original net's logits"


# ----------------------------------------------------------------------------- the acceptance path

@pytest.fixture(scope="module")
def imported_on_pack(tmp_path_factory, cxr_root):
    """A random-init torchvision resnet18 state dict (.pt) imported, then evaluated on the pack."""
    root = tmp_path_factory.mktemp("byom")
    net = _resnet18_state()
    weights = root / "my_resnet18.pt"
    torch.save(net.state_dict(), weights)
    cache = root / "cache"
    ckpt = _import(root, "resnet18", weights)
    db = root / "results.duckdb"
    rc = main(["evaluate", "--checkpoint", str(ckpt), "--data", "cohen-nih", "--data-root", str(cxr_root),
               "--max-per-class", "3", "--db", str(db), "--device", "cpu", "--no-progress", "--n-boot", "50",
               "--cam-methods", "cam,gradcam,hirescam@stride16", "--cache-dir", str(cache)])
    assert rc == 0
    return {"root": root, "net": net, "weights": weights, "checkpoint": ckpt, "db": db, "cache": cache}


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_import_writes_a_checkpoint_the_tool_loads(imported_on_pack, capsys):
    ckpt = imported_on_pack["checkpoint"]
    meta = json.loads(ckpt.with_suffix(".json").read_text())
    assert meta["origin"] == "imported" and meta["library"] == "torchvision" and meta["architecture"] == "resnet18"
    assert meta["classes"] == CLASSES and meta["input_size"] == SIZE and meta["in_chans"] == 3
    assert (meta["cam_target_layer"], meta["classifier"], meta["gap_head"]) == ("layer4", "fc", True)
    assert meta["normalization"]["name"] == "imagenet" and len(meta["normalization"]["mean"]) == 3
    assert meta["source_sha256"] and meta["source_file"] == str(imported_on_pack["weights"].resolve())
    model, loaded = load_checkpoint(ckpt)
    assert loaded["origin"] == "imported" and model.spec.name == "resnet18"
    _same_outputs(model, imported_on_pack["net"], meta["normalization"]["mean"], meta["normalization"]["std"], 3)


def test_evaluate_stores_an_imported_run_the_leaderboard_reads(imported_on_pack):
    with reader(imported_on_pack["db"]) as con:
        runs = queries.runs(con)
        assert len(runs) == 1
        run = runs.iloc[0]
        assert run.status == "done" and run.model == "resnet18 (imported)" and run.dataset == "cohen-nih~max3"
        config = json.loads(run.config_json)
        assert config["origin"] == "imported" and config["library"] == "torchvision" and config["data"] == "cohen-nih"
        assert json.loads(run.classes_json) == CLASSES and run.image_size == SIZE
        preds = queries.predictions(con, run.run_id)
        assert len(preds) == run.n_test >= 6 and set(preds.split) == {"test"}
        summary = queries.summary(con)
        assert 0 <= summary.iloc[0].accuracy <= 1 and summary.iloc[0].accuracy_ci_low <= summary.iloc[0].accuracy
        cams = con.execute("SELECT method, count(*) AS n, count(lung_mass) AS scored FROM cams "
                           "WHERE target_kind = 'pred' GROUP BY method ORDER BY method").df()
        assert dict(zip(cams.method, cams.n)) == {m: len(preds) for m in ("cam", "gradcam", "hirescam@stride16")}
        assert (cams.scored > 0).all(), "cohen images carry lung masks: lung focus is measured"
        shapes = con.execute("SELECT DISTINCT method, height, width FROM cams").df()
        assert {(r.method, r.height) for r in shapes.itertuples()} == {("cam", 2), ("gradcam", 2),
                                                                        ("hirescam@stride16", 4)}
        probes = set(con.execute("SELECT probe FROM probes").df().probe)
        assert {"lungs_removed", "lungs_only"} <= probes
        images = queries.images(con)
        assert set(images.source) == {"cohen", "nih"}


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_leaderboard_page_shows_the_imported_model(imported_on_pack, monkeypatch):
    monkeypatch.setenv("CXR_RESULTS_DB", str(imported_on_pack["db"]))
    at = open_page()
    assert not at.exception
    board = at.dataframe[0].value
    assert list(board.model) == ["resnet18 (imported)"] and list(board.dataset) == ["cohen-nih~max3"]
    assert board.accuracy.notna().all() and board.lung_mass.notna().all()


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_cams_command_explains_an_imported_run_again(imported_on_pack):
    db = imported_on_pack["db"]
    with reader(db) as con:
        run_id = queries.runs(con).run_id.iloc[0]
        n_preds = len(queries.predictions(con, run_id))
    rc = main(["cams", "--db", str(db), "--run-id", run_id, "--cam-methods", "gradcam++", "--device", "cpu",
               "--no-progress", "--faithfulness-sample", "0"])
    assert rc == 0
    with reader(db) as con:
        n = con.execute("SELECT count(*) FROM cams WHERE method = 'gradcam++' AND target_kind = 'pred'").fetchone()[0]
    assert n == n_preds


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_live_cam_shows_the_imported_model(imported_on_pack, cxr_root, monkeypatch):
    root = imported_on_pack["root"]
    segmenter = root / "lungseg" / "lung_unet"
    make_segmenter(segmenter)
    monkeypatch.setenv("CXR_RESULTS_DB", str(imported_on_pack["db"]))
    monkeypatch.setenv("CXR_CHECKPOINTS", str(root / "checkpoints"))
    monkeypatch.setenv("CXR_LUNG_SEGMENTER", str(segmenter))
    listed = list_checkpoints(root / "checkpoints")
    assert [c["origin"] for c in listed] == ["imported"]
    xray = sorted((cxr_root / "cohen" / "images").glob("*.jpg"))[0]
    at = open_page("pages/live_cam.py")
    assert not at.exception
    assert at.multiselect(key="live_models").value == [str(imported_on_pack["checkpoint"])]
    at.file_uploader(key="live_upload").set_value((xray.name, xray.read_bytes(), "image/jpeg")).run()
    assert not at.exception and not at.error
    assert len(at.image) == 2, "the upload and the imported model's CAM overlay"
    assert [m.value for m in at.markdown if m.value.startswith("pred **")], "its prediction is shown"
    assert "resnet18 (imported" in texts(at)
    # the map itself: what the page overlays
    model, meta = load_checkpoint(imported_on_pack["checkpoint"])
    result = live.explain(model, meta, read_image(xray), "hirescam@stride16")
    assert not result.error and result.cam.shape == (4, 4) and np.isfinite(result.cam).all()
    assert result.cam.max() == pytest.approx(1.0) and result.pred in CLASSES


# ----------------------------------------------------------------------------- other architectures and files

def test_timm_architecture_outside_the_roster_from_safetensors(tmp_path):
    import timm

    torch.manual_seed(1)
    net = timm.create_model("resnet10t", pretrained=False, num_classes=2).eval()
    weights = tmp_path / "resnet10t.safetensors"
    save_file(net.state_dict(), str(weights))
    ckpt = _import(tmp_path, "resnet10t", weights, "--normalization", "inception", classes=["normal", "covid"])
    model, meta = load_checkpoint(ckpt)
    assert meta["library"] == "timm" and meta["cam_target_layer"] == "layer4" and meta["classifier"] == "fc"
    assert meta["gap_head"] is True and meta["normalization"]["mean"] == [0.5, 0.5, 0.5]
    _same_outputs(model, net, [0.5] * 3, [0.5] * 3, 3)
    assert layer_at_stride(model, 16) == "layer3"
    image = resize_image((np.random.default_rng(0).random((80, 80)) * 255).astype(np.uint8), SIZE)
    for method in ("cam", "gradcam", "hirescam@stride16", "gradcam++"):
        result = live.explain(model, meta, image, method)
        assert not result.error and np.isfinite(result.cam).all(), method


@pytest.mark.parametrize("library,arch,cam_layer,stride16", [
    ("torchvision", "mobilenet_v3_small", "features", "features.8"),
    ("torchvision", "squeezenet1_1", "features", "features"),
    ("timm", "mobilenetv3_small_050", "blocks", "blocks.3"),  # its conv_head runs after the global pool
    pytest.param("torchvision", "efficientnet_b0", "features", "features.5", marks=pytest.mark.slow),
    pytest.param("timm", "efficientnet_b0", "bn2", "blocks.4", marks=pytest.mark.slow),
    pytest.param("timm", "regnetx_002", "s4", "s3", marks=pytest.mark.slow),
    pytest.param("timm", "convnext_atto", "stages", "stages.2", marks=pytest.mark.slow),
    pytest.param("torchvision", "densenet121", "features", "features.transition3.conv", marks=pytest.mark.slow),
])
@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_cam_layers_found_on_unregistered_architectures(tmp_path, library, arch, cam_layer, stride16):
    from benchmark.models.imported import build_net

    torch.manual_seed(0)
    net = build_net(arch, library, 3).eval()
    weights = tmp_path / f"{arch}.pth"
    torch.save({"state_dict": net.state_dict(), "epoch": 7}, weights)  # a training checkpoint's wrapper
    ckpt = _import(tmp_path, arch, weights, "--library", library)
    model, meta = load_checkpoint(ckpt)
    assert meta["cam_target_layer"] == cam_layer
    assert layer_at_stride(model, 16) == stride16
    image = (np.random.default_rng(1).random((SIZE, SIZE)) * 255).astype(np.uint8)
    for method in ("gradcam", "hirescam@stride16"):
        result = live.explain(model, meta, image, method)
        assert not result.error and np.isfinite(result.cam).all(), (arch, method)


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_one_channel_models_get_the_grayscale_as_is(tmp_path):
    import timm

    torch.manual_seed(2)
    tv = _resnet18_state(in_chans=1)
    weights = tmp_path / "gray_resnet18.pt"
    torch.save(tv.state_dict(), weights)
    model, meta = load_checkpoint(_import(tmp_path, "resnet18", weights, "--mean", "0.5", "--std", "0.25"))
    assert meta["in_chans"] == 1 and meta["normalization"] == {"name": "custom", "mean": [0.5], "std": [0.25],
                                                               "in_chans": 1}
    _same_outputs(model, tv, [0.5], [0.25], 1)

    tm = timm.create_model("resnet10t", pretrained=False, num_classes=3, in_chans=1).eval()
    weights = tmp_path / "gray_resnet10t.safetensors"
    save_file(tm.state_dict(), str(weights))
    model, meta = load_checkpoint(_import(tmp_path, "resnet10t", weights))
    assert meta["library"] == "timm" and meta["in_chans"] == 1
    mean, std = meta["normalization"]["mean"], meta["normalization"]["std"]
    assert len(mean) == 1 and mean[0] == pytest.approx(0.449, abs=1e-3)
    _same_outputs(model, tm, mean, std, 1)


def test_wrapper_prefixes_are_removed(tmp_path):
    net = _resnet18_state(seed=3)
    weights = tmp_path / "ddp.pt"
    torch.save({"model_state_dict": {f"module._orig_mod.{k}": v for k, v in net.state_dict().items()}}, weights)
    model, meta = load_checkpoint(_import(tmp_path, "resnet18", weights, "--normalization", "none"))
    assert meta["prefix_removed"] == "module._orig_mod."
    _same_outputs(model, net, [0.0] * 3, [1.0] * 3, 3)


def _fails(capsys, argv) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    return err


def test_head_of_the_wrong_size_is_refused(tmp_path, capsys):
    weights = tmp_path / "imagenet_head.pt"
    torch.save(_resnet18_state(num_classes=1000).state_dict(), weights)
    out = tmp_path / "out" / "x"
    err = _fails(capsys, ["import", "--arch", "resnet18", "--weights", str(weights), "--classes", "a,b,c",
                          "--out", str(out)])
    assert "classifier head `fc` has 1000 outputs" in err and "names 3" in err
    assert not out.parent.exists()


def test_pickled_objects_are_refused_without_running_them(tmp_path, capsys):
    whole = tmp_path / "whole_model.pt"
    torch.save(_resnet18_state(), whole)  # the module itself, not its state dict
    err = _fails(capsys, ["import", "--arch", "resnet18", "--weights", str(whole), "--classes", "a,b,c",
                          "--out", str(tmp_path / "out" / "x")])
    assert "weights_only" in err and "state_dict" in err
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pth"
    for protocol, says in ((2, "holds pickled Python objects"), (pickle.HIGHEST_PROTOCOL, "refused")):
        with open(evil, "wb") as fh:
            pickle.dump({"fc.weight": Payload()}, fh, protocol=protocol)
        err = _fails(capsys, ["import", "--arch", "resnet18", "--weights", str(evil), "--classes", "a,b,c"])
        assert says in err and "state_dict()" in err, protocol
    assert not marker.exists(), "the file's code must never run"
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_keys_that_do_not_fit_are_listed(tmp_path, capsys):
    weights = tmp_path / "r18.pt"
    state = _resnet18_state().state_dict()
    torch.save(state, weights)
    err = _fails(capsys, ["import", "--arch", "resnet34", "--weights", str(weights), "--classes", "a,b,c",
                          "--library", "torchvision"])
    assert "keys missing from the file" in err and "layer1.2.conv1.weight" in err
    torch.save({**state, "projector.weight": torch.zeros(4, 4)}, weights)
    err = _fails(capsys, ["import", "--arch", "resnet18", "--weights", str(weights), "--classes", "a,b,c"])
    assert "in the file but not in the net: projector.weight" in err
    torch.save({k: v for k, v in state.items() if k != "layer2.0.bn1.running_var"}, weights)
    err = _fails(capsys, ["import", "--arch", "resnet18", "--weights", str(weights), "--classes", "a,b,c",
                          "--library", "torchvision"])
    assert "1 keys missing from the file: layer2.0.bn1.running_var" in err


def test_bad_arguments_get_clear_messages(tmp_path, capsys):
    weights = tmp_path / "r18.pt"
    torch.save(_resnet18_state().state_dict(), weights)
    base = ["import", "--weights", str(weights), "--classes", "a,b,c"]
    assert "did you mean" in _fails(capsys, [*base, "--arch", "resnet_18"])
    assert "needs 1 or 3 values" in _fails(capsys, [*base, "--arch", "resnet18", "--mean", "0.1,0.2", "--std", "1"])
    assert "go together" in _fails(capsys, [*base, "--arch", "resnet18", "--mean", "0.5"])
    assert "two or more distinct" in _fails(capsys, ["import", "--weights", str(weights), "--classes", "a,a,b",
                                                     "--arch", "resnet18"])
    assert "not found" in _fails(capsys, ["import", "--weights", str(tmp_path / "nope.pt"), "--classes", "a,b,c",
                                          "--arch", "resnet18"])
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    assert "not a PyTorch weights file" in _fails(capsys, ["import", "--weights", str(junk), "--classes", "a,b,c",
                                                           "--arch", "resnet18"])
