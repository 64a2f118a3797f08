"""Pictures of the audit: CAM overlays with lung contours, and the plotly figures.

No streamlit here, so every picture can be tested as an array or a figure. Colormaps come from
plotly's colour scales, so the dashboard's pages never import matplotlib (the report's drawing
library, benchmark/report/figures.py).
"""
from __future__ import annotations

import functools
import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import get_colorscale, qualitative, sample_colorscale

COLORMAPS = ("Jet", "Turbo", "Inferno", "Viridis", "Hot")
CONTOUR_RGB = (0, 255, 140)  # a green no colormap above uses at full saturation on gray
MAX_LABELLED_POINTS = 8
FOCUS_LABELS = {"lung_mass": "lung mass (share of positive CAM on the lungs)",
                "pointing_game": "pointing game (share of CAM peaks on the lungs)"}


@functools.cache
def colormap_lut(name: str) -> np.ndarray:
    """256 x 3 uint8 lookup table of a plotly colour scale (raises ValueError for unknown names)."""
    if name not in COLORMAPS:
        raise ValueError(f"unknown colormap {name!r}; choose one of: {', '.join(COLORMAPS)}")
    colours = sample_colorscale(get_colorscale(name), list(np.linspace(0, 1, 256)), colortype="tuple")
    return np.round(np.asarray(colours) * 255).astype(np.uint8)


