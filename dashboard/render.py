"""Pictures of the audit: CAM overlays with lung contours, and the plotly figures.

No streamlit here, so every picture can be tested as an array or a figure. Colormaps come from
plotly's colour scales, so the dashboard's pages never import matplotlib (the report's drawing
library, benchmark/report/figures.py).
"""
from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass

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


@functools.lru_cache(maxsize=64)
def _blend_table(colormap: str, opacity: float) -> np.ndarray:
    grey = np.arange(256, dtype=np.float64)[:, None, None]
    level = np.arange(256, dtype=np.float64)[None, :, None]
    alpha = opacity * level / 255.0
    colours = colormap_lut(colormap).astype(np.float64)[None, :, :]
    table = np.floor(grey * (1 - alpha) + colours * alpha + 0.5).astype(np.uint8).reshape(256 * 256, 3)
    table.setflags(write=False)  # shared by every session's thread
    return table


def blend_table(colormap: str, opacity: float) -> np.ndarray:
    """(256 * 256) x 3 uint8, read-only: row `grey * 256 + level` is the overlay's colour for an
    X-ray pixel of `grey` under a map at 8-bit `level`: `grey * (1 - a) + colour(level) * a`,
    a = opacity * level / 255, rounded. Within one grey level of the formula with the map's own
    (unquantised) value: the level moves a by at most opacity / 510 (tests/test_dashboard_compare.py)."""
    return _blend_table(colormap, float(np.clip(opacity, 0.0, 1.0)))


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
    wy, wx = (ys - y0).astype(np.float32)[:, None], (xs - x0).astype(np.float32)[None, :]
    rows = cam[:, x0] * (1 - wx) + cam[:, x1] * wx  # h x W: bilinear is separable, so the
    return rows[y0] * (1 - wy) + rows[y1] * wy      # full-size work is one blend of two row gathers


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


@dataclass(frozen=True)
class Outline:
    """Where the lung contour is drawn on a picture of `shape`: flat pixel indices."""

    shape: tuple[int, int]
    index: np.ndarray


def lung_outline(mask: np.ndarray | None) -> Outline | None:
    """The contour overlays draw for `mask` (None without a mask or lungs): made once per mask and
    handed to each of its overlays (a page draws one X-ray under several models' maps)."""
    if mask is None or not mask.any():
        return None
    edge = contour(mask, thickness=max(1, round(max(mask.shape) / 200)))
    return Outline(shape=tuple(mask.shape), index=np.flatnonzero(edge))


def to_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]


