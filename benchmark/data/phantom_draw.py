"""Drawing of the phantom chest X-ray: anatomy, lung patterns, acquisition (split from phantom.py
to keep both files small; nothing here is public API).

Everything is drawn analytically on the pixel grid mapped back into "anatomy" coordinates
(x, y in about [-1, 1], x to the image's right, y down), so the lung mask is exact at the
image's own resolution after rotation/shift/scale: no resampling, no interpolated masks.
Brightness is attenuation: air dark, soft tissue grey, bone and heart bright.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

ANATOMY_STREAM, IMAGE_STREAM, PATTERN_STREAM, PATTERN_TEXTURE_STREAM = 3, 4, 6, 7
ANATOMY_MAX = 229  # anatomy never reaches this, so the marker (>= 240) is always distinct
# Field of view: the thorax is drawn this much larger than the unit square so the lungs cover
# about a third of the image, as in the pack's cohen masks (median share 0.37).
ZOOM = 1.25


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur in numpy (scipy is not installed; PIL cannot blur float images)."""
    if sigma < 0.2:
        return img
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2).astype(np.float32)
    taps /= taps.sum()
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        padded = np.pad(img, pad, mode="edge")
        n = img.shape[axis]
        out = np.zeros_like(img)
        for k, t in enumerate(taps):
            out += t * (padded[k:k + n] if axis == 0 else padded[:, k:k + n])
        img = out
    return img


def smooth_noise(rng: np.random.Generator, size: int, grid: int) -> np.ndarray:
    """Low-frequency noise (about unit range): random values on a coarse grid, bicubic upsampled."""
    coarse = rng.standard_normal((grid, grid)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC))


@dataclass
class Lung:
    """One lung field: centre, half-width, half-height and the side (-1 image left, +1 right)."""

    cx: float
    cy: float
    a: float
    b: float
    side: int


@dataclass
class Canvas:
    """An image being drawn: float intensity plus what the lung pattern and finishing need."""

    intensity: np.ndarray
    lung_mask: np.ndarray
    lung_depth: np.ndarray  # > 0 exactly inside the mask, grows towards the lung's interior
    x: np.ndarray
    y: np.ndarray
    lungs: tuple[Lung, Lung]
    noise: np.ndarray
    window: tuple[float, float]
    gamma: float

    def finish(self) -> np.ndarray:
        """Acquisition: detector noise, exposure window and gamma, capped below the marker."""
        v = (self.intensity + self.noise - self.window[0]) / (self.window[1] - self.window[0])
        v = np.clip(v, 0.0, 1.0) ** self.gamma
        return np.round(v * ANATOMY_MAX).astype(np.uint8)


def _lung_depth(x, y, lung: Lung, heart, dome_drop: float, mediastinum: float) -> np.ndarray:
    """Signed depth of a kidney-shaped lung field: ellipse with a narrow apex and a square base,
    cut by the diaphragm dome, the heart and the mediastinum; > 0 inside."""
    u = (x - lung.cx) / lung.a
    v = (y - lung.cy) / lung.b
    width = 0.72 + 0.33 * np.clip((v + 1) / 2, 0, 1)
    av = np.abs(v)
    vv = np.where(v > 0, av * av * av * np.sqrt(av), av * av)
    d_shape = 1.0 - ((u / width) ** 2 + vv)
    dome = lung.cy + lung.b * (0.92 - dome_drop * np.clip(1 - (u - 0.1 * lung.side) ** 2, 0, 1))
    d_dome = (dome - y) / (0.5 * lung.b)
    hx, hy, ha, hb, cos_t, sin_t = heart
    hu, hv = (x - hx) * cos_t + (y - hy) * sin_t, -(x - hx) * sin_t + (y - hy) * cos_t
    d_heart = np.sqrt((hu / ha) ** 2 + (hv / hb) ** 2) - 1.0
    d_med = (np.abs(x) - mediastinum) / 0.3
    return np.minimum(np.minimum(d_shape, d_dome), np.minimum(d_heart, d_med))


