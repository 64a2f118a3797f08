"""Compare page: one image, the top models' CAMs side by side or one model across methods; overlays."""
from __future__ import annotations

import numpy as np
import pytest

from benchmark.store import queries, reader
from dashboard import render
from tests import oracles
from tests.fixtures_db import build_results_db, open_page, texts

PAGE = "pages/compare.py"


@pytest.fixture(scope="module")
def results_db(tmp_path_factory):
    return build_results_db(tmp_path_factory.mktemp("cmp"))


def _panel_titles(at) -> list[str]:
    return [m.value.strip("*") for m in at.markdown if m.value.startswith("**") and "True class" not in m.value]


def test_top_k_models_side_by_side(app_env):
    at = open_page(PAGE)
    assert not at.exception
    assert at.selectbox(key="cmp_method").value == "gradcam"
    image_id = at.selectbox(key="cmp_image").value
    with reader(app_env) as con:
        preds = queries.image_predictions(con, image_id)
    expected = [m + (" (ImageNet)" if p else "") for m, p in zip(preds.model, preds.pretrained)]
    assert _panel_titles(at)[:3] == expected[:3]
    assert len(at.image) == 1 + 3  # the X-ray and three overlays
    at.slider(key="cmp_k").set_value(1).run()
    assert len(at.image) == 1 + 1 and len(_panel_titles(at)) == 1
    with reader(app_env) as con:
        mass = oracles.image_cams(con, image_id, "gradcam").set_index("run_id").lung_mass
    assert f"lung mass {mass[preds.run_id[0]]:.2f}" in texts(at)


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_stepping_and_class_filter_change_the_image(app_env):
    at = open_page(PAGE)
    first = at.selectbox(key="cmp_image").value
    at.button(key="cmp_next").click().run()
    second = at.selectbox(key="cmp_image").value
    assert second != first
    at.button(key="cmp_prev").click().run()
    assert at.selectbox(key="cmp_image").value == first
    at.selectbox(key="cmp_label").set_value("normal").run()
    assert "True class: normal" in texts(at)
    assert not at.exception


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_one_model_across_methods_and_dataset_switch(app_env):
    at = open_page(PAGE)
    at.radio(key="cmp_mode").set_value("One model, every CAM method").run()
    assert not at.exception
    assert sorted(_panel_titles(at)) == ["cam", "gradcam"]
    at.selectbox(key="cmp_dataset").set_value("phantom-shortcut").run()
    assert at.selectbox(key="cmp_image").value.startswith("phantom-shortcut")
    assert not at.exception


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_query_params_open_an_image_and_model(app_env):
    at = open_page()
    at.query_params.update({"dataset": "phantom-shortcut", "image": "phantom-shortcut-00005",
                            "run": "phantom-shortcut-shallow"})
    at.switch_page(PAGE).run()
    assert not at.exception
    assert at.selectbox(key="cmp_dataset").value == "phantom-shortcut"
    assert at.selectbox(key="cmp_image").value == "phantom-shortcut-00005"
    assert at.selectbox(key="cmp_run").value == "phantom-shortcut-shallow"
    assert at.radio(key="cmp_mode").value == "One model, every CAM method"


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_stale_link_falls_back_instead_of_failing(app_env):
    at = open_page()
    at.query_params.update({"dataset": "gone", "image": "nope", "method": "nomethod"})
    at.switch_page(PAGE).run()
    assert not at.exception
    assert at.selectbox(key="cmp_dataset").value == "phantom-clean"


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_missing_image_file_is_reported(tmp_path, monkeypatch):
    db = build_results_db(tmp_path)
    for png in (tmp_path / "phantom-clean" / "images").glob("*.png"):
        png.unlink()
    monkeypatch.setenv("CXR_RESULTS_DB", str(db))
    monkeypatch.delenv("CXR_DATA", raising=False)
    at = open_page(PAGE)
    assert not at.exception
    assert "not on this machine" in texts(at)


# ----------------------------------------------------------------------------- render

def test_overlay_tints_only_where_the_map_is_hot():
    image = np.full((40, 40), 100, np.uint8)
    cam = np.zeros((4, 4), np.float32)
    cam[0, 0] = 1.0
    out = render.overlay(image, cam, opacity=0.8, colormap="Jet")
    assert out.shape == (40, 40, 3) and out.dtype == np.uint8
    assert not np.array_equal(out[0, 0], [100, 100, 100])   # hot corner is coloured
    assert np.array_equal(out[-1, -1], [100, 100, 100])     # cold corner keeps the X-ray
    assert np.array_equal(render.overlay(image, cam, opacity=0.0), render.to_rgb(image))


