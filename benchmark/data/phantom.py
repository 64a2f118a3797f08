"""Synthetic chest X-rays with a planted shortcut and exact masks: the embedded default data.

Why a phantom: to prove that the lung-focus measures work we need images where we *know* where
the evidence is. Each image has a lung pattern drawn only inside an exact lung mask (the class's
honest signal) and, with probability `p_marker`, a class-specific bright tag outside the lungs
(the shortcut, like a hospital's burned-in label). A model that looks at the tag scores well and
puts its CAM off the lungs; the presets switch either signal off to make that measurable.

Determinism: every random draw comes from `np.random.default_rng([seed, stream, key])`, with
separate streams for anatomy (per patient), lung pattern (per patient), acquisition (per
image) and marker (per image). So an image depends only on (config, index), never on
`n_images`, and switching `lung_signal` or `p_marker` changes nothing but the lung pattern or
the marker pixels (the tests rely on this to check the masks exactly).
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from benchmark.data.phantom_draw import ANATOMY_STREAM, draw_anatomy, draw_lung_pattern
from benchmark.data.presets import presets_of_kind
from benchmark.data.records import ImageRecord
from benchmark.errors import BenchmarkError, UnknownNameError

log = logging.getLogger(__name__)

GENERATOR_VERSION = 2  # bump when drawing changes, so materialised folders are not reused
LUNG_PATTERNS = ("normal", "pneumonia", "covid")  # class names the generator knows how to draw
_STREAM_COUNTS, _STREAM_LABELS, _STREAM_MARKER = 1, 2, 5
_BLOCK = 64  # patients per block of image counts (blocks keep index lookup independent of n)

# 5x5 glyphs of the class tags; canonical class order picks glyph and corner, so a class keeps
# its tag whatever subset of classes a config uses.
_GLYPHS = (
    ("#####", "#####", "##.##", "#####", "#####"),  # normal: solid plate
    ("####.", "#...#", "####.", "#..#.", "#...#"),  # pneumonia: R-like letter
    ("#....", "#....", "#....", "#....", "#####"),  # covid: L-like letter
)
_CORNERS = ("top-left", "top-right", "bottom-left")


class PhantomConfigError(BenchmarkError, ValueError):
    """A phantom configuration value is out of range."""


@dataclass(frozen=True)
class PhantomConfig:
    """How many images, at what size, and which of the two signals (lungs, marker) they carry.

    `max_images_per_patient` > 1 gives patients several images that share anatomy and label
    but differ in exposure, noise and position: the patient split must keep them together.
    """

    n_images: int = 600
    size: int = 256
    p_marker: float = 0.9
    lung_signal: bool = True
    # False: an image with the marker carries no lung pattern, so a model must read the marker there
    # and the lungs elsewhere (two planted strategies: the clusters' proof, preset phantom-half)
    lung_signal_with_marker: bool = True
    classes: tuple[str, ...] = LUNG_PATTERNS
    seed: int = 0
    max_images_per_patient: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        for name in self.classes:
            if name not in LUNG_PATTERNS:
                raise UnknownNameError("phantom class", name, LUNG_PATTERNS)
        if len(set(self.classes)) != len(self.classes) or not self.classes:
            raise PhantomConfigError(f"classes must be distinct and non-empty, got {self.classes}")
        if not 0.0 <= self.p_marker <= 1.0:
            raise PhantomConfigError(f"p_marker must be in [0, 1], got {self.p_marker}")
        if not 32 <= self.size <= 4096:
            raise PhantomConfigError(f"size must be in [32, 4096], got {self.size}")
        if self.n_images < len(self.classes):
            raise PhantomConfigError(
                f"n_images ({self.n_images}) must be >= number of classes ({len(self.classes)})")
        if self.max_images_per_patient < 1:
            raise PhantomConfigError("max_images_per_patient must be >= 1")
        if self.seed < 0:
            raise PhantomConfigError(f"seed must be >= 0, got {self.seed}")

    @property
    def digest(self) -> str:
        """Short hash naming the materialised folder: a new config or generator never reuses one."""
        payload = json.dumps({**dataclasses.asdict(self), "v": GENERATOR_VERSION}, sort_keys=True)
        return hashlib.sha1(payload.encode()).hexdigest()[:10]


def phantom_presets() -> dict[str, PhantomConfig]:
    """The phantom presets of configs/datasets.toml (kind = "phantom") as generator configs."""
    fields = {f.name for f in dataclasses.fields(PhantomConfig)}
    return {name: PhantomConfig(**{k: v for k, v in p.items() if k in fields})
            for name, p in presets_of_kind("phantom").items()}


def phantom_config(preset: str, **overrides) -> PhantomConfig:
    """A preset with some fields replaced (e.g. n_images for a quick run)."""
    table = phantom_presets()
    if preset not in table:
        raise UnknownNameError("phantom preset", preset, table)
    fields = {f.name for f in dataclasses.fields(PhantomConfig)}
    for key in overrides:
        if key not in fields:
            raise UnknownNameError("phantom option", key, fields)
    return dataclasses.replace(table[preset], **overrides)


@dataclass
class PhantomImage:
    """One generated image with its ground truth: `lung_mask` and `marker_mask` are exact."""

    image: np.ndarray  # uint8 HxW
    lung_mask: np.ndarray  # bool HxW
    marker_mask: np.ndarray  # bool HxW, all False when the image has no marker
    label: str
    patient_id: str
    index: int

    @property
    def has_marker(self) -> bool:
        return bool(self.marker_mask.any())


@lru_cache(maxsize=512)
def _block_counts(seed: int, max_per: int, n_classes: int, block: int) -> tuple[int, ...]:
    """Images per patient for one block of patients.

    The first `n_classes` patients get one image each, so any n_images >= n_classes holds
    every class (that is what the config's lower bound on n_images promises).
    """
    counts = np.random.default_rng([seed, _STREAM_COUNTS, block]).integers(1, max_per + 1, _BLOCK)
    if block == 0:
        counts[:n_classes] = 1
    return tuple(int(c) for c in counts)


def _locate(cfg: PhantomConfig, index: int) -> int:
    """Patient index of image `index` (walks blocks, so it never depends on n_images)."""
    if index < 0:
        raise IndexError(f"image index must be >= 0, got {index}")
    start, block = 0, 0
    while True:
        counts = _block_counts(cfg.seed, cfg.max_images_per_patient, len(cfg.classes), block)
        for offset, count in enumerate(counts):
            if index < start + count:
                return block * _BLOCK + offset
            start += count
        block += 1


def patient_label(cfg: PhantomConfig, patient: int) -> str:
    """Label of a patient: a seeded permutation of the classes per block of len(classes) patients
    keeps classes balanced over patients without a pattern a model could learn from the index."""
    n = len(cfg.classes)
    perm = np.random.default_rng([cfg.seed, _STREAM_LABELS, patient // n]).permutation(n)
    return cfg.classes[perm[patient % n]]


def _draw_marker(rng: np.random.Generator, size: int, label: str,
                 lung_mask: np.ndarray) -> np.ndarray:
    """Mask of the class tag in its corner, moved until it does not touch the lungs."""
    kind = LUNG_PATTERNS.index(label)
    glyph = np.array([[c == "#" for c in row] for row in _GLYPHS[kind]])
    cell = max(1, round(size / 64))
    tag = np.kron(glyph, np.ones((cell, cell), dtype=bool))
    h, w = tag.shape
    corner = _CORNERS[kind]
    base, spread = max(1, round(size * 0.03)), max(1, round(size * 0.05))
    mask = np.zeros((size, size), dtype=bool)
    for attempt in range(8):
        dy, dx = (int(v) for v in rng.integers(0, spread + 1, 2)) if attempt < 7 else (0, 0)
        top = base + dy if corner.startswith("top") else size - base - dy - h
        left = base + dx if corner.endswith("left") else size - base - dx - w
        mask[:] = False
        mask[top:top + h, left:left + w] = tag
        if not (mask & lung_mask).any():
            return mask
    log.warning("phantom marker overlapped the lungs at size %d; clipping it", size)
    return mask & ~lung_mask


def generate_image(cfg: PhantomConfig, index: int) -> PhantomImage:
    """Image `index` of the phantom dataset `cfg`; the same (cfg, index) gives the same bytes."""
    patient = _locate(cfg, index)
    label = patient_label(cfg, patient)
    anatomy_rng = np.random.default_rng([cfg.seed, ANATOMY_STREAM, patient])
    canvas = draw_anatomy(anatomy_rng, cfg.seed, index, cfg.size)
    marker_rng = np.random.default_rng([cfg.seed, _STREAM_MARKER, index])
    has_marker = marker_rng.random() < cfg.p_marker
    if cfg.lung_signal and (cfg.lung_signal_with_marker or not has_marker):
        canvas.intensity += draw_lung_pattern(canvas, label, cfg.seed, patient, index)
    image = canvas.finish()
    if has_marker:
        marker_mask = _draw_marker(marker_rng, cfg.size, label, canvas.lung_mask)
        # Brighter than any anatomy pixel (anatomy is capped at 229), like a burned-in label.
        image[marker_mask] = int(marker_rng.integers(240, 256))
    else:
        marker_mask = np.zeros_like(canvas.lung_mask)
    return PhantomImage(image, canvas.lung_mask, marker_mask, label, f"P-{patient}", index)


def iter_phantom(cfg: PhantomConfig) -> Iterator[PhantomImage]:
    """All images of the dataset in index order, generated lazily."""
    for index in range(cfg.n_images):
        yield generate_image(cfg, index)


_MANIFEST = "manifest.csv"
_COLUMNS = ("key", "label", "patient_id", "index", "has_marker", "mask_key", "marker_key")


def _save_png(array: np.ndarray, path: Path) -> None:
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    Image.fromarray(array).save(path, compress_level=1)


def _read_manifest(folder: Path, dataset: str) -> list[ImageRecord]:
    with open(folder / _MANIFEST, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [
        ImageRecord(
            path=str(folder / row["key"]), label=row["label"], patient_id=row["patient_id"],
            source="phantom", dataset=dataset, split="", mask_path=str(folder / row["mask_key"]),
            mask_source="gt-phantom", marker_mask_path=str(folder / row["marker_key"]),
            view="PA", finding=row["label"], key=row["key"],
            extra={"index": int(row["index"]), "has_marker": row["has_marker"] == "1"},
        )
        for row in rows
    ]


def _is_complete(folder: Path, n_images: int) -> bool:
    """A folder only exists after os.replace, but files may have been deleted by hand since."""
    try:
        with open(folder / _MANIFEST, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError:
        return False
    return len(rows) == n_images and all(
        (folder / row[k]).is_file() for row in rows for k in ("key", "mask_key", "marker_key"))


def materialize(cfg: PhantomConfig, root: Path, dataset: str) -> list[ImageRecord]:
    """Write the dataset as PNGs (image, lung mask, marker mask) plus manifest.csv and return
    its records; a complete folder from an earlier call is read back instead of regenerated.

    Files go to a temporary folder renamed into place in one step, so a crash or a second
    process never leaves a half-written dataset behind under the final name.
    """
    root = Path(root)
    folder = root / f"{dataset}-{cfg.digest}"
    if _is_complete(folder, cfg.n_images):
        log.info("phantom %s: reusing %s", dataset, folder)
        return _read_manifest(folder, dataset)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        for sub in ("images", "masks", "markers"):
            (tmp / sub).mkdir(parents=True)
        rows = []
        for item in iter_phantom(cfg):
            name = f"{item.index:05d}.png"
            _save_png(item.image, tmp / "images" / name)
            _save_png(item.lung_mask, tmp / "masks" / name)
            _save_png(item.marker_mask, tmp / "markers" / name)
            rows.append({"key": f"images/{name}", "label": item.label,
                         "patient_id": item.patient_id, "index": item.index,
                         "has_marker": int(item.has_marker), "mask_key": f"masks/{name}",
                         "marker_key": f"markers/{name}"})
        with open(tmp / _MANIFEST, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        if folder.exists():  # incomplete leftover: move aside, then delete
            stale = root / f".{folder.name}.stale-{uuid.uuid4().hex[:8]}"
            os.replace(folder, stale)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, folder)
        except OSError:
            if not _is_complete(folder, cfg.n_images):
                raise
            log.info("phantom %s: another process wrote %s first", dataset, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("phantom %s: wrote %d images to %s", dataset, cfg.n_images, folder)
    return _read_manifest(folder, dataset)


def contact_sheet(images: Sequence[PhantomImage], cols: int = 3,
                  outline: bool = True) -> np.ndarray:
    """RGB grid of images for a quick look; lung mask edges in red and marker in green."""
    size = images[0].image.shape[0]
    rows = -(-len(images) // cols)
    sheet = np.zeros((rows * size, cols * size, 3), dtype=np.uint8)
    for i, item in enumerate(images):
        rgb = np.repeat(item.image[..., None], 3, axis=2)
        if outline:
            m = item.lung_mask
            core = np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1)
            edge = m & ~core
            rgb[edge] = (255, 0, 0)
            mk = item.marker_mask
            rgb[mk & ~(np.roll(mk, 1, 0) & np.roll(mk, 1, 1))] = (0, 255, 0)
        r, c = divmod(i, cols)
        sheet[r * size:(r + 1) * size, c * size:(c + 1) * size] = rgb
    return sheet
