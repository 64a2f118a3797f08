"""The misclassification gallery, filtered, ordered and paged in SQL: the page fetches one page of
rows.

Every function takes a connection and returns a DataFrame or a value; values are always
parameters. Reads see only done runs.
"""
from __future__ import annotations

import pandas as pd

_GALLERY_COLUMNS = """p.run_id, r.model, r.pretrained, p.image_id, p.label, p.pred, p.confidence,
               p.label = p.pred AS correct, i.source, i.view, i.sex, i.age, i.path, i.key, i.mask_path"""


_GALLERY_FROM = """
        FROM predictions p
        JOIN runs r ON r.run_id = p.run_id
        JOIN images i ON i.image_id = p.image_id
        {cams_join}
        WHERE r.status = 'done' AND r.dataset = ? AND p.split = ?"""


_CAMS_JOIN = """LEFT JOIN cams c ON c.run_id = p.run_id AND c.image_id = p.image_id AND c.split = p.split
             AND c.method = ? AND c.target_kind = ?"""


#: what the misclassification gallery can be ordered by -> (table alias, column, numeric); ties by model, run, image
GALLERY_ORDER_COLUMNS = {"confidence": ("p", "confidence", True), "lung_mass": ("c", "lung_mass", True),
                         "model": ("r", "model", False), "age": ("i", "age", True), "label": ("p", "label", False),
                         "pred": ("p", "pred", False)}


def _order_expr(order: str, alias: str | None = None) -> str:
    """The ORDER BY expression of a gallery order; NaN sorts with NULL (last), as pandas sorts it."""
    table, column, numeric = GALLERY_ORDER_COLUMNS[order]
    expr = f"{alias or table}.{column}"
    return f"(CASE WHEN isnan({expr}) THEN NULL ELSE {expr} END)" if numeric else expr


def _gallery_where(run_ids=(), only_wrong=True, true_classes=(), pred_classes=(), confidence=(0.0, 1.0),
                   lung_mass=(0.0, 1.0), sources=(), views=(), sexes=(), age=None, age_full_range=None
                   ) -> tuple[str, list, bool]:
    """SQL conditions of the gallery filter, the rules of dashboard.views.filter_predictions: empty
    tuples mean all; a range keeps rows without a value only while it is the full range. Returns
    (" AND ..." conditions, their parameters, whether they need the cams join: lung mass narrowed)."""
    sql, args = [], []
    for expr, chosen in (("p.run_id", run_ids), ("p.label", true_classes), ("p.pred", pred_classes),
                         ("i.source", sources), ("i.view", views), ("i.sex", sexes)):
        if chosen:
            sql.append(f"list_contains(?::VARCHAR[], {expr})")
            args.append([str(v) for v in chosen])
    if only_wrong:
        sql.append("p.label <> p.pred")

    def in_range(expr: str, bounds, full) -> None:
        lo, hi = float(bounds[0]), float(bounds[1])
        cond = f"({expr} BETWEEN ? AND ? AND NOT isnan({expr}))"
        if full is not None and (lo, hi) == (float(full[0]), float(full[1])):
            cond = f"({cond} OR {expr} IS NULL OR isnan({expr}))"
        sql.append(cond)
        args.extend([lo, hi])

    in_range("p.confidence", confidence, (0.0, 1.0))
    needs_cams = (float(lung_mass[0]), float(lung_mass[1])) != (0.0, 1.0)
    if needs_cams:  # the full range keeps every row (lung_mass is a share in [0, 1] or missing)
        in_range("c.lung_mass", lung_mass, (0.0, 1.0))
    if age is not None:
        in_range("i.age", age, age_full_range)
    return "".join(f" AND {s}" for s in sql), args, needs_cams