def overlay(image: np.ndarray, cam: np.ndarray | None = None, *, opacity: float = 0.45,
            colormap: str = "Jet", lung_mask: np.ndarray | None = None,
            outline: Outline | None = None) -> np.ndarray:
    """RGB uint8 picture: the X-ray, its CAM (any resolution) and the lung contour.

    Each pixel's tint is `opacity` x the map's value there, so cold regions keep the X-ray
    readable instead of being washed in the colormap's low colour (a clinician must still see
    the marker the model may be looking at). Maps are min-max scaled for display only. The lung
    contour comes from `outline` (lung_outline, made once per mask) or else from `lung_mask`.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    if cam is None:
        out = np.array(to_rgb(image), dtype=np.uint8)  # a copy: the contour is drawn on it
    else:
        heat = resize_map(cam, image.shape[:2])
        lo, hi = float(heat.min()), float(heat.max())
        if hi > lo:  # min-max to 0-255, rounded (+ 0.5, then truncation), as 8-bit levels
            heat -= lo
            heat *= 255.0 / (hi - lo)
            heat += 0.5
            level = heat.astype(np.uint16)
        else:
            level = np.zeros(heat.shape, np.uint16)
        # every (grey, map level) pair's blended colour is looked up, not computed per pixel: the
        # overlays were the server's largest Python cost once the models moved to a worker
        # (bench/RESULTS.md); one gather per channel instead of a dozen float passes
        table = blend_table(colormap, opacity)
        if image.ndim == 2:
            index = image.astype(np.uint16)
            index <<= 8
            index |= level
            out = table[index]
        else:
            out = np.empty((*image.shape[:2], 3), np.uint8)
            for ch in range(3):
                index = image[..., ch].astype(np.uint16)
                index <<= 8
                index |= level
                out[..., ch] = table[index, ch]
    if outline is None and lung_mask is not None:
        outline = lung_outline(lung_mask)
    if outline is not None and outline.shape == out.shape[:2]:
        out.reshape(-1, 3)[outline.index] = CONTOUR_RGB
    return out


#: Pictures go to the browser as JPEG at this quality: JPEG encodes an overlay many times faster than
#: PNG's zlib, and streamlit decodes a PNG it was handed again to check its size, both on the server's
#: CPU for every session (bench/RESULTS.md, dashboard load). What is encoded is already a display copy
#: (8-bit, resized, tinted); stored images and maps are never re-encoded.
DISPLAY_JPEG_QUALITY = 90


def picture(image: np.ndarray) -> bytes:
    """JPEG bytes of a display image (H x W gray or H x W x 3 RGB, uint8) for st.image."""
    from PIL import Image

    array = np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
    if array.ndim == 3 and array.shape[2] != 3:
        array = to_rgb(array[..., 0] if array.shape[2] == 1 else array)
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=DISPLAY_JPEG_QUALITY)
    return buf.getvalue()


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


# ----------------------------------------------------------------------------- performance

def _class_colours(classes) -> dict[str, str]:
    palette = qualitative.Plotly
    return {c: palette[i % len(palette)] for i, c in enumerate(classes)}


def _rgba(hex_colour: str, alpha: float) -> str:
    h = hex_colour.lstrip("#")
    return f"rgba({int(h[0:2], 16)}, {int(h[2:4], 16)}, {int(h[4:6], 16)}, {alpha})"


def roc_figure(curves: dict, fpr: np.ndarray, classes, title: str = "") -> go.Figure:
    """One-vs-rest ROC per class (`benchmark.analysis.roc.RocCurve` on the grid `fpr`), each with its
    95% band as a shaded area; the legend gives each class's AUC. Traces per class: the band
    (named '<class> 95% band') and the curve ('<class> (AUC 0.93)'), after the chance diagonal."""
    colours = _class_colours(classes)
    fig = go.Figure(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance",
                               line={"dash": "dot", "color": "#999", "width": 1}, hoverinfo="skip"))
    for cls in classes:
        curve = curves.get(cls)
        if curve is None:
            continue
        if np.isfinite(curve.low).any():
            fig.add_trace(go.Scatter(
                x=np.r_[fpr, fpr[::-1]], y=np.r_[np.nan_to_num(curve.high, nan=1.0), np.nan_to_num(curve.low)[::-1]],
                fill="toself", fillcolor=_rgba(colours[cls], 0.18), line={"width": 0}, name=f"{cls} 95% band",
                legendgroup=cls, showlegend=False, hoverinfo="skip"))
        fig.add_trace(go.Scatter(
            x=fpr, y=curve.tpr, mode="lines", name=f"{cls} (AUC {curve.auc:.3f})", legendgroup=cls,
            line={"color": colours[cls], "width": 2},
            hovertemplate=f"{cls}<br>FPR %{{x:.2f}}<br>TPR %{{y:.3f}}<extra></extra>"))
    fig.update_layout(title=title or None, height=430, margin={"l": 10, "r": 10, "t": 40 if title else 10, "b": 10},
                      xaxis={"title": "false positive rate", "range": [0, 1], "constrain": "domain"},
                      yaxis={"title": "true positive rate", "range": [0, 1.01], "scaleanchor": "x"},
                      legend={"title": "class (one vs rest)", "x": 0.98, "xanchor": "right", "y": 0.02,
                              "yanchor": "bottom", "bgcolor": "rgba(255,255,255,0.7)"})
    return fig


def confusion_figure(counts: np.ndarray, classes, normalised: bool = False) -> go.Figure:
    """The confusion matrix as a heatmap: rows true class, columns predicted; counts, or each row's
    share (then each cell is also labelled with its count)."""
    counts = np.asarray(counts)
    totals = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, totals, out=np.full(counts.shape, np.nan), where=totals > 0)
    z = share if normalised else counts
    text = [[(f"{share[i, j]:.0%}<br>({counts[i, j]})" if normalised and totals[i, 0] else
              f"{counts[i, j]}") for j in range(len(classes))] for i in range(len(classes))]
    fig = go.Figure(go.Heatmap(
        z=z.tolist(), x=list(classes), y=list(classes), text=text, texttemplate="%{text}", colorscale="Blues",
        zmin=0, zmax=1 if normalised else max(1, int(counts.max()) if counts.size else 1),
        name="row share" if normalised else "count", showscale=False,
        hovertemplate="true %{y}<br>predicted %{x}<br>%{text}<extra></extra>"))
    fig.update_layout(height=120 + 60 * len(classes), margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      title="share of each true class" if normalised else "counts",
                      xaxis={"title": "predicted class", "side": "bottom"},
                      yaxis={"title": "true class", "autorange": "reversed"})
    return fig


def reliability_figure(rel) -> go.Figure:
    """Reliability diagram (`benchmark.analysis.calibration.Reliability`): accuracy per confidence bin
    as bars, each bin's mean confidence as points, the diagonal of perfect calibration, and the
    image count per bin on a second axis. The title carries the ECE."""
    centres = (rel.edges[:-1] + rel.edges[1:]) / 2
    width = float(rel.edges[1] - rel.edges[0])
    fig = go.Figure()
    fig.add_trace(go.Bar(x=centres, y=rel.counts, width=width * 0.9, name="images", yaxis="y2",
                         marker_color="rgba(120,120,120,0.25)", hovertemplate="%{y} images<extra></extra>"))
    fig.add_trace(go.Bar(x=centres, y=rel.accuracy, width=width * 0.9, name="accuracy", marker_color="#1f77b4",
                         customdata=np.stack([rel.edges[:-1], rel.edges[1:], rel.counts], axis=1),
                         hovertemplate=("confidence (%{customdata[0]:.2f}, %{customdata[1]:.2f}]<br>"
                                        "accuracy %{y:.3f} over %{customdata[2]} images<extra></extra>")))
    fig.add_trace(go.Scatter(x=centres, y=rel.confidence, mode="markers", name="mean confidence",
                             marker={"color": "#d62728", "symbol": "line-ew-open", "size": 18,
                                     "line": {"width": 2, "color": "#d62728"}},
                             hovertemplate="mean confidence %{y:.3f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                             line={"dash": "dot", "color": "#555", "width": 1}, hoverinfo="skip"))
    fig.update_layout(
        title=f"ECE {rel.ece:.3f} · MCE {rel.mce:.3f} · {rel.n} predictions", barmode="overlay", height=430,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        xaxis={"title": "confidence (highest class probability)", "range": [0, 1]},
        yaxis={"title": "accuracy", "range": [0, 1.02]},
        # the image counts stay in the lower quarter, under the accuracy bars they explain
        yaxis2={"title": "images", "overlaying": "y", "side": "right", "showgrid": False,
                "range": [0, 4 * max(1, int(rel.counts.max()) if rel.counts.size else 1)]},
        legend={"orientation": "h", "y": -0.2})
    return fig


# ----------------------------------------------------------------------------- compare as PNG

def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow built without FreeType: the fixed bitmap font
        return ImageFont.load_default()


TILE_MIN_SIDE = 256  # pixels: a tile's title and numbers need room, whatever the stored image's size


def comparison_png(tiles: list[tuple[str, np.ndarray, list[str]]], *, columns: int = 4, title: str = "") -> bytes:
    """The compare page's side-by-side overlays as one PNG: each tile is (title, RGB picture, caption
    lines), laid out `columns` per row on white, with an optional title line. PIL only (no plotly
    image export, which needs kaleido)."""
    from io import BytesIO

    from PIL import Image, ImageDraw

    if not tiles:
        raise ValueError("no pictures to put side by side")
    side = max(TILE_MIN_SIDE, *(max(t[1].shape[0], t[1].shape[1]) for t in tiles))  # small X-rays scaled up
    pad, line = 10, 18
    head, foot = line + 6, line * max(len(t[2]) for t in tiles) + 6
    cols = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // cols)
    top = line + 2 * pad if title else pad
    sheet = Image.new("RGB", (cols * (side + pad) + pad, top + rows * (head + side + foot + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    bold, small = _font(15), _font(13)
    if title:
        draw.text((pad, pad), title, fill=(0, 0, 0), font=bold)
    for n, (name, picture, lines) in enumerate(tiles):
        x = pad + (n % cols) * (side + pad)
        y = top + (n // cols) * (head + side + foot + pad)
        draw.text((x, y), str(name), fill=(0, 0, 0), font=bold)
        image = Image.fromarray(to_rgb(np.asarray(picture, dtype=np.uint8)))
        scale = side / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
        sheet.paste(image, (x, y + head))
        for i, text in enumerate(lines):
            draw.text((x, y + head + image.height + 4 + i * line), str(text), fill=(40, 40, 40), font=small)
    out = BytesIO()
    sheet.save(out, format="PNG")
    return out.getvalue()


#: the grey a class-mean map is drawn on: no single X-ray lies under a mean over many
MEAN_MAP_BACKGROUND = 96


def mean_map_picture(mean_map: np.ndarray, lung_map: np.ndarray, side: int, *, opacity: float = 0.7,
                     colormap: str = "Jet") -> np.ndarray:
    """RGB picture of a grid map (a class mean or a cluster mean, image coordinates) on grey, with
    the outline of its images' mean lung mask (cells at least half lung)."""
    background = np.full((side, side), MEAN_MAP_BACKGROUND, dtype=np.uint8)
    lungs = resize_map(np.asarray(lung_map, dtype=np.float32), (side, side)) >= 0.5
    return overlay(background, mean_map, opacity=opacity, colormap=colormap,
                   outline=lung_outline(lungs) if lungs.any() else None)
