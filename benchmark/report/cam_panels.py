"""Which CAMs the report shows: per dataset, the three runs with the highest accuracy for the
lowest lung focus (the likeliest shortcut learners), on the same few test images, with the
lung contour; and loading those pictures from the files the DB points at.

A stored image may not be on the machine that writes the report (a DB copied from a GPU box):
then the tile shows the map alone and says so, instead of failing the report.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from benchmark.cams.engine import upsample_cam
from benchmark.data.imageio import read_image, read_mask
from benchmark.data.stored import fit_within, resolve_image_path
from benchmark.errors import ImageRejected
from benchmark.report.figures import CamCell
from benchmark.store.queries import cam_array

N_SUSPECTS = 3
N_IMAGES = 4
MAX_SIDE = 192        # pixels of the longest side of a tile's picture
MISSING_SIDE = 128    # a tile without its picture: the map drawn on a square this size


def suspects(board: pd.DataFrame, groups: pd.DataFrame, n: int = N_SUSPECTS) -> dict[str, list[str]]:
    """dataset -> up to `n` run ids, largest accuracy - lung focus first (the focus score where
    it is defined, else the lung mass), one run per seed group (its lowest seed)."""
    if board.empty:
        return {}
    b = board.dropna(subset=["accuracy", "lung_mass"])
    b = b.assign(_gap=b["accuracy"] - b["lung_focus_score"].clip(0, 1).fillna(b["lung_mass"]))
    if not groups.empty:
        b = b.drop(columns=["seed", "seed_group"], errors="ignore").merge(
            groups[["run_id", "seed_group", "seed"]], on="run_id", how="left")
        b = b.sort_values(["seed_group", "seed"], na_position="last").drop_duplicates("seed_group")
    out = {}
    for dataset, rows in b.groupby("dataset", sort=True):
        out[dataset] = rows.sort_values(["_gap", "run_id"], ascending=[False, True]).run_id.head(n).tolist()
    return out


def pick_images(preds: pd.DataFrame, run_ids: list[str], n: int = N_IMAGES) -> list[str]:
    """Up to `n` test images every run scored, one class after another (classes in name order);
    within a class, an image all of them got right comes first: where a shortcut learner is
    right, its map shows what it was right from."""
    mine = preds[preds.run_id.isin(run_ids)].assign(correct=lambda d: d.label == d.pred)
    shared = mine.groupby("image_id").filter(lambda g: g.run_id.nunique() == len(run_ids))
    if shared.empty:
        return []
    per_image = shared.groupby("image_id").agg(label=("label", "first"),
                                               all_right=("correct", "all")).reset_index()
    per_image = per_image.sort_values(["label", "all_right", "image_id"], ascending=[True, False, True])
    queues = {label: list(rows.image_id) for label, rows in per_image.groupby("label", sort=True)}
    chosen: list[str] = []
    while len(chosen) < n and any(queues.values()):
        for label in list(queues):
            if queues[label] and len(chosen) < n:
                chosen.append(queues[label].pop(0))
    return chosen


def load_picture(meta: dict) -> tuple[np.ndarray | None, str]:
    """The stored image at display size, or (None, why not)."""
    found = resolve_image_path(meta.get("path"), meta.get("key"), meta.get("source"))
    if found is None:
        return None, f"image not on this machine:\n{_tail(meta.get('path') or meta.get('key') or '?')}"
    try:
        return fit_within(read_image(found), MAX_SIDE), ""
    except ImageRejected as exc:
        return None, f"image unreadable:\n{exc.reason}"


def _tail(path: str, keep: int = 40) -> str:
    return path if len(path) <= keep else "..." + path[-keep:]


def _mask(mask_path, shape: tuple[int, int]) -> np.ndarray | None:
    if not isinstance(mask_path, str) or not mask_path:
        return None
    try:
        return read_mask(mask_path, shape=shape)
    except (ImageRejected, OSError):
        return None


def cells(run_ids: list[str], image_ids: list[str], images: pd.DataFrame, preds: pd.DataFrame,
          cams: pd.DataFrame) -> list[list[CamCell]]:
    """Tiles, one row per run and one column per image (the picture is read once per image)."""
    meta = images.set_index("image_id")
    pictures = {}
    for image_id in image_ids:
        m = meta.loc[image_id].to_dict() if image_id in meta.index else {}
        picture, note = load_picture(m)
        shape = picture.shape[:2] if picture is not None else (MISSING_SIDE, MISSING_SIDE)
        pictures[image_id] = (picture, note, shape, _mask(m.get("mask_path"), shape))
    pred = preds.set_index(["run_id", "image_id"])
    maps = cams.set_index(["run_id", "image_id"]) if not cams.empty else cams
    grid = []
    for run_id in run_ids:
        row = []
        for image_id in image_ids:
            picture, note, shape, mask = pictures[image_id]
            p = pred.loc[(run_id, image_id)] if (run_id, image_id) in pred.index else None
            title = f"true {p['label']}, pred {p['pred']}" if p is not None else image_id
            cam = None
            if not cams.empty and (run_id, image_id) in maps.index:
                c = maps.loc[(run_id, image_id)]
                cam = upsample_cam(cam_array(c), shape)
                if pd.notna(c["lung_mass"]):
                    title += f"\nlung mass {c['lung_mass']:.2f}"
                elif mask is None:
                    title += "\nno lung mask"
            else:
                note = (note + "\n" if note else "") + "no map stored"
            row.append(CamCell(picture, cam, mask, title, note))
        grid.append(row)
    return grid
