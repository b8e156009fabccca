"""Deterministic synthetic inspection data: surfaces of one material, some with defects and their pixel masks.

Every image of a set shows the same kind of surface, as parts on a line do: a crop of one texture field
(the set's lattice noise and style, drawn from the seed) at a random offset and a small rotation, under a
slightly different brightness, contrast and light gradient, with sensor noise. Textures: ``metal``
(brushed: anisotropic noise streaks and a gentle light gradient), ``fabric`` (plain weave with jittered,
wavy threads), ``wood`` (growth rings bent by noise, with fibres), and, when scikit-image is installed,
``brick``, ``grass``, ``gravel`` (rotated crops of its sample photos, tinted).

Defect families, each its own folder: ``scratch`` (thin bright or dark curved lines), ``crack`` (a dark
branching jagged line), ``spot`` (a stain with soft edges and a colour shift), ``dent`` (a local bump seen
through its shading: a light and a dark flank), ``missing`` (material gone: a dark hole with a lit rim),
``contamination`` (foreign particles and fibres of another colour). A defect is drawn on the clean surface
before the sensor noise; its mask is the pixels it changed by more than ``CHANGE`` (2% of full scale),
dilated by 1 px, and the change outside the mask is undone, so the mask holds every changed pixel. A
defect covers ``AREA`` (0.2%-5%) of the image: drawings outside that range are drawn again (below 64 px the
1 px dilation alone can push a hole past 5%; the last drawing is kept).

Splits of ``n`` images (``counts`` in dataset.yaml): train/good 50%, train/<family> 10% (defects for the
supervised mode), val 15% and test 25% (the rest), each half good, half defect. Defects go to the six
families in turn across all splits, so every family gets a sixth of each split's defects (to within one).

Image ``index`` of a split depends only on (seed, texture, size, split, index), so the files are
byte-identical whatever the number of workers.
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

from parvis.data.inspection import GOOD, GROUND_TRUTH, MASK_SUFFIX
from parvis.data.synth import _default_workers, run_chunks
from parvis.errors import ParvisError

PROCEDURAL_TEXTURES = ("metal", "fabric", "wood")
PHOTO_TEXTURES = ("brick", "grass", "gravel")  # scikit-image's sample textures: a test-only extra
TEXTURES = PROCEDURAL_TEXTURES + PHOTO_TEXTURES
FAMILIES = ("scratch", "crack", "spot", "dent", "missing", "contamination")
SHARES = {"train_good": 0.50, "train_defect": 0.10, "val": 0.15}  # test: the rest (about 25%)
CHANGE = 0.02  # a pixel is a defect pixel when the defect moved a channel by more than this (of full scale)
AREA = (0.002, 0.05)  # a defect's share of the image
MIN_N, MIN_SIZE, MAX_SIZE = 8, 32, 2048

_STREAM = 0x1A5BEC7  # keeps these images apart from the other generators' streams
_STYLE_STREAM = 0x57F1E
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


# --- noise --------------------------------------------------------------------------------------


def _noise(table: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Smooth value noise in [0, 1] of the periodic lattice ``table`` (square, a power of two a side) at
    continuous lattice coordinates."""
    n = table.shape[0]
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)  # smoothstep: no creases along the lattice
    # Flat indices with a bit mask for the wrap-around: 3x as fast as 2-D fancy indexing with %.
    i, j = x0.astype(np.int32) & (n - 1), (y0.astype(np.int32) & (n - 1)) * n
    i1, j1 = (i + 1) & (n - 1), (j + n) & (n * n - 1)
    flat = table.ravel()
    a, b, c, d = flat.take(j + i), flat.take(j + i1), flat.take(j1 + i), flat.take(j1 + i1)
    return (a + (b - a) * fx + (c - a) * fy + (a - b - c + d) * fx * fy).astype(np.float32, copy=False)


