"""Stride aliases (METHOD@strideN): one method string, the same map resolution on every net."""
from __future__ import annotations

import pytest
import torch

from benchmark.audit.cam_rows import method_maps
from benchmark.cams.layers import layer_at_stride, layer_strides, resolve_layer, stride_of
from benchmark.errors import BenchmarkError
from benchmark.models import create_model
from tests.conftest import zoo_params


@pytest.fixture(scope="module")
def resnet18():
    return create_model("resnet18", num_classes=3)


def test_stride_alias_parsing():
    assert stride_of("stride16") == 16
    assert stride_of("layer3") is None
    assert stride_of("stride") is None


@pytest.mark.parametrize("stride,layer", [(8, "layer2"), (16, "layer3"), (32, "layer4")])
def test_resnet18_strides_name_its_stages(resnet18, stride, layer):
    assert layer_at_stride(resnet18, stride) == layer


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_a_layer_inside_a_residual_block_is_never_picked():
    # resnet50's layer4.0.conv1/bn1 run at stride 16 but are one branch of a stride-32 block
    model = create_model("resnet50", num_classes=2)
    assert layer_at_stride(model, 16) == "layer3"
    names = [name for name, _ in layer_strides(model)]
    assert "layer4.0.bn1" not in names and "layer3" in names


def test_the_search_stops_at_the_registry_layer():
    # squeezenet's classifier convs come after its CAM layer: never a stride alias's answer
    model = create_model("squeezenet1_1", num_classes=2)
    assert all(not name.startswith("classifier") for name, _ in layer_strides(model))
    assert layer_at_stride(model, 16) == "features"


def test_an_absent_stride_is_a_clear_error_and_a_path_still_works(resnet18):
    with pytest.raises(BenchmarkError, match=r"no layer at stride 128; its layers' strides: .*\b2\b.*\b32\b"):
        layer_at_stride(resnet18, 128)
    assert resolve_layer(resnet18, "layer1") == "layer1"
    with pytest.raises(BenchmarkError, match="no layer 'layer9'.*stride16"):
        resolve_layer(resnet18, "layer9")


def test_probing_leaves_the_model_as_it_was(resnet18):
    resnet18.train()
    before = {k: v.clone() for k, v in resnet18.state_dict().items()}
    layer_strides(resnet18)
    assert resnet18.training and all(m.training for m in resnet18.modules())
    after = resnet18.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats untouched
    resnet18.eval()


def test_an_alias_gives_stride16_maps_without_touching_the_model(resnet18):
    spec = resnet18.spec
    x = torch.rand(2, 1, 128, 128)
    maps = method_maps(resnet18, x, torch.tensor([0, 1]), "hirescam@stride16")
    assert maps.shape == (2, 8, 8)
    assert resnet18.spec is spec
    assert method_maps(resnet18, x, torch.tensor([0, 1]), "hirescam@layer3").equal(maps)  # stride16 is layer3
    assert method_maps(resnet18, x, torch.tensor([0, 1]), "hirescam").shape == (2, 4, 4)  # the registry's layer4
    with pytest.raises(BenchmarkError, match="does not apply.*'stride16'"):
        method_maps(resnet18, x, torch.tensor([0, 1]), "cam@stride16")  # CAM is defined at the head's layer only
    assert resnet18.spec is spec


@pytest.mark.parametrize("name", zoo_params())
@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_every_zoo_model_has_a_stride16_layer(name):
    model = create_model(name, num_classes=2)
    layer = layer_at_stride(model, 16)
    strides = dict(layer_strides(model))
    assert 16 / 2 ** 0.5 <= strides[layer] <= 16 * 2 ** 0.5


@pytest.mark.parametrize("arch", ["resnet18", "shallow", pytest.param("vgg16", marks=pytest.mark.slow), "mobilenet_v2"])
def test_methods_asked_together_give_the_maps_each_gives_alone(arch):
    # Grad-CAM and HiResCAM at two layers share one forward and backward (compute_cams_many);
    # each map must be the one its own call gives, whatever else was asked with it
    from benchmark.cams.engine import compute_cams, compute_cams_many

    torch.manual_seed(0)
    model = create_model(arch, num_classes=3).eval()
    x = torch.rand(5, 1, 64, 64)
    targets = torch.tensor([0, 2, 1, 1, 0])
    asked = [("gradcam", None), ("hirescam", "stride16"), ("gradcam", "stride16"), ("gradcam++", None)]
    together = compute_cams_many(model, x, targets, asked, batch_size=3)
    for (method, layer), maps in zip(asked, together):
        alone = compute_cams(model, x, targets, method, batch_size=3, layer=layer)
        assert maps.shape == alone.shape and maps.shape[0] == 5
        torch.testing.assert_close(maps, alone, rtol=0, atol=1e-6, msg=f"{method}@{layer}")
