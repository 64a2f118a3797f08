"""Dice of the lung segmenter on masks it never saw: the openist normals of the external pack.

    python -m bench.segmenter_external [--external-root DIR] [--segmenter STEM] [--size 224]

The 274 openist images (normal adult chest X-rays of a teaching module, with lung masks) come from
no source the segmenter was trained on (cohen + phantoms). The masks are predicted on the path an
audit takes for an image without ground truth: the decode cache squashes the image to the
classifier's square input (`--size`; 224 is the input size of most of the roster) and
`audit.lung_masks.complete_masks` fills the mask with the segmenter chosen by
`paths.segmenter_stem` (the shipped one unless one was trained or named). The ground-truth mask goes
through the same cache at the same size (nearest neighbour), so the Dice is the agreement of the
masks the lung-focus measures would actually use. `--size 0` scores at each image's native size
instead, as the sidecar's cohen held-out Dice was measured (the comparison printed beside it).
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmark import paths
from benchmark.audit.lung_masks import complete_masks
from benchmark.data.decode import DecodeCache
from benchmark.data.imageio import read_image, read_mask
from benchmark.data.records import ImageRecord
from benchmark.data.sources import load_pack
from benchmark.errors import BenchmarkError, ImageRejected
from benchmark.lungseg import dice_per_image, load_segmenter, predict_lung_mask

SOURCE = "openist"
AUDIT_SIZE = 224  # the input size of most of the roster, at which the audit's masks are made


@dataclass
class SegmenterDice:
    """Per-image Dice of one segmenter against ground-truth masks, row i for names[i]."""

    stem: Path
    meta: dict                  # the segmenter's sidecar
    size: int | None            # the audit's square input size, or None: each image's native size
    names: list[str]            # the images' pack keys (images/*.jpg)
    dice: np.ndarray            # float64 per image
    image_shapes: list[tuple[int, int]]  # the image the segmenter was given
    mask_shapes: list[tuple[int, int]]   # the mask it returned
    rejected: list[tuple[str, str]]      # (key, reason) for images or masks that could not be read
    seconds: float

    @property
    def mean(self) -> float:
        return float(self.dice.mean())

    @property
    def median(self) -> float:
        return float(np.median(self.dice))

    def worst(self, k: int = 5) -> list[tuple[str, float]]:
        order = np.argsort(self.dice, kind="stable")[:k]
        return [(self.names[i], float(self.dice[i])) for i in order]


def openist_records(external_root: str | Path | None = None) -> list[ImageRecord]:
    """The openist images of the external pack (every one has a lung mask), read as a pack source."""
    root = paths.require_external_root(external_root) / SOURCE
    if not (root / "manifest.csv").is_file():
        raise BenchmarkError(f"no {SOURCE} source at {root} (expected manifest.csv, images/, masks/)")
    return [r for r in load_pack(root) if r.mask_path]


def segmenter_dice(records: list[ImageRecord], segmenter: str | Path | None = None, *,
                   size: int | None = AUDIT_SIZE, cache_dir: str | Path | None = None,
                   device: str = "cpu") -> SegmenterDice:
    """Predict a mask for each record's image as the audit does and score it against its own mask.

    `size`: the audit's square input size (decode cache + `complete_masks`); None scores at each
    image's native size (`imageio` + `predict_lung_mask`, as the sidecar's cohen Dice was measured).
    """
    t0 = time.perf_counter()
    stem = paths.segmenter_stem(segmenter)
    model, meta = load_segmenter(stem, device=device)  # a missing or bad segmenter stops here, loudly
    rejected: list[tuple[str, str]] = []
    if size is None:
        names, scores, image_shapes, mask_shapes = [], [], [], []
        for r in records:
            try:
                image, truth = read_image(r.path), read_mask(r.mask_path)
            except ImageRejected as exc:
                rejected.append((r.key, exc.reason))
                continue
            if truth.shape != image.shape:
                rejected.append((r.key, f"mask {truth.shape} is not the image's size {image.shape}"))
                continue
            predicted = predict_lung_mask(model, image, device=device)
            names.append(r.key)
            image_shapes.append(image.shape)
            mask_shapes.append(predicted.shape)
            scores.append(dice_per_image(predicted, truth)[0])
        dice = np.asarray(scores, dtype=np.float64)
    else:
        cache = DecodeCache(cache_dir)
        decoded = cache.load(records, size)
        rejected += [(r.key, reason) for r, reason in decoded.rejected]
        truth, has_truth = cache.load_masks(decoded.records, size)
        rejected += [(r.key, "ground-truth mask unreadable") for r, ok in zip(decoded.records, has_truth) if not ok]
        keep = np.flatnonzero(has_truth)
        images, truth = decoded.images[keep], truth[keep]
        # every image treated as one without ground truth: the segmenter fills them all
        none = np.zeros(len(keep), dtype=bool)
        predicted, sources = complete_masks(images, np.zeros_like(truth), none, [""] * len(keep),
                                            segmenter=stem, device=device)
        if set(sources) != {"predicted"} and len(keep):
            raise BenchmarkError(f"the segmenter at {stem} gave no masks")
        names = [decoded.records[i].key for i in keep]
        image_shapes = [tuple(im.shape) for im in images]
        mask_shapes = [tuple(m.shape) for m in predicted]
        dice = dice_per_image(predicted, truth)
    return SegmenterDice(stem=stem, meta=meta, size=size, names=names, dice=dice,
                         image_shapes=image_shapes, mask_shapes=mask_shapes, rejected=rejected,
                         seconds=time.perf_counter() - t0)


def describe(result: SegmenterDice) -> str:
    where = f"{result.size} x {result.size} (the audit's input)" if result.size else "each image's native size"
    shipped = " (shipped)" if result.stem.resolve() == paths.SHIPPED_SEGMENTER.resolve() else ""
    lines = [f"segmenter: {result.stem}{shipped}",
             f"openist: {len(result.dice)} images scored at {where}, {len(result.rejected)} refused, "
             f"{result.seconds:.1f} s",
             f"Dice mean {result.mean:.4f}, median {result.median:.4f}, min {result.dice.min():.4f}",
             "worst 5: " + ", ".join(f"{name} {d:.4f}" for name, d in result.worst(5))]
    lines += [f"refused: {key}: {why}" for key, why in result.rejected]
    cohen = result.meta.get("heldout_cohen_dice_native")
    if cohen is not None:
        n = (result.meta.get("data") or {}).get("n_cohen_heldout")
        low = result.meta.get("heldout_cohen_dice_native_min")
        lines.append(f"sidecar: cohen held-out Dice {cohen:.4f} (native size, {n} images, min "
                     f"{low:.4f})" if low is not None else f"sidecar: cohen held-out Dice {cohen:.4f} (native size)")
    else:
        lines.append("sidecar: no cohen held-out Dice recorded")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--external-root", default=None,
                    help=f"{paths.EXTERNAL_ROOT_HELP} (default ${paths.ENV_EXTERNAL})")
    ap.add_argument("--segmenter", default=None,
                    help="segmenter stem (default: the one runs use, paths.segmenter_stem: the shipped one "
                         "unless one was trained or named)")
    ap.add_argument("--size", type=int, default=AUDIT_SIZE,
                    help=f"the audit's square input size (default {AUDIT_SIZE}); 0: each image's native size")
    ap.add_argument("--cache-dir", default=None, help="decode cache (default $CXR_CACHE or ~/.cache/cxr-audit)")
    ap.add_argument("--json", action="store_true", help="also print the per-image Dice as JSON")
    args = ap.parse_args(argv)
    records = openist_records(args.external_root)
    result = segmenter_dice(records, args.segmenter, size=args.size or None, cache_dir=args.cache_dir)
    print(describe(result))
    if args.json:
        print(json.dumps(dict(zip(result.names, result.dice.round(5).tolist())), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