def _smooth_noise(table: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """_noise of a field that is smooth at the pixel scale (lattice cells of 16 px or more), evaluated at every
    4th pixel and upsampled: a sixteenth of the work for the same field, shifted by a fraction of a cell."""
    coarse = _noise(table, x[::4, ::4], y[::4, ::4])
    height, width = x.shape
    return np.asarray(Image.fromarray(coarse, mode="F").resize((width, height), Image.Resampling.BILINEAR))


def _streaks(table: np.ndarray, u: np.ndarray, v: np.ndarray, size: int, fine: float) -> np.ndarray:
    """Noise stretched along u: long thin streaks, from ``fine`` px wide to a few times that."""
    total = np.zeros(u.shape, np.float32)
    for octave, (along, across, weight) in enumerate(((0.9, 1.0, 0.5), (0.35, 2.7, 0.3), (0.15, 8.0, 0.2))):
        shift = 61.7 * octave  # decorrelates the octaves, which share one lattice
        total += weight * _noise(table, u / (along * size) + shift, v / max(1.0, across * fine) + shift)
    return total


def _smoothstep(lo: float, hi: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - lo) / (hi - lo), 0, 1)
    return t * t * (3 - 2 * t)


@lru_cache(maxsize=16)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x) relative to the image centre, cached: every image of a run needs them."""
    c = np.arange(size, dtype=np.float32) + np.float32(0.5 - size / 2)
    y, x = np.meshgrid(c, c, indexing="ij")
    y.flags.writeable = x.flags.writeable = False
    return y, x


# --- textures -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Style:
    """What every image of a set shares: the texture field's lattice and its colours and scales."""

    texture: str
    table: np.ndarray
    colors: tuple[tuple[float, float, float], ...]
    scale: float  # the texture's characteristic period, as a share of the image side
    contrast: float


@lru_cache(maxsize=8)
def set_style(texture: str, seed: int) -> Style:
    rng = np.random.default_rng([seed, _STREAM, _STYLE_STREAM, TEXTURES.index(texture)])
    table = rng.random((256, 256), dtype=np.float32)
    if texture == "metal":
        grey = rng.uniform(0.5, 0.68)
        tint = (grey * rng.uniform(0.96, 1.0), grey * rng.uniform(0.98, 1.01), grey * rng.uniform(1.0, 1.05))
        return Style(texture, table, (tint,), 1.0, rng.uniform(0.18, 0.28))
    if texture == "fabric":
        palettes = [((0.2, 0.3, 0.55), (0.28, 0.36, 0.6)), ((0.78, 0.7, 0.55), (0.7, 0.62, 0.48)),
                    ((0.45, 0.45, 0.47), (0.55, 0.55, 0.57)), ((0.55, 0.2, 0.18), (0.6, 0.3, 0.25))]  # fmt: skip
        warp, weft = palettes[int(rng.integers(len(palettes)))]
        return Style(texture, table, (warp, weft), rng.uniform(1 / 30, 1 / 20), rng.uniform(0.55, 0.7))
    if texture == "wood":
        light = (rng.uniform(0.75, 0.85), rng.uniform(0.55, 0.63), rng.uniform(0.36, 0.42))
        dark = (light[0] * 0.62, light[1] * 0.55, light[2] * 0.5)
        return Style(texture, table, (light, dark), rng.uniform(1 / 10, 1 / 7), rng.uniform(0.45, 0.6))
    tints = {"brick": ((0.3, 0.13, 0.09), (0.92, 0.64, 0.52)), "grass": ((0.06, 0.17, 0.03), (0.58, 0.8, 0.32)),
             "gravel": ((0.17, 0.16, 0.15), (0.86, 0.83, 0.77))}  # fmt: skip
    return Style(texture, table, tints[texture], 1.0, 1.0)


def _metal(style: Style, u: np.ndarray, v: np.ndarray, size: int) -> np.ndarray:
    fine = 1.1 * size / 256
    streaks = _streaks(style.table, u, v, size, fine)
    mottle = _smooth_noise(style.table, u / (0.45 * size) + 150.3, v / (0.45 * size) + 150.3)
    value = 1 + style.contrast * (streaks - 0.5) + 0.08 * (mottle - 0.5)
    return value[..., None] * np.array(style.colors[0], np.float32)


