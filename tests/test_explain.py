"""Measures built on the CAM engine: the resolution ceiling of lung_mass and the marker region."""
from __future__ import annotations

import numpy as np
import torch

from benchmark.audit.cam_rows import lung_mass_ceiling, marker_region
from benchmark.cams.lungfocus import lung_focus_batch, uniform_baseline
from benchmark.data.phantom import generate_image, phantom_config


def _phantom_masks(n=6, size=128):
    cfg = phantom_config("phantom", size=size)
    return np.stack([generate_image(cfg, i).lung_mask for i in range(n)])


def test_ceiling_is_what_a_perfect_map_scores_and_grows_with_resolution():
    masks = _phantom_masks()
    ceilings = {h: np.mean(lung_mass_ceiling(masks, (h, h))) for h in (4, 7, 14)}
    assert ceilings[4] < ceilings[7] < ceilings[14] < 1
    # a perfect lungs-only map at 7x7 scores exactly the ceiling, a uniform map the baseline
    perfect = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(masks).float().unsqueeze(1), 7).squeeze(1)
    got = np.mean([f.lung_mass for f in lung_focus_batch(perfect, masks)])
    assert abs(got - ceilings[7]) < 1e-6
    uniform = np.mean([f.lung_mass for f in lung_focus_batch(torch.ones(len(masks), 7, 7), masks)])
    assert abs(uniform - np.mean([uniform_baseline(m) for m in masks])) < 1e-5 < ceilings[7] - uniform


def test_marker_region_grows_by_one_cell_and_stays_off_an_empty_mask():
    m = np.zeros((2, 64, 64), bool)
    m[0, 30:32, 30:32] = True
    region = marker_region(m, cell=8.0)
    assert region[0, 22:40, 22:40].all() and region[0].sum() == 18 * 18
    assert not region[1].any()


def test_methods_at_another_layer(caplog):
    from benchmark.audit.cam_rows import applicable_methods, cam_rows, method_applicability
    from benchmark.models import create_model

    model = create_model("resnet18", num_classes=3).eval()
    spec = model.spec
    masks = _phantom_masks(n=3, size=64)
    images = (np.random.default_rng(0).random((3, 64, 64)) * 255).astype(np.uint8)
    methods = ["gradcam", "gradcam@layer3", "cam@layer3", "gradcam@nolayer"]
    assert applicable_methods(model, methods) == ["gradcam", "gradcam@layer3"]
    reasons = dict(method_applicability(model, methods)[1])  # what cam_skips stores
    assert set(reasons) == {"cam@layer3", "gradcam@nolayer"}
    assert "nolayer" in reasons["gradcam@nolayer"] and "layer4" in reasons["gradcam@nolayer"]  # lists real layers
    assert reasons["cam@layer3"].startswith("not applicable")
    rows = cam_rows(model, images, masks, ["gt-phantom"] * 3, np.zeros(3, int), np.zeros(3, int),
                    ["a", "b", "c"], ["x", "y", "z"], methods, torch.device("cpu"))
    sizes = dict(zip(rows.method, rows.height))
    assert sizes == {"gradcam": 2, "gradcam@layer3": 4}   # layer3 of resnet18 is twice as fine
    assert model.spec is spec                                  # the registry's layer is back


def test_probes_reuse_the_callers_intact_probabilities():
    import torch

    from benchmark.audit.probes import probe_rows
    from benchmark.models import create_model
    from benchmark.training.fit import predict_probs

    model = create_model("shallow", num_classes=3).eval()
    masks = _phantom_masks(n=6, size=64)
    images = (np.random.default_rng(1).random((6, 64, 64)) * 255).astype(np.uint8)
    labels, patients = np.array([0, 1, 2, 0, 1, 2]), [f"p{i}" for i in range(6)]
    kw = dict(seed=0, n_boot=20)
    own = probe_rows(model, images, masks, labels, patients, ["a", "b", "c"], torch.device("cpu"), **kw)
    probs = predict_probs(model, torch.from_numpy(images), torch.device("cpu"))
    given = probe_rows(model, images, masks, labels, patients, ["a", "b", "c"], torch.device("cpu"), probs=probs, **kw)
    assert set(own.probe) == {"intact", "lungs_removed", "lungs_only"}
    assert np.allclose(own.value, given.value, equal_nan=True)
