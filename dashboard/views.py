"""The dashboard's tables, built from query results with pandas only (no streamlit, no SQL).

Pages call these and only draw; tests call them directly. SQL stays in benchmark.store.queries.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

# The leaderboard's composition is shared with the replication report, so it lives in
# benchmark.analysis.board; the pages keep reaching it through this module.
from benchmark.analysis import evidence
from benchmark.analysis.board import (  # noqa: F401
    MEAN_OVER_CLASSES,
    PREFERRED_METHODS,
    ci_text,
    leaderboard,
    preferred_method_index,
    probe_summary,
    probe_table,
)
from benchmark.analysis.measures import phase_costs  # noqa: F401
from benchmark.analysis.seeds import aggregate, seed_groups, several_seeds  # noqa: F401
from benchmark.store.schema import PHASES  # noqa: F401

#: leaderboard sort choices -> (column, ascending)
SORT_KEYS = {
    "accuracy (high first)": ("accuracy", False),
    "lung mass (low first)": ("lung_mass", True),
    "lung mass (high first)": ("lung_mass", False),
    "shortcut gap: accuracy - lung mass": ("shortcut_gap", False),
    "AUC (high first)": ("auc", False),
    "lungs-removed accuracy (high first)": ("lungs_removed_acc", False),
    "marker mass (high first)": ("marker_mass", False),
    "external drop (large first)": ("external_drop", False),
    "external AUC drop (large first)": ("auc_drop", False),
}


def class_choices(class_metrics: pd.DataFrame) -> list[str]:
    return sorted(class_metrics["class_name"].dropna().unique()) if not class_metrics.empty else []


#: leaderboard columns whose spread over a seed group is shown (as `<col>_sd`)
SEED_SPREAD = ("accuracy", "auc", "sensitivity", "specificity", "lung_mass", "lung_focus_score", "pointing_game",
               "lungs_removed_acc", "lungs_removed_drop", "external_drop", "auc_drop")


def seed_board(board: pd.DataFrame, groups: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard with one row per seed group: means over seeds, `<col>_sd` for SEED_SPREAD,
    `n_seeds`, `seeds`, and CI bounds that are the mean of the per-seed bounds. `run_id` lists the
    group's runs. Text built per run (the lungs-removed CI) has no meaning for a group and is dropped."""
    return aggregate(board.drop(columns=["lungs_removed_ci"], errors="ignore"), groups, spread=SEED_SPREAD)


def sort_board(board: pd.DataFrame, sort_label: str) -> pd.DataFrame:
    col, ascending = SORT_KEYS.get(sort_label, ("accuracy", False))
    if board.empty or col not in board:
        return board
    return board.sort_values(col, ascending=ascending, na_position="last", kind="stable").reset_index(drop=True)


@dataclass(frozen=True)
class LeaderboardChoice:
    """The leaderboard page's widget values: all a composed board depends on besides the DB, so
    (DB stamp, choice) keys the cached board and its scatter (dashboard/cache.py)."""
    datasets: tuple[str, ...]
    method: str | None
    class_choice: str
    by_group: bool
    sort_label: str
    baselines: tuple[tuple[str, float | None], ...]  # uniform-map baseline per dataset, sorted


@dataclass(frozen=True)
class LeaderboardView:
    """Everything the leaderboard page draws for one choice of filters (built once per DB state)."""
    board: pd.DataFrame  # sorted; one row per run, or per seed group
    table: pd.DataFrame  # the board with its CI text columns: what the main table shows
    run_ids: frozenset[str]  # the runs behind the board's rows
    probes: pd.DataFrame  # probe_table of those runs
    sources: pd.DataFrame  # evidence.source_table of those runs
    sanity: pd.DataFrame  # evidence.sanity_table of those runs
    costs: pd.DataFrame  # phase_costs of those runs


def _of_runs(frame: pd.DataFrame, run_ids: set[str]) -> pd.DataFrame:
    return frame[frame.run_id.isin(run_ids)] if not frame.empty else frame