def gallery_page(con, dataset: str, method: str | None, *, order: str = "confidence", ascending: bool = False,
                 limit: int | None = 12, offset: int = 0, target_kind: str = "pred", split: str = "test",
                 **filters) -> pd.DataFrame:
    """One page of the misclassification gallery, filtered, ordered and paged in SQL.

    The dataset's done runs' `split` predictions that pass `filters` (keywords of `_gallery_where`),
    ordered by `order` (a GALLERY_ORDER_COLUMNS key; then model, run, image), `limit` rows from `offset`
    (None: every row, for the CSV export), with the columns of `prediction_rows`. Unless lung mass
    filters or orders, the maps' measures are joined to the page's rows only.
    """
    if order not in GALLERY_ORDER_COLUMNS:
        raise ValueError(f"unknown gallery order {order!r}; choose one of {sorted(GALLERY_ORDER_COLUMNS)}")
    where, args, needs_cams = _gallery_where(**filters)
    direction = "ASC" if ascending else "DESC"
    page = "" if limit is None else f" LIMIT {int(limit)} OFFSET {max(0, int(offset))}"
    if needs_cams or order == "lung_mass" or limit is None:
        return con.execute(
            f"""SELECT {_GALLERY_COLUMNS}, c.lung_mass, c.pointing_hit, c.lung_iou
            {_GALLERY_FROM.format(cams_join=_CAMS_JOIN)}{where}
            ORDER BY {_order_expr(order)} {direction} NULLS LAST, r.model, p.run_id, p.image_id{page}""",
            [method or "", target_kind, dataset, split, *args]).df()
    return con.execute(
        f"""WITH page AS (
            SELECT {_GALLERY_COLUMNS} {_GALLERY_FROM.format(cams_join="")}{where}
            ORDER BY {_order_expr(order)} {direction} NULLS LAST, r.model, p.run_id, p.image_id{page})
        SELECT page.*, c.lung_mass, c.pointing_hit, c.lung_iou
        FROM page LEFT JOIN cams c ON c.run_id = page.run_id AND c.image_id = page.image_id AND c.split = ?
             AND c.method = ? AND c.target_kind = ?
        ORDER BY {_order_expr(order, "page")} {direction} NULLS LAST, page.model, page.run_id, page.image_id""",
        [dataset, split, *args, split, method or "", target_kind]).df()


def gallery_count(con, dataset: str, method: str | None, *, target_kind: str = "pred", split: str = "test",
                  **filters) -> int:
    """How many predictions pass the gallery filters (the maps are joined only when lung mass filters)."""
    where, args, needs_cams = _gallery_where(**filters)
    join_args = [method or "", target_kind] if needs_cams else []
    return con.execute(f"SELECT count(*) {_GALLERY_FROM.format(cams_join=_CAMS_JOIN if needs_cams else '')}{where}",
                       [*join_args, dataset, split, *args]).fetchone()[0]


def gallery_facets(con, dataset: str, split: str = "test") -> dict:
    """What the gallery's filters can offer for a dataset, in one pass over its predictions: the runs
    (run_id, model, in page order), classes, the non-empty values of source, view and sex, the age range (None without
    ages), and the counts of predictions, wrong predictions and runs."""
    row = con.execute(
        f"""SELECT count(*), count(*) FILTER (WHERE p.label <> p.pred), count(DISTINCT p.run_id),
                   list(DISTINCT p.label), list(DISTINCT p.pred), list(DISTINCT i.source), list(DISTINCT i.view),
                   list(DISTINCT i.sex), min(i.age) FILTER (WHERE NOT isnan(i.age)),
                   max(i.age) FILTER (WHERE NOT isnan(i.age))
        {_GALLERY_FROM.format(cams_join="")}""", [dataset, split]).fetchone()
    runs = con.execute(
        f"""SELECT p.run_id, any_value(r.model) AS model {_GALLERY_FROM.format(cams_join="")}
        GROUP BY p.run_id ORDER BY model, p.run_id""", [dataset, split]).df()

    def values(items) -> list[str]:
        return sorted({str(v) for v in items or () if v is not None and str(v).strip()})

    return {"n_rows": int(row[0]), "n_wrong": int(row[1]), "n_runs": int(row[2]),
            "runs": list(zip(runs.run_id, runs.model)),
            "classes": sorted({str(v) for v in [*(row[3] or ()), *(row[4] or ())] if v is not None}),
            "source": values(row[5]), "view": values(row[6]), "sex": values(row[7]),
            "age": None if row[8] is None else (float(row[8]), float(row[9]))}
