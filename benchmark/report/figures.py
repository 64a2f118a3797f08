"""The report's figures, drawn with matplotlib's Agg canvas and returned as PNG bytes.

Figures are built with the object API (`Figure` + `FigureCanvasAgg`), never pyplot: no global
figure state and no GUI backend, so a report can be drawn in a dashboard worker thread while
another is drawn elsewhere. Inputs are plain frames and arrays; nothing here reads the DB.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from benchmark.analysis.roc import FPR_GRID, RocCurve

DPI = 110
CAM_DPI = 90     # the CAM tiles are photographs: the heaviest PNGs of the report
CONTOUR_COLOUR = "#00ff8c"   # the dashboard's lung-contour green
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
MAX_LABELLED_POINTS = 12


def to_png(fig: Figure, dpi: int = DPI) -> bytes:
    """PNG bytes of a figure, drawn once (layouts are fixed up front: no bbox_inches="tight" redraw)."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


def _colours(names) -> dict[str, str]:
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(sorted(set(names)))}


def accuracy_focus(board: pd.DataFrame, baselines: dict[str, float | None], method: str | None) -> bytes:
    """Accuracy (with CI) against lung mass, one point per run or seed group, the uniform baseline
    of each dataset as a dashed line: shortcut learners sit top-left of their line."""
    fig = Figure(figsize=(7.5, 5), layout="tight")
    ax = fig.add_subplot()
    plotted = board.dropna(subset=["lung_mass", "accuracy"]) if not board.empty else board
    colours = _colours(board["dataset"]) if not board.empty else {}
    labelled = len(plotted) <= MAX_LABELLED_POINTS
    for dataset, rows in plotted.groupby("dataset", sort=True):
        low = (rows["accuracy"] - rows["accuracy_ci_low"]).clip(lower=0).fillna(0)
        high = (rows["accuracy_ci_high"] - rows["accuracy"]).clip(lower=0).fillna(0)
        ax.errorbar(rows["lung_mass"], rows["accuracy"], yerr=[low, high], fmt="o", color=colours[dataset],
                    ecolor=colours[dataset], elinewidth=1, capsize=3, markersize=7, label=str(dataset))
        if labelled:
            for r in rows.itertuples(index=False):
                ax.annotate(str(r.model), (r.lung_mass, r.accuracy), textcoords="offset points", xytext=(5, 5),
                            fontsize=8)
    for dataset, value in sorted(baselines.items()):
        if value is not None and math.isfinite(value) and dataset in colours:
            ax.axvline(value, color=colours[dataset], linestyle="--", linewidth=1)
            ax.annotate(f"uniform map {value:.2f}", (value, 0.02), xycoords=("data", "axes fraction"),
                        rotation=90, fontsize=8, color=colours[dataset], xytext=(3, 0), textcoords="offset points")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(f"lung mass of the {method or '?'} maps (share of positive CAM mass on the lungs)")
    ax.set_ylabel("test accuracy (95% CI)")
    ax.grid(alpha=0.3)
    if not plotted.empty:
        ax.legend(title="dataset", fontsize=8, loc="lower right")
    else:
        ax.text(0.5, 0.5, "no run has lung-focus measures for this method", ha="center", transform=ax.transAxes)
    return to_png(fig)


