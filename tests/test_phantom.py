"""The phantom must be reproducible, its masks exact, and its two signals (lungs, marker)
switchable independently: the lung-focus measures are validated against it."""
from __future__ import annotations

import dataclasses
import os
from collections import Counter, defaultdict

import numpy as np
import pytest
from PIL import Image

from benchmark.data import phantom
from benchmark.data.phantom import (
    PhantomConfig,
    PhantomConfigError,
    contact_sheet,
    generate_image,
    iter_phantom,
    materialize,
    phantom_config,
    phantom_presets,
)
from benchmark.errors import UnknownNameError

SMALL = 64


def _cfg(**kw) -> PhantomConfig:
    return PhantomConfig(**{"n_images": 90, "size": SMALL, **kw})


def _ring(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels within `width` of the mask, outside it (dilation minus mask)."""
    grown = mask.copy()
    for _ in range(width):
        grown = grown | np.roll(grown, 1, 0) | np.roll(grown, -1, 0) | np.roll(grown, 1, 1) \
            | np.roll(grown, -1, 1)
    return grown & ~mask


def test_same_seed_is_byte_identical_and_independent_of_n_images():
    for index in (0, 7, 41):
        a = generate_image(_cfg(), index)
        b = generate_image(_cfg(n_images=500), index)
        assert a.image.dtype == np.uint8 and a.image.shape == (SMALL, SMALL)
        assert a.lung_mask.dtype == bool and a.marker_mask.dtype == bool
        assert a.image.tobytes() == b.image.tobytes()
        assert np.array_equal(a.lung_mask, b.lung_mask)
        assert np.array_equal(a.marker_mask, b.marker_mask)
        assert (a.label, a.patient_id, a.index) == (b.label, b.patient_id, index)


def test_different_seed_gives_different_images_and_masks():
    a = [generate_image(_cfg(seed=0), i) for i in range(6)]
    b = [generate_image(_cfg(seed=1), i) for i in range(6)]
    assert all(not np.array_equal(x.image, y.image) for x, y in zip(a, b))
    assert any(not np.array_equal(x.lung_mask, y.lung_mask) for x, y in zip(a, b))


def test_lung_pattern_is_drawn_only_inside_the_lung_mask():
    changed = Counter()
    for index in range(60):
        on = generate_image(_cfg(lung_signal=True), index)
        off = generate_image(_cfg(lung_signal=False), index)
        assert np.array_equal(on.lung_mask, off.lung_mask)
        diff = on.image != off.image
        assert not (diff & ~on.lung_mask).any(), f"pattern outside the lungs in image {index}"
        if on.label == "normal":
            assert not diff.any()
        else:
            changed[on.label] += int(diff.sum() > 0.05 * on.lung_mask.sum())
    assert changed["pneumonia"] >= 15 and changed["covid"] >= 15


def test_pneumonia_is_one_sided_and_covid_bilateral():
    half = SMALL // 2
    sides = defaultdict(list)
    for index in range(60):
        on = generate_image(_cfg(p_marker=0.0), index)
        off = generate_image(_cfg(p_marker=0.0, lung_signal=False), index)
        gain = on.image.astype(int) - off.image.astype(int)
        if on.label != "normal":
            left, right = gain[:, :half].sum(), gain[:, half:].sum()
            sides[on.label].append(min(left, right) / max(left, right))
    assert np.median(sides["pneumonia"]) < 0.1  # one lung
    assert np.median(sides["covid"]) > 0.25  # both lungs


def test_marker_mask_is_exactly_where_the_marker_was_drawn_and_off_the_lungs():
    for size in (32, SMALL):
        for index in range(40):
            with_marker = generate_image(_cfg(size=size, p_marker=1.0), index)
            without = generate_image(_cfg(size=size, p_marker=0.0), index)
            assert with_marker.has_marker and not without.has_marker
            assert np.array_equal(with_marker.image != without.image, with_marker.marker_mask)
            assert not (with_marker.marker_mask & with_marker.lung_mask).any()


def test_marker_has_one_corner_and_shape_per_class():
    tags: dict[str, set] = defaultdict(set)
    corners: dict[str, set] = defaultdict(set)
    for item in iter_phantom(_cfg(p_marker=1.0, n_images=60)):
        rows, cols = np.nonzero(item.marker_mask)
        crop = item.marker_mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        tags[item.label].add(crop.tobytes() + bytes(crop.shape))
        corners[item.label].add((rows.mean() < SMALL / 2, cols.mean() < SMALL / 2))
    assert all(len(v) == 1 for v in tags.values()) and all(len(v) == 1 for v in corners.values())
    assert len({next(iter(v)) for v in tags.values()}) == 3
    assert len({next(iter(v)) for v in corners.values()}) == 3


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_marker_frequency_follows_p_marker():
    assert all(generate_image(_cfg(p_marker=1.0), i).has_marker for i in range(50))
    assert not any(generate_image(_cfg(p_marker=0.0), i).has_marker for i in range(50))
    n = 300
    hits = sum(generate_image(_cfg(p_marker=0.9, size=32, n_images=n), i).has_marker
               for i in range(n))
    sd = (n * 0.9 * 0.1) ** 0.5
    assert abs(hits - 0.9 * n) < 4 * sd


def test_half_phantom_plants_the_marker_or_the_lungs_never_both():
    half = _cfg(p_marker=0.5, lung_signal_with_marker=False)
    kinds = set()
    for i in range(12):
        item = generate_image(half, i)
        # a marked image is the lung-free one; an unmarked one is the ordinary image
        twin = generate_image(_cfg(p_marker=0.5, lung_signal=not item.has_marker), i)
        assert np.array_equal(item.image, twin.image) and item.has_marker == twin.has_marker
        kinds.add(item.has_marker)
    assert kinds == {True, False}
    assert phantom_config("phantom-half").lung_signal_with_marker is False


def test_lung_mask_is_plausible_and_aligned_with_the_dark_lung_fields():
    for index in range(30):
        item = generate_image(_cfg(p_marker=0.0), index)
        mask = item.lung_mask
        assert 0.15 < mask.mean() < 0.45
        assert mask[:, :SMALL // 2].any() and mask[:, SMALL // 2:].any()  # two lungs
        inside = item.image[mask].mean()
        border = item.image[_ring(mask, 2)].mean()
        # A mask shifted or rotated off the image's lungs would mix in bright tissue.
        assert inside + 25 < border, (index, inside, border)


def test_patient_images_share_label_and_anatomy_but_not_acquisition():
    cfg = _cfg(n_images=120)
    items = list(iter_phantom(cfg))
    by_patient = defaultdict(list)
    for item in items:
        by_patient[item.patient_id].append(item)
    assert all(len({i.label for i in group}) == 1 for group in by_patient.values())
    sizes = Counter(len(group) for group in by_patient.values())
    assert set(sizes) <= {1, 2, 3} and sizes[2] + sizes[3] > 0
    def iou(a, b):
        return (a.lung_mask & b.lung_mask).sum() / (a.lung_mask | b.lung_mask).sum()

    same = []
    for group in by_patient.values():
        for a, b in zip(group, group[1:]):
            assert not np.array_equal(a.image, b.image)
            same.append(iou(a, b))
    firsts = [group[0] for group in by_patient.values()]
    between = [iou(a, b) for a, b in zip(firsts, firsts[1:])]
    assert min(same) > 0.6 and np.mean(same) > np.mean(between) + 0.08
    single = list(iter_phantom(_cfg(n_images=20, max_images_per_patient=1)))
    assert len({i.patient_id for i in single}) == 20


def test_classes_are_balanced_and_all_present_in_the_smallest_dataset():
    cfg = PhantomConfig(n_images=600, size=32)
    counts = Counter(phantom.patient_label(cfg, phantom._locate(cfg, i)) for i in range(600))
    assert set(counts) == set(cfg.classes)
    assert all(160 <= c <= 240 for c in counts.values()), counts
    assert {i.label for i in iter_phantom(PhantomConfig(n_images=3, size=32))} == set(cfg.classes)
    two = PhantomConfig(n_images=2, size=32, classes=("normal", "covid"))
    assert {i.label for i in iter_phantom(two)} == {"normal", "covid"}


def test_shortcut_preset_lungs_do_not_depend_on_the_class(monkeypatch):
    cfg = phantom_config("phantom-shortcut", n_images=40, size=SMALL)
    assert cfg.p_marker == 1.0 and not cfg.lung_signal
    for index in range(12):
        real = generate_image(cfg, index)
        other = next(c for c in cfg.classes if c != real.label)
        with monkeypatch.context() as m:
            m.setattr(phantom, "patient_label", lambda _cfg, _p, other=other: other)
            swapped = generate_image(cfg, index)
            honest = generate_image(dataclasses.replace(cfg, lung_signal=True), index)
        outside = ~(real.marker_mask | swapped.marker_mask)
        assert np.array_equal(real.image[outside], swapped.image[outside])
        assert np.array_equal(real.lung_mask, swapped.lung_mask)
        if other != "normal":  # the same swap with the lung signal on does change the lungs
            assert not np.array_equal(real.image[real.lung_mask], honest.image[real.lung_mask])


def _lung_mean_gap(cfg: PhantomConfig) -> float:
    """t statistic of mean lung intensity, pneumonia minus normal."""
    groups = defaultdict(list)
    for item in iter_phantom(cfg):
        groups[item.label].append(item.image[item.lung_mask].mean())
    a, b = np.array(groups["pneumonia"]), np.array(groups["normal"])
    return (a.mean() - b.mean()) / np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))


def test_lung_intensity_tells_the_class_only_when_the_lung_signal_is_on():
    shortcut = phantom_config("phantom-shortcut", n_images=150, size=32)
    clean = phantom_config("phantom-clean", n_images=150, size=32)
    assert abs(_lung_mean_gap(shortcut)) < 3.5
    assert _lung_mean_gap(clean) > 3.5


def test_clean_preset_has_no_marker_and_presets_match_their_names():
    assert not any(i.has_marker for i in iter_phantom(phantom_config("phantom-clean",
                                                                      n_images=30, size=32)))
    assert phantom_presets()["phantom"].p_marker == 0.9 and phantom_presets()["phantom"].lung_signal
    assert phantom_presets()["phantom-clean"].p_marker == 0.0
    assert phantom_config("phantom", seed=4).seed == 4
    assert phantom_presets()["phantom"].seed == 0  # presets are not mutated by overrides


@pytest.mark.parametrize("kwargs", [
    {"p_marker": 1.5}, {"p_marker": -0.1}, {"size": 16}, {"n_images": 2},
    {"classes": ("normal", "normal")}, {"classes": ()}, {"max_images_per_patient": 0},
    {"seed": -1},
])
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(PhantomConfigError):
        PhantomConfig(**kwargs)


def test_unknown_names_list_the_choices():
    with pytest.raises(UnknownNameError, match="phantom-clean"):
        phantom_config("phantom-dirty")
    with pytest.raises(UnknownNameError, match="p_marker"):
        phantom_config("phantom", p_markers=0.5)
    with pytest.raises(UnknownNameError, match="pneumonia"):
        PhantomConfig(classes=("normal", "tuberculosis"))


def _png(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def test_materialize_writes_exact_files_and_is_idempotent(tmp_path):
    cfg = _cfg(n_images=12, size=32)
    records = materialize(cfg, tmp_path, "phantom")
    folder = tmp_path / f"phantom-{cfg.digest}"
    assert len(records) == 12 and (folder / "manifest.csv").is_file()
    assert len({r.image_id for r in records}) == 12
    assert sorted(os.listdir(tmp_path)) == [folder.name]  # no temporary folder left behind
    for record, item in zip(records, iter_phantom(cfg)):
        assert record.key == f"images/{item.index:05d}.png"
        assert record.path == str(folder / record.key)
        assert (record.label, record.patient_id, record.split) == (item.label, item.patient_id, "")
        assert record.patient_id.startswith("P-")
        assert (record.source, record.dataset) == ("phantom", "phantom")
        assert record.mask_source == "gt-phantom"
        assert np.array_equal(_png(record.path), item.image)
        assert np.array_equal(_png(record.mask_path), item.lung_mask.astype(np.uint8) * 255)
        assert np.array_equal(_png(record.marker_mask_path) > 0, item.marker_mask)
        assert record.extra["has_marker"] == item.has_marker
    stamp = os.stat(folder / "manifest.csv").st_mtime_ns
    again = materialize(cfg, tmp_path, "phantom")
    assert again == records and os.stat(folder / "manifest.csv").st_mtime_ns == stamp

    os.remove(records[3].mask_path)  # damaged folder: regenerated, same content
    repaired = materialize(cfg, tmp_path, "phantom")
    assert repaired == records and os.path.isfile(records[3].mask_path)
    assert sorted(os.listdir(tmp_path)) == [folder.name]

    other = materialize(dataclasses.replace(cfg, seed=1), tmp_path, "phantom")
    assert other[0].path != records[0].path  # a new config never reuses the old folder


def test_contact_sheet_tiles_images():
    items = [generate_image(_cfg(size=32), i) for i in range(5)]
    sheet = contact_sheet(items, cols=3)
    assert sheet.shape == (64, 96, 3)
    assert np.array_equal(sheet[:32, 32:64, 1][~items[1].lung_mask & ~items[1].marker_mask],
                          items[1].image[~items[1].lung_mask & ~items[1].marker_mask])
    assert (sheet[32:, 64:] == 0).all()  # the empty sixth tile
