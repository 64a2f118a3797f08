"""Where a model looks over all of its images: class-mean maps and clusters of maps.

For one split of one run, per CAM method and predicted class (the `pred` maps):
- `cam_class_maps`: the mean of the normalised maps on the GRID (image coordinates) with the
  images' mean lung mask, and the share of the mean map's mass on the lungs, the border and
  the corners beside what a uniform map would put there;
- `cam_clusters`: the maps clustered (cam_clusters.py, SpRAy); per cluster its size, mean map,
  region shares, accuracy, the sources and views of its images and the images nearest its
  centre; a cluster whose map keeps less than half of what it could put on the lungs
  (`lung_focus` = lung share / lung ceiling < FLAG_BELOW) and that holds at least
  FLAG_MIN_SHARE of the class is flagged;
- `cam_cluster_members`: each image's cluster and its distance to the cluster's centre.
Computed from the maps and masks the audit already holds: no forward pass.
"""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pandas as pd

from benchmark.audit.cam_clusters import cluster_maps
from benchmark.audit.cam_grid import (
    GRID,
    lung_ceiling,
    maps_to_grid,
    masks_to_grid,
    region_areas,
    region_shares,
    to_blob,
)

FLAG_BELOW = 0.5       # a cluster keeping under half of the lung share its maps' resolution allows
FLAG_MIN_SHARE = 0.1   # ... and holding at least this share of its class's images is flagged
N_NEAREST = 4          # images nearest a cluster's centre, shown beside its mean map

PATTERN_TABLES = ("cam_class_maps", "cam_clusters", "cam_cluster_members")


def _cam(row) -> np.ndarray:
    return np.frombuffer(bytes(row.cam), dtype=np.float16).reshape(int(row.height), int(row.width)).astype(np.float32)


def _mean_lung(lung_grids: np.ndarray, has_mask: np.ndarray) -> np.ndarray:
    if not has_mask.any():
        return np.zeros(lung_grids.shape[1:], dtype=np.float32)
    return lung_grids[has_mask].mean(axis=0)


def _describe(mean_map: np.ndarray, lung_map: np.ndarray, shape: tuple[int, int]) -> dict:
    ceiling = lung_ceiling(lung_map, shape) if (lung_map >= 0.5).any() else float("nan")
    shares = region_shares(mean_map, lung_map)
    focus = shares["lung_share"] / ceiling if ceiling and np.isfinite(ceiling) else float("nan")
    return {**shares, "lung_ceiling": ceiling, "lung_focus": focus}


def _counts(values) -> str:
    return json.dumps(dict(Counter(v or "unknown" for v in values).most_common()))


def cam_pattern_tables(cams: pd.DataFrame, records: list, masks: np.ndarray, mask_sources: list[str],
                       labels: np.ndarray, preds: np.ndarray, *, split: str, seed: int = 0,
                       device="cpu") -> dict[str, pd.DataFrame]:
    """{cam_class_maps, cam_clusters, cam_cluster_members} for the `pred` maps in `cams` (rows of
    the cams table for `records`, whose masks, labels and predictions are given in the same order)."""
    empty = {name: pd.DataFrame() for name in PATTERN_TABLES}
    if cams is None or cams.empty:
        return empty
    position = {r.image_id: i for i, r in enumerate(records)}
    pred_rows = cams[(cams.target_kind == "pred") & cams.image_id.isin(position)]
    if pred_rows.empty:
        return empty
    lung_grids = masks_to_grid(masks)
    has_mask = np.array([bool(s) for s in mask_sources], dtype=bool)
    class_rows, cluster_rows, member_rows = [], [], []
    for (method, target), group in pred_rows.groupby(["method", "target_class"], sort=True):
        idx = np.array([position[i] for i in group.image_id])
        grid_maps = maps_to_grid([_cam(r) for r in group.itertuples()])
        shape = (int(group.height.iloc[0]), int(group.width.iloc[0]))
        correct = preds[idx] == labels[idx]
        lung_map = _mean_lung(lung_grids[idx], has_mask[idx])
        mean_map = grid_maps.mean(axis=0)
        key = {"split": split, "method": method, "class_name": target}
        class_rows.append({**key, "n_images": len(idx), "accuracy": float(correct.mean()), "grid": GRID,
                           "cam_height": shape[0], "cam_width": shape[1],
                           "mean_map": to_blob(mean_map), "lung_map": to_blob(lung_map),
                           **_describe(mean_map, lung_map, shape), **region_areas(lung_map)})
        found = cluster_maps(grid_maps, seed=seed, device=device)
        for c in range(found.k):
            members = np.flatnonzero(found.labels == c)
            c_idx = idx[members]
            c_lung = _mean_lung(lung_grids[c_idx], has_mask[c_idx])
            c_mean = grid_maps[members].mean(axis=0)
            described = _describe(c_mean, c_lung, shape)
            share = len(members) / len(idx)
            nearest = members[np.argsort(found.distance[members], kind="stable")[:N_NEAREST]]
            flagged = bool(np.isfinite(described["lung_focus"]) and described["lung_focus"] < FLAG_BELOW
                           and share >= FLAG_MIN_SHARE)
            cluster_rows.append({**key, "cluster": c, "k": found.k, "n_images": len(members), "class_share": share,
                                 "accuracy": float(correct[members].mean()), "grid": GRID,
                                 "mean_map": to_blob(c_mean), "lung_map": to_blob(c_lung), **described,
                                 "flagged": flagged,
                                 "sources_json": _counts(records[i].source for i in c_idx),
                                 "views_json": _counts(records[i].view for i in c_idx),
                                 "nearest_json": json.dumps([records[idx[m]].image_id for m in nearest])})
        member_rows += [{**key, "image_id": records[i].image_id, "cluster": int(c), "distance": float(d)}
                        for i, c, d in zip(idx, found.labels, found.distance)]
    return {"cam_class_maps": pd.DataFrame(class_rows), "cam_clusters": pd.DataFrame(cluster_rows),
            "cam_cluster_members": pd.DataFrame(member_rows)}