def _fabric(style: Style, u: np.ndarray, v: np.ndarray, size: int) -> np.ndarray:
    period = max(4.0, style.scale * size)
    table = style.table
    # Threads wander a little and are not evenly spaced: woven by a machine, but out of soft yarn.
    uu = u + (_smooth_noise(table, v / (6 * period) + 17.1, u / (9 * period)) - 0.5) * 0.45 * period
    vv = v + (_smooth_noise(table, u / (6 * period) + 83.9, v / (9 * period)) - 0.5) * 0.45 * period
    i, j = np.floor(uu / period), np.floor(vv / period)
    fu, fv = uu / period - i, vv / period - j
    warp_on_top = (i + j) % 2 == 0  # plain weave
    across_u, across_v = np.sqrt(np.sin(np.pi * fu)), np.sqrt(np.sin(np.pi * fv))  # rounded yarn
    shade = np.where(
        warp_on_top, across_u * (0.7 + 0.3 * np.sin(np.pi * fv)), across_v * (0.7 + 0.3 * np.sin(np.pi * fu))
    )
    n = table.shape[0]
    thread = np.where(warp_on_top, table[i.astype(np.int64) % n, 7], table[j.astype(np.int64) % n, 11])
    # Fibres run along the thread on top: fine across it, long along it.
    fine = max(1.0, size / 256)
    fibre = _noise(table, np.where(warp_on_top, u / fine, u / period), np.where(warp_on_top, v / period, v / fine))
    value = (1 - style.contrast + style.contrast * shade) * (0.92 + 0.16 * thread) * (0.9 + 0.2 * fibre)
    warp, weft = (np.array(c, np.float32) for c in style.colors)
    return value[..., None] * np.where(warp_on_top[..., None], warp, weft)


def _wood(style: Style, u: np.ndarray, v: np.ndarray, size: int) -> np.ndarray:
    period = style.scale * size
    table = style.table
    # Rings bent by two scales of noise and unevenly spaced: growth differs from year to year.
    bend = (_smooth_noise(table, u / (1.2 * size) + 31.0, v / (1.5 * size) + 31.0) - 0.5) * 1.6 * period
    bend += (_smooth_noise(table, u / (0.3 * size) + 71.0, v / (0.4 * size) + 71.0) - 0.5) * 0.35 * period
    rings = (v + bend) / period
    rings += 0.6 * _noise(table, np.floor(rings) * 0.37 + 3.1, u / (2 * size) + 9.7)
    ring = rings - np.floor(rings)
    late = _smoothstep(0.5, 0.88, ring) * (1 - _smoothstep(0.92, 1.0, ring))  # dark latewood, then a sharp edge
    fibres = _streaks(style.table, u + 500.0, v + 500.0, size, 1.3 * size / 256)
    weight = np.clip(style.contrast * late + 0.7 * (fibres - 0.5) + 0.15, 0, 1)
    light, dark = (np.array(c, np.float32) for c in style.colors)
    return light + (dark - light) * weight[..., None]


@lru_cache(maxsize=4)
def _photo_source(name: str) -> np.ndarray:
    """scikit-image's sample texture as float32 grey in [0, 1], stretched between its 2nd and 98th percentile."""
    import skimage.data  # noqa: PLC0415 - optional test-only extra, checked by check_args

    grey = getattr(skimage.data, name)().astype(np.float32)
    lo, hi = np.percentile(grey, (2, 98))
    return np.clip((grey - lo) / max(hi - lo, 1.0), 0, 1)


def _photo(style: Style, rng: np.random.Generator, x: np.ndarray, y: np.ndarray, size: int) -> np.ndarray:
    """A rotated crop of the sample photo (upscaled where the image is larger than the photo allows)."""
    source = _photo_source(style.texture)
    side = source.shape[0]
    step = min(1.0, (side - 3) / (size * 1.15))  # source pixels per image pixel; 1.15 > cos + sin of 5 degrees
    half = size * step * 1.15 / 2
    cx, cy = rng.uniform(half + 1, side - 2 - half, 2)
    angle = rng.uniform(-math.radians(5), math.radians(5))
    cos, sin = math.cos(angle), math.sin(angle)
    sx = np.clip(cx + step * (x * cos - y * sin), 0, side - 1.001)
    sy = np.clip(cy + step * (x * sin + y * cos), 0, side - 1.001)
    x0, y0 = np.floor(sx).astype(np.intp), np.floor(sy).astype(np.intp)
    fx, fy = sx - x0, sy - y0
    grey = (
        source[y0, x0] * (1 - fx) * (1 - fy)
        + source[y0, x0 + 1] * fx * (1 - fy)
        + source[y0 + 1, x0] * (1 - fx) * fy
        + source[y0 + 1, x0 + 1] * fx * fy
    )
    dark, light = (np.array(c, np.float32) for c in style.colors)
    return dark + (light - dark) * grey[..., None]


