"""Oracles: plain, obviously-correct versions of what the product computes a faster way, used by
tests only. The dashboard's gallery filters, orders and pages in SQL (`queries.gallery_page`);
these read every row and filter in pandas, and the tests hold the two to the same answer.
"""
from __future__ import annotations

import math

import pandas as pd

from dashboard.views import GALLERY_ORDERS, GalleryFilter, export_rows

# ----------------------------------------------------------------------------- reads of every row


def prediction_rows(con, dataset: str, method: str | None, target_kind: str = "pred",
                    split: str = "test") -> pd.DataFrame:
    """One row per (done run, `split` prediction) of a dataset, with image metadata and the
    lung-focus measures of that prediction's map for `method` (NULL where none is stored).

    No BLOBs: this is the misclassification gallery's filter table, fetched once and filtered
    in memory; the maps of one gallery page come from `cams_for_pairs`.
    """
    return con.execute(
        """
        SELECT p.run_id, r.model, r.pretrained, p.image_id, p.label, p.pred, p.confidence,
               p.label = p.pred AS correct, i.source, i.view, i.sex, i.age, i.path, i.key,
               i.mask_path, c.lung_mass, c.pointing_hit, c.lung_iou
        FROM predictions p
        JOIN runs r ON r.run_id = p.run_id
        JOIN images i ON i.image_id = p.image_id
        LEFT JOIN cams c ON c.run_id = p.run_id AND c.image_id = p.image_id AND c.split = p.split
             AND c.method = ? AND c.target_kind = ?
        WHERE r.status = 'done' AND r.dataset = ? AND p.split = ?
        ORDER BY r.model, p.run_id, p.image_id
        """, [method or "", target_kind, dataset, split]).df()


def image_cams(con, image_id: str, method: str | None = None, target_kind: str = "pred",
               split: str = "test") -> pd.DataFrame:
    """The stored maps (BLOBs) of one image, every done run, one method or all."""
    sql = """
        SELECT c.run_id, c.method, c.target_class, c.height, c.width, c.cam,
               c.lung_mass, c.pointing_hit, c.lung_iou
        FROM cams c JOIN runs r ON r.run_id = c.run_id
        WHERE c.image_id = ? AND c.target_kind = ? AND c.split = ? AND r.status = 'done'"""
    args: list = [image_id, target_kind, split]
    if method is not None:
        sql, args = sql + " AND c.method = ?", args + [method]
    return con.execute(sql + " ORDER BY c.run_id, c.method", args).df()


# ----------------------------------------------------------------------------- the gallery in pandas

def _in_range(values: pd.Series, bounds, full) -> pd.Series:
    lo, hi = bounds
    inside = values.between(lo, hi)
    if full is not None and (lo, hi) == tuple(full):
        inside |= values.isna()
    return inside


def filter_predictions(rows: pd.DataFrame, f: GalleryFilter) -> pd.DataFrame:
    """The rows of `prediction_rows` that pass every filter, in their original order."""
    if rows.empty:
        return rows
    keep = pd.Series(True, index=rows.index)
    if f.run_ids:
        keep &= rows.run_id.isin(f.run_ids)
    if f.only_wrong:
        keep &= rows.label != rows.pred
    for col, chosen in (("label", f.true_classes), ("pred", f.pred_classes), ("source", f.sources),
                        ("view", f.views), ("sex", f.sexes)):
        if chosen:
            keep &= rows[col].isin(chosen)
    keep &= _in_range(rows.confidence, f.confidence, (0.0, 1.0))
    keep &= _in_range(rows.lung_mass, f.lung_mass, (0.0, 1.0))
    if f.age is not None:
        keep &= _in_range(rows.age, f.age, f.age_full_range)
    return rows[keep]


def known_values(rows: pd.DataFrame, col: str) -> list[str]:
    """Distinct non-empty values of a metadata column (a filter is offered only if there are any)."""
    if rows.empty or col not in rows:
        return []
    values = rows[col].dropna().astype(str)
    return sorted(v for v in values.unique() if v.strip())


def age_range(rows: pd.DataFrame) -> tuple[float, float] | None:
    if rows.empty or "age" not in rows or rows.age.dropna().empty:
        return None
    return float(math.floor(rows.age.min())), float(math.ceil(rows.age.max()))


def page_of(rows: pd.DataFrame, page: int, page_size: int) -> tuple[pd.DataFrame, int]:
    """Rows of 1-based `page` (clamped to the last page) and the number of pages."""
    n_pages = max(1, math.ceil(len(rows) / page_size))
    page = min(max(1, int(page)), n_pages)
    return rows.iloc[(page - 1) * page_size: page * page_size], n_pages


def sort_gallery(rows: pd.DataFrame, order: str) -> pd.DataFrame:
    col, ascending = GALLERY_ORDERS.get(order, ("confidence", False))
    return rows.sort_values(col, ascending=ascending, kind="stable", na_position="last")


def export_csv(rows: pd.DataFrame) -> bytes:
    return export_rows(rows).to_csv(index=False).encode()