def focus_per_class(by_class: pd.DataFrame, baselines: dict[str, float | None]) -> bytes:
    """Mean lung mass per true class, grouped by model, one panel per dataset, with its baseline."""
    datasets = sorted(by_class["dataset"].unique()) if not by_class.empty else []
    fig = Figure(figsize=(8, 3.2 * max(1, len(datasets))), layout="tight")
    if not datasets:
        ax = fig.add_subplot()
        ax.axis("off")
        ax.text(0.5, 0.5, "no lung-focus measures stored", ha="center")
        return to_png(fig)
    for i, dataset in enumerate(datasets):
        ax = fig.add_subplot(len(datasets), 1, i + 1)
        rows = by_class[by_class.dataset == dataset]
        models = list(dict.fromkeys(rows["label"]))
        classes = sorted(rows["class_name"].dropna().unique())
        colours = _colours(classes)
        width = 0.8 / max(1, len(classes))
        for j, cls in enumerate(classes):
            values = rows[rows.class_name == cls].set_index("label")["lung_mass"].reindex(models)
            ax.bar(np.arange(len(models)) + (j - (len(classes) - 1) / 2) * width, values.fillna(0), width,
                   label=cls, color=colours[cls])
        base = baselines.get(dataset)
        if base is not None and math.isfinite(base):
            ax.axhline(base, color="black", linestyle="--", linewidth=1, label=f"uniform map {base:.2f}")
        ax.set_xticks(np.arange(len(models)), models, rotation=20, ha="right", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_ylabel("lung mass")
        ax.set_title(dataset, fontsize=10)
        ax.legend(fontsize=7, ncols=min(4, len(classes) + 1), loc="upper right")
        ax.grid(axis="y", alpha=0.3)
    return to_png(fig)


def roc_grid(panels: list[tuple[str, dict[str, RocCurve]]], columns: int = 4) -> bytes:
    """One panel per model (or seed group): one-vs-rest ROC per class with its bootstrap band."""
    n = max(1, len(panels))
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    width, height = 3.2 * cols, 3.3 * rows
    fig = Figure(figsize=(width, height))  # margins in inches: a tight layout costs seconds on many panels
    fig.subplots_adjust(left=0.6 / width, right=1 - 0.15 / width, bottom=0.55 / height, top=1 - 0.5 / height,
                        wspace=0.4, hspace=0.6)
    classes = sorted({c for _, curves in panels for c in curves})
    colours = _colours(classes)
    for i, (title, curves) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.plot([0, 1], [0, 1], color="#999", linewidth=0.8, linestyle=":")
        for cls, curve in sorted(curves.items()):
            ax.fill_between(FPR_GRID, curve.low, curve.high, color=colours[cls], alpha=0.18, linewidth=0)
            ax.plot(FPR_GRID, curve.tpr, color=colours[cls], linewidth=1.4, label=f"{cls} {curve.auc:.2f}")
        ax.set_title(title, fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=7)
        ax.set_xlabel("false positive rate", fontsize=8)
        ax.set_ylabel("true positive rate", fontsize=8)
        if curves:
            ax.legend(fontsize=7, loc="lower right", title="class, AUC", title_fontsize=7)
        else:
            ax.text(0.5, 0.5, "no class with both\npositives and negatives", ha="center", fontsize=8)
    return to_png(fig)


@dataclass(frozen=True)
class CamCell:
    """One tile of the CAM figure: the X-ray (None when its file is not on this machine), the map
    upsampled to the picture's shape, the lung mask at that shape, a title and a note."""

    image: np.ndarray | None
    cam: np.ndarray | None
    mask: np.ndarray | None
    title: str
    note: str = ""


def cam_grid(row_titles: list[str], cells: list[list[CamCell]]) -> bytes:
    """Rows = models, columns = the same test images: CAM over the X-ray, lung contour in green."""
    n_rows, n_cols = len(cells), max((len(r) for r in cells), default=1)
    width, height = 2.6 * n_cols + 0.5, 2.9 * n_rows
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=0.5 / width, right=1 - 0.05 / width, bottom=0.05 / height, top=1 - 0.45 / height,
                        wspace=0.06, hspace=0.3)
    for i, row in enumerate(cells):
        for j, cell in enumerate(row):
            ax = fig.add_subplot(n_rows, n_cols, i * n_cols + j + 1)
            ax.set_xticks([])
            ax.set_yticks([])
            _draw_cell(ax, cell)
            if j == 0:
                ax.set_ylabel(row_titles[i], fontsize=9)
    return to_png(fig, CAM_DPI)


def _draw_cell(ax, cell: CamCell) -> None:
    shape = cell.image.shape[:2] if cell.image is not None else (cell.cam.shape if cell.cam is not None else (64, 64))
    if cell.image is not None:
        ax.imshow(cell.image, cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(np.full(shape, 0.85), cmap="gray", vmin=0, vmax=1)
    if cell.cam is not None:
        heat = np.nan_to_num(cell.cam.astype(np.float32))
        lo, hi = float(heat.min()), float(heat.max())
        heat = (heat - lo) / (hi - lo) if hi > lo else np.zeros_like(heat)
        ax.imshow(heat, cmap="jet", alpha=0.5 * heat, vmin=0, vmax=1)  # cold regions keep the X-ray readable
    if cell.mask is not None and cell.mask.shape == tuple(shape) and cell.mask.any():
        ax.contour(cell.mask.astype(np.float32), levels=[0.5], colors=CONTOUR_COLOUR, linewidths=1)
    ax.set_title(cell.title, fontsize=8)
    if cell.note:
        ax.text(0.5, 0.5, cell.note, ha="center", va="center", fontsize=7, wrap=True, transform=ax.transAxes,
                bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "#999"})