def render_surface(style: Style, rng: np.random.Generator, size: int) -> np.ndarray:
    """A defect-free part: (size, size, 3) float32 in [0, 1], before sensor noise."""
    y, x = _grid(size)
    if style.texture in PHOTO_TEXTURES:
        image = _photo(style, rng, x, y, size)
    else:
        angle = rng.uniform(-math.radians(4), math.radians(4))
        cos, sin = math.cos(angle), math.sin(angle)
        # An offset into the field up to a whole lattice period: a different crop of the same material.
        offset_u, offset_v = rng.uniform(0, 40 * size, 2)
        u, v = x * cos + y * sin + offset_u, -x * sin + y * cos + offset_v
        texture = {"metal": _metal, "fabric": _fabric, "wood": _wood}[style.texture]
        image = texture(style, u.astype(np.float32), v.astype(np.float32), size)
    theta = rng.uniform(0, 2 * math.pi)
    light = 1 + rng.uniform(0.04, 0.14 if style.texture == "metal" else 0.08) * (
        (x * math.cos(theta) + y * math.sin(theta)) / (size / 2)
    )
    contrast, brightness = rng.uniform(0.93, 1.07), rng.uniform(-0.035, 0.035)
    image = (image * light[..., None] - 0.5) * np.float32(contrast) + np.float32(0.5 + brightness)
    return np.clip(image, 0, 1).astype(np.float32)


# --- defects ------------------------------------------------------------------------------------


def _alpha(size: int, draw: Callable[[ImageDraw.ImageDraw, int], None]) -> np.ndarray:
    """Coverage in [0, 1] of what ``draw(canvas, supersample)`` paints, anti-aliased by supersampling."""
    ss = 4 if size <= 512 else 2
    canvas = Image.new("L", (size * ss, size * ss), 0)
    draw(ImageDraw.Draw(canvas), ss)
    return np.asarray(canvas.resize((size, size), Image.Resampling.BOX), dtype=np.float32) / np.float32(255)


def _bezier(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, count: int = 24) -> np.ndarray:
    t = np.linspace(0, 1, count)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def _line(points: np.ndarray, width: float, fill: int = 255) -> Callable[[ImageDraw.ImageDraw, int], None]:
    def draw(canvas: ImageDraw.ImageDraw, ss: int) -> None:
        # Pixel centres are at .5 in image pixels; the supersampled canvas's are at (k + 0.5) * ss - 0.5.
        xy = [tuple(p) for p in ((points + 0.5) * ss - 0.5).tolist()]
        canvas.line(xy, fill=fill, width=max(1, round(width * ss)), joint="curve")

    return draw


def _paint(image: np.ndarray, alpha: np.ndarray, target: np.ndarray) -> np.ndarray:
    return image + (target - image) * alpha[..., None]


