"""CAMs and lung masks on one fixed grid in image coordinates, and the regions measured on it.

Stored maps have each layer's own resolution (5 x 5 to 28 x 28); to average or compare maps of
many images they are brought to one G x G grid (bilinear, half-pixel centres, as the display
upsamples them). Lung masks are area-pooled to the same grid (each cell: its lung fraction).

Regions on the grid: the outer border (the outer eighth of each side, where text markers, rulers
and collimation edges sit), its four corners (squares of the same width), and the lungs (cells
where the mean lung mask of the images is at least one half).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

GRID = 32          # cells per side of the stored class-mean and cluster maps
EDGE_FRACTION = 8  # the border and corner regions: the outer 1/EDGE_FRACTION of each side


def maps_to_grid(cams: list[np.ndarray], grid: int = GRID) -> np.ndarray:
    """N maps (each h x w, any resolution) -> N x grid x grid float32, bilinear."""
    out = np.zeros((len(cams), grid, grid), dtype=np.float32)
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, cam in enumerate(cams):
        by_shape.setdefault(tuple(cam.shape), []).append(i)
    for shape, idx in by_shape.items():
        stack = torch.from_numpy(np.stack([np.asarray(cams[i], dtype=np.float32) for i in idx]))
        if shape != (grid, grid):
            stack = F.interpolate(stack[:, None], size=(grid, grid), mode="bilinear", align_corners=False)[:, 0]
        out[idx] = stack.numpy()
    return out


def masks_to_grid(masks: np.ndarray, grid: int = GRID) -> np.ndarray:
    """N x S x S boolean masks -> N x grid x grid lung fraction per cell."""
    if len(masks) == 0:
        return np.zeros((0, grid, grid), dtype=np.float32)
    t = torch.from_numpy(np.asarray(masks, dtype=np.float32))[:, None]
    return F.adaptive_avg_pool2d(t, (grid, grid))[:, 0].numpy()


def edge_regions(grid: int = GRID) -> dict[str, np.ndarray]:
    """{'border': outer ring, 'corners': its four corner squares} as grid x grid booleans."""
    w = max(1, grid // EDGE_FRACTION)
    border = np.ones((grid, grid), dtype=bool)
    border[w:grid - w, w:grid - w] = False
    corners = np.zeros((grid, grid), dtype=bool)
    for rows in (slice(0, w), slice(grid - w, grid)):
        for cols in (slice(0, w), slice(grid - w, grid)):
            corners[rows, cols] = True
    return {"border": border, "corners": corners}


def lung_region(lung_map: np.ndarray) -> np.ndarray:
    """The lungs on the grid: cells where the mean lung mask is at least one half."""
    return np.asarray(lung_map) >= 0.5


def mass_share(cam: np.ndarray, region: np.ndarray) -> float:
    """Share of a non-negative map's mass inside `region`; NaN for an all-zero map or no region."""
    total = float(np.sum(cam))
    if total <= 0 or not region.any():
        return float("nan")
    return float(np.sum(cam[region]) / total)


def lung_ceiling(lung_map: np.ndarray, shape: tuple[int, int]) -> float:
    """The lung share of the best map a CAM of `shape` can draw: the mean lung mask pooled to that
    resolution and brought back to the grid (a 5 x 5 map cannot keep its mass inside the lungs'
    outline, so its ideal scores below 1)."""
    grid = lung_map.shape[-1]
    region = lung_region(lung_map)
    t = torch.from_numpy(np.asarray(lung_map, dtype=np.float32))[None, None]
    coarse = F.adaptive_avg_pool2d(t, tuple(int(s) for s in shape))
    ideal = F.interpolate(coarse, size=(grid, grid), mode="bilinear", align_corners=False)[0, 0].numpy()
    return mass_share(np.clip(ideal, 0, None), region)


def region_shares(cam: np.ndarray, lung_map: np.ndarray) -> dict[str, float]:
    """{lung_share, border_share, corner_share} of one grid map, with the lungs of `lung_map`."""
    edges = edge_regions(cam.shape[-1])
    return {"lung_share": mass_share(cam, lung_region(lung_map)),
            "border_share": mass_share(cam, edges["border"]),
            "corner_share": mass_share(cam, edges["corners"])}


def region_areas(lung_map: np.ndarray) -> dict[str, float]:
    """What a uniform map would put in each region: the regions' areas as shares of the image."""
    edges = edge_regions(lung_map.shape[-1])
    return {"lung_area": float(lung_region(lung_map).mean()), "border_area": float(edges["border"].mean()),
            "corner_area": float(edges["corners"].mean())}


def to_blob(grid_map: np.ndarray) -> bytes:
    """A grid map as stored: float32 bytes, row-major (read back by `store.queries.grid_array`)."""
    return np.ascontiguousarray(grid_map, dtype=np.float32).tobytes()