def _grid(n: int, columns: int, cell_w: float, cell_h: float) -> tuple[Figure, int, int]:
    cols = min(columns, max(1, n))
    rows = math.ceil(max(1, n) / cols)
    width, height = cell_w * cols, cell_h * rows
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=0.8 / width, right=1 - 0.15 / width, bottom=0.7 / height, top=1 - 0.55 / height,
                        wspace=0.55, hspace=0.75)
    return fig, rows, cols


def confusion_grid(panels: list[tuple[str, tuple[str, ...], np.ndarray]], columns: int = 4) -> bytes:
    """One panel per model (or seed group): its confusion matrix, each cell shaded by the share of its
    row (the true class) and labelled with that share and the count."""
    fig, rows, cols = _grid(len(panels), columns, 3.3, 3.4)
    for i, (title, classes, counts) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        counts = np.asarray(counts)
        totals = counts.sum(axis=1, keepdims=True)
        share = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for r in range(len(classes)):
            for c in range(len(classes)):
                ax.text(c, r, f"{share[r, c]:.0%}\n({counts[r, c]})", ha="center", va="center", fontsize=7,
                        color="white" if share[r, c] > 0.6 else "black")
        ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right", fontsize=7)
        ax.set_yticks(range(len(classes)), classes, fontsize=7)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
        ax.set_title(title, fontsize=9)
    return to_png(fig)


def reliability_grid(panels: list[tuple[str, object]], columns: int = 4) -> bytes:
    """One reliability diagram per model (or seed group), `benchmark.analysis.calibration.Reliability`:
    accuracy per confidence bin as bars, the bins' mean confidence as red marks, the diagonal of a
    calibrated model; the ECE in each title."""
    fig, rows, cols = _grid(len(panels), columns, 3.2, 3.3)
    for i, (title, rel) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        centres = (rel.edges[:-1] + rel.edges[1:]) / 2
        width = float(rel.edges[1] - rel.edges[0]) * 0.9
        ax.plot([0, 1], [0, 1], color="#999", linewidth=0.8, linestyle=":")
        ax.bar(centres, np.nan_to_num(rel.accuracy), width, color=PALETTE[0], alpha=0.8)
        ax.scatter(centres, rel.confidence, marker="_", s=120, color=PALETTE[3], linewidths=2)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=7)
        ax.set_xlabel("confidence", fontsize=8)
        ax.set_ylabel("accuracy", fontsize=8)
        ax.set_title(f"{title}\nECE {rel.ece:.3f}, n = {rel.n}", fontsize=9)
    return to_png(fig)


def drop_scatter(drops: pd.DataFrame, measures, titles: dict[str, str], drop: str = "auc_drop",
                 drop_label: str = "AUC drop", columns: int = 4) -> bytes:
    """Small multiples: one panel per audit measure (objects with `.column` and `.label`), the
    measure against the external `drop`, one point per run labelled with its `label` (else `model`),
    coloured by the dataset it was trained on; `titles[column]` is the panel's second title line."""
    fig, rows, cols = _grid(len(measures), columns, 3.4, 3.3)
    labels = drops["label"] if "label" in drops else drops.get("model", pd.Series("", index=drops.index))
    colours = _colours(drops["dataset"].astype(str)) if not drops.empty else {}
    y_all = pd.to_numeric(drops.get(drop, pd.Series(dtype=float)), errors="coerce")
    for i, m in enumerate(measures):
        ax = fig.add_subplot(rows, cols, i + 1)
        x = pd.to_numeric(drops.get(m.column, pd.Series(np.nan, index=drops.index)), errors="coerce")
        ok = x.notna() & y_all.notna()
        ax.axhline(0, color="#999", linewidth=0.8, linestyle=":")
        for dataset in sorted(colours):
            sel = ok & (drops["dataset"].astype(str) == dataset)
            ax.scatter(x[sel], y_all[sel], s=22, color=colours[dataset], label=dataset)
        for j in np.flatnonzero(ok.to_numpy()):
            ax.annotate(str(labels.iloc[j]), (x.iloc[j], y_all.iloc[j]), textcoords="offset points",
                        xytext=(3, 3), fontsize=6)
        if not ok.any():
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", fontsize=8, transform=ax.transAxes)
            ax.set_xticks([])
        ax.margins(x=0.2, y=0.1)  # room for the labels of the outermost points
        ax.set_title(f"{m.label}\n{titles.get(m.column, '')}", fontsize=8)
        ax.set_xlabel(m.label, fontsize=7)
        if i % cols == 0:
            ax.set_ylabel(f"{drop_label} (internal - external)", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
        if i == 0 and colours:
            ax.legend(title="trained on", fontsize=6, title_fontsize=6, loc="best")
    return to_png(fig)