def leaderboard_view(summary: pd.DataFrame, class_metrics: pd.DataFrame, focus: pd.DataFrame,
                     probes: pd.DataFrame, sanity: pd.DataFrame, details: pd.DataFrame, *,
                     datasets: tuple[str, ...], method: str | None, class_choice: str, by_group: bool,
                     sort_label: str, baselines: dict[str, float | None],
                     external: pd.DataFrame | None = None) -> LeaderboardView:
    """The leaderboard page's tables from its query results (queries.summary, class_metrics,
    lung_focus_by_run, probe_results, cam_sanity, run_details, external_metrics) and its widgets' values."""
    board = leaderboard(summary[summary.dataset.isin(datasets)], class_metrics, focus, probes, method,
                        class_choice, baselines, sanity=sanity, external=external)
    run_ids = set(board.run_id) if not board.empty else set()
    if by_group and not board.empty:
        board = seed_board(board, seed_groups(details))
    board = sort_board(board, sort_label)
    table = board
    if not board.empty:
        table = board.assign(**{f"{m}_ci": [ci_text(lo, hi) for lo, hi in zip(board[f"{m}_ci_low"],
                                                                               board[f"{m}_ci_high"])]
                                for m in ("accuracy", "sensitivity", "specificity", "auc", "source_auc")})
    return LeaderboardView(board=board, table=table, run_ids=frozenset(run_ids),
                           probes=probe_table(_of_runs(probes, run_ids), summary),
                           sources=evidence.source_table(_of_runs(probes, run_ids)),
                           sanity=evidence.sanity_table(_of_runs(sanity, run_ids)),
                           costs=phase_costs(details[details.run_id.isin(run_ids)]))


# ----------------------------------------------------------------------------- gallery filters

@dataclass(frozen=True)
class GalleryFilter:
    """What the misclassification gallery shows; empty tuples mean 'all'.

    A range filter over lung_mass or age keeps rows without a value only while the range is the
    full range, so opening the page never hides images that simply have no mask or no age.
    """

    run_ids: tuple[str, ...] = ()
    only_wrong: bool = True
    true_classes: tuple[str, ...] = ()
    pred_classes: tuple[str, ...] = ()
    confidence: tuple[float, float] = (0.0, 1.0)
    lung_mass: tuple[float, float] = (0.0, 1.0)
    sources: tuple[str, ...] = ()
    views: tuple[str, ...] = ()
    sexes: tuple[str, ...] = ()
    age: tuple[float, float] | None = None
    age_full_range: tuple[float, float] | None = field(default=None, compare=False)


#: gallery order choices -> (column, ascending); confidently wrong first by default
GALLERY_ORDERS = {
    "confidence (high first)": ("confidence", False),
    "confidence (low first)": ("confidence", True),
    "lung mass (low first)": ("lung_mass", True),
    "model, then image": ("model", True),
}


EXPORT_COLUMNS = ["run_id", "model", "image_id", "label", "pred", "confidence", "correct", "lung_mass",
                  "pointing_hit", "lung_iou", "source", "view", "sex", "age", "path"]


def export_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The gallery's rows with the columns an export carries (what its CSV/Parquet downloads hold)."""
    return rows[[c for c in EXPORT_COLUMNS if c in rows]].reset_index(drop=True)


# ----------------------------------------------------------------------------- models

def cam_from_row(row) -> np.ndarray:
    """A cams row's map as float32 h x w (layer resolution; render.overlay upsamples it)."""
    from benchmark.store.queries import cam_array

    return cam_array(row)


def checkpoint_label(meta: dict) -> str:
    acc = (meta.get("metrics") or {}).get("accuracy")
    acc_text = f", test acc {acc:.2f}" if isinstance(acc, (int, float)) and math.isfinite(acc) else ""
    extra = ", lungs only" if meta.get("lungs_only") else ""
    if meta.get("origin") == "imported":  # trained elsewhere (`cxr-audit import`): no dataset of ours
        stem = str(meta.get("path", "")).replace("\\", "/").rsplit("/", 1)[-1].removesuffix(".safetensors")
        return f"{meta.get('architecture', '?')} (imported, {stem}){extra}"
    return f"{meta.get('architecture', '?')} on {meta.get('dataset', '?')}{acc_text}{extra}"


def rank_checkpoints(checkpoints: list[dict]) -> list[dict]:
    """Best test accuracy first (checkpoints without a number last), then by path for stability."""
    def key(meta):
        acc = (meta.get("metrics") or {}).get("accuracy")
        ok = isinstance(acc, (int, float)) and math.isfinite(acc)
        return (0 if ok else 1, -(acc if ok else 0.0), str(meta.get("path", "")))
    return sorted(checkpoints, key=key)


# ----------------------------------------------------------------------------- performance page

