"""Checkpoints never unpickle, and a sidecar with missing or odd fields fails with a clear message."""
from __future__ import annotations

import ast
import json
import pickle
from pathlib import Path

import pytest
import torch

from benchmark.errors import BenchmarkError
from benchmark.training.checkpoints import list_checkpoints, load_checkpoint, read_sidecar
from tests.conftest import REPO
from tests.fixtures_db import make_checkpoint


@pytest.fixture
def ckpt(tmp_path) -> Path:
    return make_checkpoint(tmp_path / "ckpts", architecture="shallow", input_size=48)


def _edit(weights: Path, change) -> Path:
    sidecar = weights.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    change(meta)
    sidecar.write_text(json.dumps(meta))
    return weights


def test_a_good_sidecar_loads(ckpt):
    model, meta = load_checkpoint(ckpt)
    assert meta["architecture"] == "shallow" and model(torch.zeros(1, 1, 48, 48)).shape == (1, 3)
    assert [c["path"] for c in list_checkpoints(ckpt.parents[1])] == [str(ckpt)]


def _set(key, value):
    return lambda meta: meta.__setitem__(key, value)


def _drop(key):
    return lambda meta: meta.pop(key)


BAD_SIDECARS = [
    (_drop("architecture"), "lacks 'architecture'"),
    (_drop("classes"), "lacks 'classes'"),
    (_drop("input_size"), "lacks 'input_size'"),
    (_set("architecture", "resnet9000"), r"architecture: unknown model 'resnet9000'.*choose one of"),
    (_set("architecture", 18), "architecture must be a model name"),
    (_set("architecture", ""), "architecture must be a model name"),
    (_set("classes", "normal,covid"), "classes must be a non-empty list"),
    (_set("classes", []), "classes must be a non-empty list"),
    (_set("classes", {"a": 1}), "classes must be a non-empty list"),
    (_set("classes", ["a", 2, "c"]), "classes must be non-empty strings"),
    (_set("classes", ["a", "", "c"]), "classes must be non-empty strings"),
    (_set("classes", ["a", "a", "c"]), "classes must be distinct"),
    (_set("input_size", -64), "input_size must be a whole number of pixels"),
    (_set("input_size", 0), "input_size must be a whole number"),
    (_set("input_size", 64.5), "input_size must be a whole number"),
    (_set("input_size", "64"), "input_size must be a whole number"),
    (_set("input_size", True), "input_size must be a whole number"),
    (_set("input_size", 10**9), "input_size must be a whole number of pixels from 1 to 2048"),
    (_set("input_size", 8), "input_size 8 is below shallow's smallest input"),
    (_set("format_version", 99), "format_version 99 is newer"),
    (_set("format_version", "1"), "format_version must be a positive whole number"),
    (_set("pretrained", "yes"), "pretrained must be true or false"),
    (lambda meta: (meta.update(origin="imported", library="torchvision", cam_target_layer="layer4",
                               classifier="fc", gap_head=True, normalization={"in_chans": 2})),
     "normalization must be an object with in_chans 1 or 3"),
    (lambda meta: (meta.update(origin="imported", library="torchvision", cam_target_layer="layer4",
                               classifier="fc", gap_head="yes", normalization={"in_chans": 1})),
     "gap_head must be true or false"),
]


@pytest.mark.parametrize("change,message", BAD_SIDECARS, ids=[m for _, m in BAD_SIDECARS])
def test_odd_sidecar_fields_fail_with_a_clear_message(ckpt, change, message):
    _edit(ckpt, change)
    with pytest.raises(BenchmarkError, match=message) as err:
        load_checkpoint(ckpt)
    assert str(ckpt.with_suffix(".json")) in str(err.value)  # names the file
    assert list_checkpoints(ckpt.parents[1]) == []  # the live page leaves it out instead of failing


@pytest.mark.parametrize("text,message", [("[1, 2]", "must hold a JSON object"), ("{not json", "not valid JSON"),
                                          ("null", "must hold a JSON object")])
def test_a_sidecar_that_is_not_an_object_fails_clearly(ckpt, text, message):
    ckpt.with_suffix(".json").write_text(text)
    with pytest.raises(BenchmarkError, match=message):
        read_sidecar(ckpt)
    assert list_checkpoints(ckpt.parents[1]) == []


class _Payload:
    """A pickle that would leave a file behind if it were ever unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_named_safetensors_is_refused_and_never_run(ckpt, tmp_path):
    marker = tmp_path / "unpickled"
    with open(ckpt, "wb") as fh:
        pickle.dump({"net.weight": _Payload(marker)}, fh)  # torch.save writes a pickle like this
    with pytest.raises(BenchmarkError, match="cannot be loaded"):
        load_checkpoint(ckpt)
    assert not marker.exists()


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_no_code_path_unpickles():
    """Every torch.load passes weights_only=True; no pickle.load(s), no np.load with allow_pickle=True."""
    offenders = []
    for folder in ("benchmark", "dashboard", "bench"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for call, name in _calls(ast.parse(path.read_text())):
                kwargs = {k.arg: ast.unparse(k.value) for k in call.keywords}
                where = f"{path.relative_to(REPO)}:{call.lineno} {name}"
                if name.endswith("torch.load") and kwargs.get("weights_only") != "True":
                    offenders.append(where)
                if name in ("pickle.load", "pickle.loads", "pickle.Unpickler", "dill.load", "joblib.load"):
                    offenders.append(where)
                if name.endswith("np.load") and kwargs.get("allow_pickle", "False") != "False":
                    offenders.append(where)
    assert offenders == []