def draw_anatomy(rng: np.random.Generator, seed: int, index: int, size: int) -> Canvas:
    """Patient anatomy from `rng` (shared by the patient's images); pose and acquisition from a
    per-image stream, so a patient's images differ in position, exposure, blur and noise."""
    # Patient: body, lungs, heart, bones.
    chest_w = _u(rng, 0.84, 0.94)
    lung_a, lung_b, lung_cy = _u(rng, 0.28, 0.33), _u(rng, 0.58, 0.66), _u(rng, -0.06, 0.02)
    spread = _u(rng, 0.37, 0.42)
    lungs = tuple(Lung(s * spread + _u(rng, -0.02, 0.02), lung_cy + _u(rng, -0.02, 0.02),
                       lung_a * _u(rng, 0.94, 1.06), lung_b * _u(rng, 0.95, 1.04), s)
                  for s in (-1, 1))
    theta_h = np.deg2rad(_u(rng, -25, -10))
    heart = (_u(rng, 0.07, 0.13), _u(rng, 0.36, 0.44), _u(rng, 0.29, 0.35), _u(rng, 0.21, 0.26),
             float(np.cos(theta_h)), float(np.sin(theta_h)))
    dome_drops = (_u(rng, 0.18, 0.3), _u(rng, 0.12, 0.25))  # right dome (image left) higher
    mediastinum = _u(rng, 0.08, 0.11)
    rib_y0, rib_sp = _u(rng, -0.84, -0.76), _u(rng, 0.115, 0.135)
    pose = (_u(rng, -4, 4), _u(rng, -0.04, 0.04), _u(rng, -0.04, 0.04), _u(rng, 0.94, 1.04))

    img_rng = np.random.default_rng([seed, IMAGE_STREAM, index])
    theta = float(np.deg2rad(pose[0] + _u(img_rng, -2.5, 2.5)))
    tx, ty = pose[1] + _u(img_rng, -0.03, 0.03), pose[2] + _u(img_rng, -0.03, 0.03)
    scale = ZOOM * pose[3] * _u(img_rng, 0.97, 1.03)
    grid = ((np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1)
    gx, gy = grid[None, :] - tx, grid[:, None] - ty
    x = ((np.cos(theta) * gx + np.sin(theta) * gy) / scale).astype(np.float32)
    y = ((-np.sin(theta) * gx + np.cos(theta) * gy) / scale).astype(np.float32)

    ax = np.abs(x)
    body_w = 0.26 + (chest_w - 0.26) / (1 + np.exp(-(y + 0.76) / 0.07))
    body = np.sqrt(np.clip(1 - (x / body_w) ** 2, 0, 1))
    depths = [_lung_depth(x, y, lung, heart, drop, mediastinum)
              for lung, drop in zip(lungs, dome_drops)]
    depth = np.maximum(*depths)
    lung_mask = depth > 0
    air = np.sqrt(np.clip(depth / 0.12, 0, 1))

    hx, hy, ha, hb, cos_t, sin_t = heart
    hu, hv = (x - hx) * cos_t + (y - hy) * sin_t, -(x - hx) * sin_t + (y - hy) * cos_t
    heart_thick = np.sqrt(np.clip(1 - (hu / ha) ** 2 - (hv / hb) ** 2, 0, 1))
    medi = np.exp(-((x / (mediastinum + 0.03)) ** 2) ** 2) * (y > -0.85)
    spine = np.clip(1 - ((x / 0.07) ** 2) ** 2, 0, 1) * (0.7 + 0.3 * np.cos(np.pi * y / 0.055) ** 2)
    # Posterior ribs: one band per rib, rising slightly then falling towards the side.
    t = (y - 0.9 * (ax - 0.25) ** 2 - rib_y0) / rib_sp
    frac = t - np.floor(t)
    ribs = np.sqrt(np.clip(np.sin(np.pi * np.clip(frac / 0.4, 0, 1)), 0, 1)) * ((t >= 0) & (t < 10))
    ribs *= np.clip((ax - 0.06) / 0.05, 0, 1) * np.clip((body_w - ax) / 0.12, 0, 1)
    # Clavicles: bright bars from the sternum out to the shoulders.
    (x0, y0), (sx, sy) = (0.08, -0.66), (0.54, -0.14)
    h = np.clip(((ax - x0) * sx + (y - y0) * sy) / (sx * sx + sy * sy), 0, 1)
    clav = np.exp(-(((ax - x0 - h * sx) ** 2 + (y - y0 - h * sy) ** 2) / 0.0009))

    tex_rng = np.random.default_rng([seed, IMAGE_STREAM, index, 1])
    ridge = np.clip(1 - np.abs(smooth_noise(tex_rng, size, 36)), 0, 1)
    vessels = (ridge * ridge * ridge
               * np.exp(-np.hypot(ax - 0.2, y - 0.1) / 0.25))
    intensity = (0.03 + 0.5 * body - 0.4 * air + 0.14 * vessels * air + 0.2 * heart_thick
                 + 0.16 * medi + 0.16 * spine + 0.09 * ribs * body + 0.15 * clav)
    intensity = gaussian_blur(intensity.astype(np.float32), _u(img_rng, 0.4, 1.2) * size / 256)
    noise = img_rng.standard_normal((size, size), dtype=np.float32) * _u(img_rng, 0.006, 0.02)
    window = (_u(img_rng, -0.02, 0.06), _u(img_rng, 0.85, 1.05))
    return Canvas(intensity, lung_mask, depth, x, y, lungs, noise, window, _u(img_rng, 0.75, 1.3))


def _blob(x, y, cx, cy, sx, sy):
    return np.exp(-0.5 * (((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2))


def draw_lung_pattern(canvas: Canvas, label: str, seed: int, patient: int,
                      index: int) -> np.ndarray:
    """The class's honest signal, zero outside the lung mask (fades to zero at its edge).

    Placement comes from the patient (the disease stays put across a patient's images);
    the mottled texture from the image.
    """
    if label == "normal":
        return np.zeros_like(canvas.intensity)
    rng = np.random.default_rng([seed, PATTERN_STREAM, patient])
    tex_rng = np.random.default_rng([seed, PATTERN_TEXTURE_STREAM, index])
    size = canvas.intensity.shape[0]
    x, y = canvas.x, canvas.y
    if label == "pneumonia":  # one dense lobar consolidation in one lung
        lung = canvas.lungs[int(rng.integers(0, 2))]
        cx = lung.cx + lung.side * lung.a * _u(rng, -0.1, 0.45)
        cy = lung.cy + lung.b * _u(rng, -0.3, 0.35)
        sx, sy = lung.a * _u(rng, 0.4, 0.6), lung.b * _u(rng, 0.25, 0.4)
        pattern = _u(rng, 0.36, 0.5) * _blob(x, y, cx, cy, sx, sy)
        if rng.random() < 0.5:  # bounded above by a fissure: a sharp upper edge
            pattern *= 1 / (1 + np.exp(-(y - (cy - 0.6 * sy)) / 0.015))
        pattern *= 0.8 + 0.2 * smooth_noise(tex_rng, size, 20)
    else:  # covid: patchy ground glass, peripheral and lower zone, in both lungs
        pattern = np.zeros_like(canvas.intensity)
        for lung in canvas.lungs:
            for _ in range(int(rng.integers(3, 5))):
                cx = lung.cx + lung.side * lung.a * _u(rng, 0.3, 0.7)
                cy = lung.cy + lung.b * _u(rng, 0.05, 0.6)
                s = _u(rng, 0.08, 0.13)
                pattern += _u(rng, 0.16, 0.24) * _blob(x, y, cx, cy, s, s * _u(rng, 1.0, 1.6))
        pattern *= np.clip(0.7 + 0.5 * smooth_noise(tex_rng, size, 32), 0.2, 1.3)
    inside = np.clip(canvas.lung_depth / 0.08, 0, 1)  # 0 on and outside the mask edge
    return (pattern * inside).astype(np.float32)
