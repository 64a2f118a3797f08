"""Milliseconds per dashboard overlay (`dashboard.render`), the piece every CAM picture pays.

    python -m bench.overlay_speed            # mean of 200 calls after one warm-up, per size

A random uint8 X-ray with a random map at the live CAM's working size (512 px, a 14 x 14
stride-16 map) and at the gallery's thumbnail size (160 px, 8 x 8), with and without the lung
contour, and with the JPEG encode the page adds. Prints one JSON object.
"""
from __future__ import annotations

import json
import time

import numpy as np

from bench.dashboard_views import cpu_name
from dashboard import render


def mean_ms(fn, n: int = 200) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return round((time.perf_counter() - start) / n * 1000, 2)


def one_size(side: int, map_side: int, rng: np.random.Generator) -> dict[str, float]:
    image = rng.integers(0, 256, (side, side), dtype=np.uint8)
    cam = rng.random((map_side, map_side)).astype(np.float32)
    mask = np.zeros((side, side), bool)
    mask[side // 5:side * 4 // 5, side // 6:side // 2 - 5] = True
    mask[side // 5:side * 4 // 5, side // 2 + 5:side * 5 // 6] = True
    return {
        "overlay_ms": mean_ms(lambda: render.overlay(image, cam)),
        "overlay_with_contour_ms": mean_ms(lambda: render.overlay(image, cam, lung_mask=mask)),
        "no_map_with_contour_ms": mean_ms(lambda: render.overlay(image, None, lung_mask=mask)),
        "overlay_and_jpeg_ms": mean_ms(lambda: render.picture(render.overlay(image, cam))),
    }


def main() -> None:
    rng = np.random.default_rng(0)
    out = {"machine": cpu_name(), "date": time.strftime("%Y-%m-%d %H:%M")}
    for side, map_side in ((512, 14), (160, 8)):
        out[f"{side}px"] = one_size(side, map_side, rng)
    print(json.dumps(out, indent=2))

if __name__ == "__main__":
    main()