def resize_map(cam: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of a layer-resolution map to (H, W) for display (align_corners=False).

    numpy only, so a page drawing stored maps never imports torch. The map was computed on the
    square (squashed) model input, so stretching it per axis onto the image's own aspect puts
    every cell back where it came from.
    """
    cam = np.nan_to_num(np.asarray(cam, dtype=np.float32))
    h, w = cam.shape
    H, W = int(shape[0]), int(shape[1])
    ys = np.clip((np.arange(H) + 0.5) * h / H - 0.5, 0, h - 1)
    xs = np.clip((np.arange(W) + 0.5) * w / W - 0.5, 0, w - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    wy, wx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = cam[y0][:, x0] * (1 - wx) + cam[y0][:, x1] * wx
    bottom = cam[y1][:, x0] * (1 - wx) + cam[y1][:, x1] * wx
    return top * (1 - wy) + bottom * wy


def contour(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """Boundary pixels of a bool mask (inner edge), `thickness` pixels wide."""
    mask = np.asarray(mask, dtype=bool)
    edge = np.zeros_like(mask)
    inner = mask.copy()
    for _ in range(max(1, thickness)):
        padded = np.pad(inner, 1, constant_values=False)
        eroded = (inner & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
        edge |= inner & ~eroded
        inner = eroded
    return edge


def to_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]


def overlay(image: np.ndarray, cam: np.ndarray | None = None, *, opacity: float = 0.45,
            colormap: str = "Jet", lung_mask: np.ndarray | None = None) -> np.ndarray:
    """RGB uint8 picture: the X-ray, its CAM (any resolution) and the lung contour.

    Each pixel's tint is `opacity` x the map's value there, so cold regions keep the X-ray
    readable instead of being washed in the colormap's low colour (a clinician must still see
    the marker the model may be looking at). Maps are min-max scaled for display only.
    """
    rgb = to_rgb(image).astype(np.float32)
    if cam is not None:
        heat = resize_map(cam, rgb.shape[:2])
        lo, hi = float(heat.min()), float(heat.max())
        heat = (heat - lo) / (hi - lo) if hi > lo else np.zeros_like(heat)
        colours = colormap_lut(colormap)[np.round(heat * 255).astype(np.uint8)].astype(np.float32)
        alpha = (float(np.clip(opacity, 0.0, 1.0)) * heat)[..., None]
        rgb = rgb * (1 - alpha) + colours * alpha
    out = np.clip(np.round(rgb), 0, 255).astype(np.uint8)
    if lung_mask is not None and lung_mask.shape == out.shape[:2] and lung_mask.any():
        out[contour(lung_mask, thickness=max(1, round(max(lung_mask.shape) / 200)))] = CONTOUR_RGB
    return out


def dataset_colours(datasets) -> dict[str, str]:
    palette = qualitative.Plotly
    return {d: palette[i % len(palette)] for i, d in enumerate(sorted(set(datasets)))}


def accuracy_focus_scatter(board: pd.DataFrame, baselines: dict[str, float], focus: str = "lung_mass") -> go.Figure:
    """Accuracy against lung focus, one point per (model, dataset): shortcut learners sit top-left.

    `board` needs dataset, model, accuracy, accuracy_ci_low/high and the `focus` column;
    `baselines` maps a dataset to the uniform map's score (the lungs' share of the image),
    drawn as a dashed vertical line in the dataset's colour: a point left of its line looks at
    the lungs less than a map that looks everywhere.
    """
    colours = dataset_colours(board["dataset"]) if not board.empty else {}
    fig = go.Figure()
    plotted = board.dropna(subset=[focus, "accuracy"]) if not board.empty else board
    labelled = len(plotted) <= MAX_LABELLED_POINTS  # beyond that, names overlap: hover tells them
    for dataset, rows in plotted.groupby("dataset", sort=True):
        err_plus = (rows["accuracy_ci_high"] - rows["accuracy"]).clip(lower=0)
        err_minus = (rows["accuracy"] - rows["accuracy_ci_low"]).clip(lower=0)
        fig.add_trace(go.Scatter(
            x=rows[focus], y=rows["accuracy"], mode="markers+text" if labelled else "markers", name=str(dataset),
            text=rows["model"], textposition="top center", textfont={"size": 11},
            marker={"size": 12, "color": colours[dataset], "line": {"width": 1, "color": "white"}},
            error_y={"type": "data", "array": err_plus, "arrayminus": err_minus, "thickness": 1, "width": 3},
            customdata=np.stack([rows["model"], rows.get("run_id", rows["model"])], axis=1),
            hovertemplate=(f"<b>%{{customdata[0]}}</b> on {dataset}<br>accuracy %{{y:.3f}}<br>"
                           f"{focus.replace('_', ' ')} %{{x:.3f}}<br>%{{customdata[1]}}<extra></extra>"),
        ))
    for value, names in _group_baselines(baselines, colours).items():
        fig.add_vline(x=value, line_dash="dash", line_color=colours[names[0]] if len(names) == 1 else "#555",
                      opacity=0.8, annotation_text=f"uniform map: {value:.2f} ({', '.join(names)})",
                      annotation_position="top right", annotation_font_size=10)
    y_low = 0.0
    if not plotted.empty:
        lowest = float(plotted["accuracy_ci_low"].fillna(plotted["accuracy"]).min())
        y_low = max(0.0, math.floor((lowest - 0.05) * 10) / 10)
    fig.add_shape(type="rect", x0=0, x1=0.25, y0=0.9, y1=1.02, fillcolor="crimson", opacity=0.06, line_width=0,
                  layer="below")
    fig.add_annotation(x=0.005, y=0.905, xanchor="left", yanchor="bottom", showarrow=False,
                       font={"size": 10, "color": "crimson"}, text="suspect shortcut zone")
    fig.update_layout(
        xaxis={"title": FOCUS_LABELS.get(focus, focus), "range": [0, 1.0]},
        yaxis={"title": "test accuracy (95% CI)", "range": [y_low, 1.02]},
        legend={"title": "dataset", "orientation": "h", "y": -0.18},
        margin={"l": 10, "r": 10, "t": 30, "b": 10}, height=460,
    )
    return fig


def _group_baselines(baselines: dict[str, float | None], colours: dict[str, str]) -> dict[float, list[str]]:
    """Datasets whose baselines agree to 2 decimals share one line (and one label)."""
    groups: dict[float, list[str]] = {}
    for dataset, value in sorted(baselines.items()):
        if value is None or not math.isfinite(value) or dataset not in colours:
            continue
        groups.setdefault(round(value, 2), []).append(dataset)
    return groups


def probability_bars(classes: list[str], probs, highlight: str | None = None) -> go.Figure:
    """A small horizontal bar chart of class probabilities (the predicted class highlighted)."""
    probs = [float(p) for p in probs]
    colours = ["#d62728" if c == highlight else "#8c9cb0" for c in classes]
    fig = go.Figure(go.Bar(x=probs, y=classes, orientation="h", marker_color=colours,
                           text=[f"{p:.2f}" for p in probs], textposition="auto"))
    fig.update_layout(height=40 + 26 * len(classes), margin={"l": 0, "r": 0, "t": 0, "b": 0},
                      xaxis={"range": [0, 1], "visible": False}, yaxis={"autorange": "reversed"})
    return fig