def _blob(rng: np.random.Generator, size: int, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(signed inside field: > 0 inside an irregular blob, in units of its radius; x; y) in image pixels."""
    y, x = _grid(size)
    cx, cy = rng.uniform(-0.35, 0.35, 2) * size
    angle, aspect = rng.uniform(0, math.pi), rng.uniform(1.0, 1.8)
    cos, sin = math.cos(angle), math.sin(angle)
    du, dv = (x - cx) * cos + (y - cy) * sin, -(x - cx) * sin + (y - cy) * cos
    distance = np.sqrt((du / (radius * math.sqrt(aspect))) ** 2 + (dv * math.sqrt(aspect) / radius) ** 2)
    table = rng.random((32, 32), dtype=np.float32)
    wobble = _noise(table, x / (0.6 * radius) + 7.3, y / (0.6 * radius) + 7.3)
    return 1 - distance + 0.4 * (wobble - 0.5), x - cx, y - cy


def _scratch(rng: np.random.Generator, image: np.ndarray, size: int) -> np.ndarray:
    s = size / 256
    alpha = np.zeros(image.shape[:2], np.float32)
    centre = rng.uniform(0.2, 0.8, 2) * size
    angle = rng.uniform(0, math.pi)
    for k in range(1 + int(rng.random() < 0.4)):  # sometimes a second, shorter one beside the first
        length = rng.uniform(0.18, 0.4) * size * (0.6 if k else 1.0)
        direction = np.array([math.cos(angle), math.sin(angle)]) + rng.normal(0, 0.08, 2) * k
        normal = np.array([-direction[1], direction[0]])
        start = centre + normal * k * rng.uniform(3, 8) * s
        p0, p2 = start - direction * length / 2, start + direction * length / 2
        p1 = start + normal * rng.uniform(-0.25, 0.25) * length
        width = max(1.0, rng.uniform(0.9, 2.0) * s)
        alpha = np.maximum(alpha, _alpha(size, _line(_bezier(p0, p1, p2), width)))
    if rng.random() < 0.6:  # bright: the cut catches the light
        target = 1 - (1 - image) * np.float32(rng.uniform(0.2, 0.45))
    else:
        target = image * np.float32(rng.uniform(0.3, 0.5))
    return _paint(image, alpha * np.float32(rng.uniform(0.75, 1.0)), target)


def _crack(rng: np.random.Generator, image: np.ndarray, size: int) -> np.ndarray:
    s = size / 256
    point = rng.uniform(0.2, 0.8, 2) * size
    heading = rng.uniform(0, 2 * math.pi)
    step = rng.uniform(0.018, 0.028) * size
    trunk = [point]
    for _ in range(int(rng.integers(10, 18))):
        heading += rng.normal(0, 0.45)
        trunk.append(trunk[-1] + step * np.array([math.cos(heading), math.sin(heading)]))
    trunk = np.array(trunk)
    width = max(1.0, rng.uniform(1.4, 2.4) * s)
    paths = [(trunk, width)]
    for _ in range(int(rng.integers(1, 4))):
        k = int(rng.integers(2, len(trunk) - 2))
        direction = trunk[k + 1] - trunk[k - 1]
        branch_heading = math.atan2(direction[1], direction[0]) + rng.choice([-1, 1]) * rng.uniform(0.5, 1.1)
        branch = [trunk[k]]
        for _ in range(int(rng.integers(3, 7))):
            branch_heading += rng.normal(0, 0.5)
            branch.append(branch[-1] + 0.8 * step * np.array([math.cos(branch_heading), math.sin(branch_heading)]))
        paths.append((np.array(branch), max(1.0, 0.6 * width)))
    alpha = np.zeros(image.shape[:2], np.float32)
    for points, w in paths:
        alpha = np.maximum(alpha, _alpha(size, _line(points, w)))
    return _paint(image, alpha, image * np.float32(rng.uniform(0.1, 0.3)))


def _spot(rng: np.random.Generator, image: np.ndarray, size: int) -> np.ndarray:
    tints = [(0.8, 0.5, 0.3), (0.45, 0.42, 0.4), (0.65, 0.72, 0.35), (1.35, 1.25, 1.1)]  # rust, oil, dried, bleach
    tint = np.array(tints[int(rng.integers(len(tints)))], np.float32)
    inside, _, _ = _blob(rng, size, rng.uniform(0.03, 0.07) * size)
    alpha = _smoothstep(0, rng.uniform(0.15, 0.45), inside)  # a soft edge
    return _paint(image, alpha * np.float32(rng.uniform(0.75, 1.0)), np.clip(image * tint, 0, 1))


def _dent(rng: np.random.Generator, image: np.ndarray, size: int) -> np.ndarray:
    y, x = _grid(size)
    cx, cy = rng.uniform(-0.32, 0.32, 2) * size
    sigma = rng.uniform(0.022, 0.034) * size
    angle, aspect = rng.uniform(0, math.pi), rng.uniform(1.0, 1.7)
    cos, sin = math.cos(angle), math.sin(angle)
    du, dv = (x - cx) * cos + (y - cy) * sin, -(x - cx) * sin + (y - cy) * cos
    a, b = sigma * math.sqrt(aspect), sigma / math.sqrt(aspect)
    depth = np.exp(-0.5 * ((du / a) ** 2 + (dv / b) ** 2))
    # Slope of the bump along the light's direction, in image axes; sigma-scaled, it peaks near 0.6.
    slope_u, slope_v = -depth * du / a**2, -depth * dv / b**2
    light = rng.uniform(0, 2 * math.pi)
    lu, lv = math.cos(light - angle), math.sin(light - angle)
    shade = (slope_u * lu + slope_v * lv) * sigma
    factor = 1 + rng.uniform(0.35, 0.55) * shade - 0.12 * depth  # lit and shaded flanks, a darker bottom
    return np.clip(image * factor[..., None], 0, 1)


def _missing(rng: np.random.Generator, image: np.ndarray, size: int) -> np.ndarray:
    radius = rng.uniform(0.035, 0.065) * size
    inside, dx, dy = _blob(rng, size, radius)
    edge = 0.7 / radius  # an anti-aliased edge about a pixel wide
    hole = _smoothstep(-edge, edge, inside)
    floor = rng.uniform(0.04, 0.12) * (1 + 0.5 * np.clip((dx + dy) / (2 * radius), -1, 1))
    out = _paint(image, hole, np.repeat(floor[..., None], 3, axis=2).astype(np.float32))
    rim_width = max(1.0, 1.5 * size / 256) / radius
    rim = np.exp(-(((inside + 0.5 * rim_width) / rim_width) ** 2))  # the broken edge around the hole
    lit = 0.5 + 0.5 * np.cos(np.arctan2(dy, dx) - rng.uniform(0, 2 * math.pi))
    out = out + (rim * lit)[..., None] * 0.6 * (1 - out) - (rim * (1 - lit))[..., None] * 0.5 * out
    return np.clip(out, 0, 1).astype(np.float32)


def _contamination(rng: np.random.Generator, image: np.ndarray, size: int) -> np.ndarray:
    s = size / 256
    palette = np.array([(0.08, 0.06, 0.05), (0.15, 0.25, 0.75), (0.8, 0.15, 0.12), (0.96, 0.95, 0.9),
                        (0.1, 0.55, 0.2)], np.float32)  # fmt: skip
    mean = image.reshape(-1, 3).mean(axis=0)
    far = np.argsort(-np.linalg.norm(palette - mean, axis=1))[:2]  # one of the colours least like the surface
    color = palette[int(rng.choice(far))]
    centre = rng.uniform(0.2, 0.8, 2) * size
    spread = rng.uniform(0.03, 0.07) * size
    fibres, particles = int(rng.integers(0, 3)), int(rng.integers(2, 9))
    strokes = []
    for _ in range(fibres):
        length = rng.uniform(0.06, 0.16) * size
        angle = rng.uniform(0, 2 * math.pi)
        direction = np.array([math.cos(angle), math.sin(angle)])
        start = centre + rng.normal(0, spread, 2)
        bend = np.array([-direction[1], direction[0]]) * rng.uniform(-0.3, 0.3) * length
        strokes.append(_line(_bezier(start, start + direction * length / 2 + bend, start + direction * length),
                             max(1.0, rng.uniform(0.8, 1.4) * s)))  # fmt: skip
    dots = [(centre + rng.normal(0, spread, 2), max(0.7, rng.uniform(0.8, 2.6) * s)) for _ in range(particles)]

    def draw(canvas: ImageDraw.ImageDraw, ss: int) -> None:
        for stroke in strokes:
            stroke(canvas, ss)
        for (px, py), r in dots:
            cx, cy = (px + 0.5) * ss - 0.5, (py + 0.5) * ss - 0.5
            canvas.ellipse((cx - r * ss, cy - r * ss, cx + r * ss, cy + r * ss), fill=255)

    alpha = _alpha(size, draw)
    return _paint(image, alpha * np.float32(rng.uniform(0.8, 0.95)), color)


DEFECTS = {"scratch": _scratch, "crack": _crack, "spot": _spot, "dent": _dent, "missing": _missing,
           "contamination": _contamination}  # fmt: skip


def _dilate(mask: np.ndarray) -> np.ndarray:
    """3x3 (8-neighbour) dilation: 1 px."""
    padded = np.pad(mask, 1)
    out = np.zeros_like(mask)
    h, w = mask.shape
    for dy in range(3):
        for dx in range(3):
            out |= padded[dy : dy + h, dx : dx + w]
    return out


def apply_defect(rng: np.random.Generator, clean: np.ndarray, family: str) -> tuple[np.ndarray, np.ndarray]:
    """(defective float image, mask bool) for a defect of ``family`` on ``clean``; the image differs from
    ``clean`` only inside the mask, and the mask covers AREA of the image (the last try when none does)."""
    size = clean.shape[0]
    for _ in range(8):
        changed = DEFECTS[family](rng, clean, size).astype(np.float32)
        mask = _dilate(np.abs(changed - clean).max(axis=2) > CHANGE)
        if AREA[0] <= mask.mean() <= AREA[1]:
            break
    return np.where(mask[..., None], changed, clean), mask


def render_sample(
    texture: str, size: int, seed: int, split: str, index: int, family: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image ``index`` of ``split``: (clean RGB uint8, defective RGB uint8, mask uint8 0/255), each (size, size).
    The two images share their sensor noise, so they differ only under the mask; for family "good" the
    defective image is the clean one and the mask is empty."""
    rng = np.random.default_rng([seed, _STREAM, TEXTURES.index(texture), _SPLIT_CODES[split], index])
    style = set_style(texture, seed)
    clean = render_surface(style, rng, size)
    if family == GOOD:
        defective, mask = clean, np.zeros(clean.shape[:2], bool)
    else:
        defective, mask = apply_defect(rng, clean, family)
    noise = rng.standard_normal(clean.shape, dtype=np.float32) * np.float32(rng.uniform(0.006, 0.012))

    def to_uint8(image: np.ndarray) -> np.ndarray:
        return np.clip((image + noise) * 255 + 0.5, 0, 255).astype(np.uint8)

    return to_uint8(clean), to_uint8(defective), mask.astype(np.uint8) * 255


# --- dataset ------------------------------------------------------------------------------------


def _round(value: float) -> int:
    return math.floor(value + 0.5)  # half up: Python's round() sends 2.5 to 2


def plan_splits(n: int) -> list[tuple[str, str, int, int]]:
    """(split, family, number in its folder, index in its split) of every image, in split order."""
    train_good = max(1, _round(SHARES["train_good"] * n))
    train_defect = _round(SHARES["train_defect"] * n)
    val = _round(SHARES["val"] * n)
    test = n - train_good - train_defect - val
    plan = []
    defects = 0  # families in turn across the splits, so that each gets its share of every split's defects
    for split, good, bad in (("train", train_good, train_defect), ("val", val - val // 2, val // 2),
                             ("test", test - test // 2, test // 2)):  # fmt: skip
        numbers: dict[str, int] = {}
        for index in range(good + bad):
            family = GOOD if index < good else FAMILIES[(defects + index - good) % len(FAMILIES)]
            plan.append((split, family, numbers.get(family, 0), index))
            numbers[family] = numbers.get(family, 0) + 1
        defects += bad
    return plan


def image_path(root: Path, split: str, family: str, number: int) -> Path:
    return root / split / family / f"{number:03d}.png"


def mask_file(root: Path, split: str, family: str, number: int) -> Path:
    base = root / GROUND_TRUTH / (family if split == "test" else Path(split, family))
    return base / f"{number:03d}{MASK_SUFFIX}"


def _render_chunk(job: tuple[str, str, int, int, list[tuple[str, str, int, int]]]) -> list[tuple]:
    """Pool worker: render and write a chunk of images; returns (split, family, number, defect share) for each."""
    root, texture, size, seed, items = job
    done = []
    for split, family, number, index in items:
        _, image, mask = render_sample(texture, size, seed, split, index, family)
        # zlib level 1: sensor noise leaves little to compress, and higher levels cost several times as long.
        Image.fromarray(image).save(image_path(Path(root), split, family, number), "PNG", compress_level=1)
        if family != GOOD:
            Image.fromarray(mask, mode="L").save(mask_file(Path(root), split, family, number), "PNG")
        done.append((split, family, number, float(np.count_nonzero(mask)) / mask.size))
    return done


def check_args(n: int, size: int, texture: str, seed: int, workers: int | None) -> None:
    """Raise ParvisError naming the first argument synthesize_inspection cannot use."""
    if not isinstance(n, int) or n < MIN_N:
        raise ParvisError(f"n must be an integer >= {MIN_N} (images in all splits together), got {n!r}")
    if not isinstance(size, int) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ParvisError(f"size must be an integer in [{MIN_SIZE}, {MAX_SIZE}] (pixels), got {size!r}")
    if texture not in TEXTURES:
        raise ParvisError(f"--texture {texture!r} is unknown; choose one of: {', '.join(TEXTURES)}")
    if texture in PHOTO_TEXTURES:
        try:
            import skimage.data  # noqa: F401, PLC0415 - optional test-only extra
        except ImportError:
            raise ParvisError(f"--texture {texture} needs scikit-image: pip install scikit-image") from None
    if not isinstance(seed, int) or seed < 0:
        raise ParvisError(f"seed must be an integer >= 0, got {seed!r}")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ParvisError(f"workers must be an integer >= 1, got {workers!r}")


def synthesize_inspection(
    out: str | Path,
    n: int = 400,
    size: int = 256,
    texture: str = "metal",
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Generate ``n`` images of ``size`` x ``size`` into ``out`` (the layout parvis.data.inspection reads) and
    return a summary: {"out", "n", "size", "texture", "seed", "workers", "counts": {split: {family: images}},
    "defect_area_median", "seconds", "images_per_s"}.

    Layout: <split>/<family>/NNN.png for split in train, val, test and family in good + FAMILIES;
    ground_truth/<family>/NNN_mask.png for test, ground_truth/<split>/<family>/NNN_mask.png for train and
    val (8-bit, 0 good, 255 defect); dataset.yaml, written last (task: inspection, texture, size, seed,
    families, counts). Everything is built in a sibling ``OUT.tmp-<pid>`` renamed to ``out`` when complete;
    a non-empty ``out`` is refused.
    """
    check_args(n, size, texture, seed, workers)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ParvisError(f"{out} already exists and is not empty; choose another --out or delete it")
    start = time.perf_counter()
    workers = workers or _default_workers()
    plan = plan_splits(n)
    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)  # leftover of a killed run that had the same pid
    try:
        for split, family in {(split, family) for split, family, _, _ in plan}:
            image_path(tmp, split, family, 0).parent.mkdir(parents=True, exist_ok=True)
            if family != GOOD:
                mask_file(tmp, split, family, 0).parent.mkdir(parents=True, exist_ok=True)
        # Small chunks keep the progress bar live and the workers evenly loaded.
        chunk = max(1, min(16, math.ceil(n / (workers * 8))))
        jobs = [(str(tmp), texture, size, seed, plan[s : s + chunk]) for s in range(0, n, chunk)]
        workers = min(workers, len(jobs))
        records = run_chunks(jobs, _render_chunk, workers, n, f"inspection {texture} {size}px", progress)
        counts = {
            split: {family: sum(r[:2] == (split, family) for r in records) for family in (GOOD, *FAMILIES)}
            for split in ("train", "val", "test")
        }
        counts = {split: {f: c for f, c in families.items() if c} for split, families in counts.items()}
        meta = {
            "name": f"inspection-{texture}",
            "generator": "parvis.data.inspection_synth",
            "version": 1,
            "task": "inspection",
            "texture": texture,
            "size": size,
            "seed": seed,
            "n": n,
            "families": list(FAMILIES),
            "proportions": "train/good 50%, train/<family> 10%, val 15% and test 25% each half good, half defect",
            "masks": "ground_truth/<family>/NNN_mask.png (test), ground_truth/<split>/<family>/NNN_mask.png; "
            "8-bit, 0 good, 255 defect",
            "counts": counts,
        }
        (tmp / "dataset.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = time.perf_counter() - start
    shares = [share for _, family, _, share in records if family != GOOD]
    return {
        "out": str(out),
        "n": n,
        "size": size,
        "texture": texture,
        "seed": seed,
        "workers": workers,
        "counts": counts,
        "defect_area_median": statistics.median(shares) if shares else 0.0,
        "seconds": seconds,
        "images_per_s": n / seconds,
    }