def performance_choices(details: pd.DataFrame, groups: pd.DataFrame, dataset: str) -> dict[str, tuple[str, tuple]]:
    """What the Performance page can show for one dataset: option -> (label, run ids).

    Each seed group of several runs comes first as a whole ('group:<first run>', its runs pooled),
    then each of its runs alone; a run without seed siblings is one option. Ordered by model.
    """
    runs = details[details["dataset"] == dataset].merge(groups[["run_id", "seed_group", "n_seeds"]], on="run_id")
    out: dict[str, tuple[str, tuple]] = {}
    ordered = runs.assign(_label=[_run_label(r) for r in runs.to_dict("records")])
    for _, members in ordered.sort_values(["_label", "seed", "run_id"], kind="stable").groupby(
            "seed_group", sort=False):
        ids = tuple(members["run_id"])
        label = members["_label"].iloc[0]
        if len(ids) > 1:
            seeds = ", ".join(str(int(s)) for s in members["seed"].dropna())
            out[f"group:{ids[0]}"] = (f"{label} · {len(ids)} seeds ({seeds}), pooled", ids)
        for r in members.to_dict("records"):
            seed = f" · seed {int(r['seed'])}" if len(ids) > 1 and pd.notna(r.get("seed")) else ""
            out[r["run_id"]] = (f"{label}{seed} · {r['run_id']}", (r["run_id"],))
    return out


def _run_label(row: dict) -> str:
    extra = [name for name, key in (("ImageNet", "pretrained"), ("lungs only", "lungs_only"))
             if pd.notna(row.get(key)) and bool(row.get(key))]
    return f"{row['model']} ({', '.join(extra)})" if extra else str(row["model"])


def split_label(split: str) -> str:
    return "test split" if split == "test" else f"external: {split.split(':', 1)[-1]}" \
        if split.startswith("external:") else split


# ----------------------------------------------------------------------------- gallery in SQL

def slider_range(age: tuple[float, float] | None) -> tuple[float, float] | None:
    """Whole-number bounds for the age slider from (min, max) age, None without ages (as `age_range`)."""
    if age is None:
        return None
    return float(math.floor(age[0])), float(math.ceil(age[1]))


def gallery_query(f: GalleryFilter, order: str) -> dict[str, dict]:
    """Keyword arguments of `queries.gallery_page`/`gallery_count` for a filter and an order choice:
    {"filters": ..., "order": ...}, every value hashable (they key the query cache)."""
    col, ascending = GALLERY_ORDERS.get(order, ("confidence", False))
    filters = {"run_ids": tuple(f.run_ids), "only_wrong": bool(f.only_wrong), "true_classes": tuple(f.true_classes),
               "pred_classes": tuple(f.pred_classes), "confidence": tuple(map(float, f.confidence)),
               "lung_mass": tuple(map(float, f.lung_mass)), "sources": tuple(f.sources), "views": tuple(f.views),
               "sexes": tuple(f.sexes), "age": None if f.age is None else tuple(map(float, f.age)),
               "age_full_range": None if f.age_full_range is None else tuple(map(float, f.age_full_range))}
    return {"filters": filters, "order": {"order": col, "ascending": ascending}}


def window(n: int, position: int, size: int) -> slice:
    """A slice of at most `size` items of a list of `n` holding `position`, centred where the ends allow."""
    size = max(1, size)
    start = min(max(0, position - size // 2), max(0, n - size))
    return slice(start, min(n, start + size))


def share_line(row) -> str:
    """'lungs 0.52 (uniform 0.31) · border 0.20 (0.41) · corners 0.04 (0.06)' for a class-mean row;
    a cluster row (no areas) gets the shares alone."""
    parts = []
    for name, share, area in (("lungs", "lung_share", "lung_area"), ("border", "border_share", "border_area"),
                              ("corners", "corner_share", "corner_area")):
        value = row.get(share)
        if value is None or pd.isna(value):
            continue
        base = row.get(area)
        parts.append(f"{name} {value:.2f}" + (f" (uniform {base:.2f})" if base is not None and pd.notna(base) else ""))
    return " · ".join(parts) or "no lung mask: no shares"


def counts_line(counts_json: str | None, limit: int = 3) -> str:
    """'kermany 12, nih 3' from a cluster's {value: images} JSON."""
    import json

    counts = json.loads(counts_json or "{}")
    shown = [f"{k} {v}" for k, v in list(counts.items())[:limit]]
    return ", ".join(shown) + (", ..." if len(counts) > limit else "")