def _reference_overlay(image, cam, opacity, colormap):
    """The overlay's formula written plainly (float64, rounded at the end): the picture must not
    drift from it by more than one grey level whatever the fast path does."""
    rgb = render.to_rgb(image).astype(np.float64)
    heat = render.resize_map(cam, rgb.shape[:2]).astype(np.float64)
    heat = (heat - heat.min()) / (heat.max() - heat.min())
    colours = render.colormap_lut(colormap)[np.round(heat * 255).astype(np.uint8)].astype(np.float64)
    alpha = opacity * heat[..., None]
    return np.clip(np.round(rgb * (1 - alpha) + colours * alpha), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("opacity,colormap", [(0.45, "Jet"), (1.0, "Inferno"), (0.2, "Hot")])
def test_overlay_equals_its_formula_on_gray_and_rgb_images(opacity, colormap):
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (70, 90), dtype=np.uint8)
    cam = rng.random((5, 6)).astype(np.float32)
    for image in (gray, np.dstack([gray, gray[::-1], 255 - gray])):
        out = render.overlay(image, cam, opacity=opacity, colormap=colormap)
        ref = _reference_overlay(image, cam, opacity, colormap)
        assert out.shape == ref.shape == (70, 90, 3) and out.dtype == np.uint8
        assert np.abs(out.astype(int) - ref).max() <= 1
    assert np.array_equal(render.overlay(gray, None), render.to_rgb(gray))
    table = render.blend_table(colormap, opacity)
    assert table is render.blend_table(colormap, opacity) and not table.flags.writeable  # one, shared, read-only
    before = gray.copy()
    render.overlay(gray, cam, lung_mask=np.ones_like(gray, bool))
    assert np.array_equal(gray, before)  # the caller's (maybe cached, shared) image is never written


def test_overlay_survives_constant_and_nan_maps():
    image = np.zeros((16, 16), np.uint8)
    for cam in (np.zeros((2, 2)), np.full((2, 2), np.nan)):
        out = render.overlay(image, cam, opacity=1.0)
        assert np.array_equal(out, render.to_rgb(image))


def test_pictures_go_out_as_jpeg_close_to_the_overlay():
    """st.image gets JPEG bytes: same size, colours within JPEG's error, gray and RGBA accepted."""
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    image = (np.linspace(0, 255, 120)[None, :] * np.ones((90, 1))).astype(np.uint8)
    cam = rng.random((7, 7)).astype(np.float32)
    shown = render.overlay(image, cam, opacity=0.6)
    for array, mode in ((shown, "RGB"), (image, "L"), (np.dstack([shown, np.full((90, 120), 255, np.uint8)]), "RGB")):
        data = render.picture(array)
        with Image.open(io.BytesIO(data)) as back:
            assert back.format == "JPEG" and back.size == (120, 90) and back.mode == mode
            decoded = np.asarray(back, dtype=np.int16)
        expected = array[..., :3] if array.ndim == 3 else array
        assert np.abs(decoded - expected).mean() < 3


def test_contour_is_the_mask_boundary():
    mask = np.zeros((10, 10), bool)
    mask[2:8, 2:8] = True
    edge = render.contour(mask)
    assert edge.sum() == 20 and not edge[4, 4] and edge[2, 2] and not edge[0, 0]
    out = render.overlay(np.zeros((10, 10), np.uint8), None, lung_mask=mask)
    assert tuple(out[2, 5]) == render.CONTOUR_RGB and tuple(out[5, 5]) == (0, 0, 0)
    # the outline made once per mask draws the same contour on every overlay of that X-ray
    outline = render.lung_outline(mask)
    cam = np.random.default_rng(0).random((3, 3)).astype(np.float32)
    image = np.full((10, 10), 90, np.uint8)
    assert np.array_equal(render.overlay(image, cam, outline=outline), render.overlay(image, cam, lung_mask=mask))
    assert np.array_equal(render.overlay(np.zeros((12, 12), np.uint8), None, outline=outline),
                          np.zeros((12, 12, 3), np.uint8))  # another picture's size: not drawn
    assert render.lung_outline(np.zeros((10, 10), bool)) is None and render.lung_outline(None) is None


def test_resize_map_matches_torch_bilinear():
    import torch
    import torch.nn.functional as F

    cam = np.random.default_rng(0).random((7, 5)).astype(np.float32)
    ours = render.resize_map(cam, (30, 22))
    ref = F.interpolate(torch.from_numpy(cam)[None, None], size=(30, 22), mode="bilinear",
                        align_corners=False)[0, 0].numpy()
    assert np.allclose(ours, ref, atol=1e-5)


def test_colormap_lut_and_unknown_name():
    lut = render.colormap_lut("Viridis")
    assert lut.shape == (256, 3) and lut.dtype == np.uint8 and not np.array_equal(lut[0], lut[-1])
    with pytest.raises(ValueError, match="choose one of"):
        render.colormap_lut("rainbow-unicorn")
