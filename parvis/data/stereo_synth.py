"""Deterministic synthetic stereo: rectified left/right pairs with dense, exact ground-truth disparity.

A scene is a stack of planar surfaces in front of a rectified camera pair. Each surface has a disparity
plane ``d(x, y) = a + b*x + c*y`` (in left-image pixels; larger = closer), an outline in left-image
coordinates (the background has none: it fills the view) and a procedural texture painted on the
surface, i.e. a function of the left-image coordinates of its points. The background is fronto-parallel
or slanted with d >= 1 everywhere; 2-6 objects (rectangles, ellipses, star-shaped polygons) float in
front of it at disparities up to ``max_disp``, some slanted, overlapping each other.

Both views are rendered from that geometry, with a z-buffer (the largest disparity wins):

- left: pixel (x, y) shows, of the surfaces whose outline contains it, the closest; its texture is
  sampled exactly at (x, y);
- right: a point at left pixel (xl, y) appears at xr = xl - d(xl, y); for a plane that inverts to
  xl = (xr + a + c*y) / (1 - b), so every right pixel looks up, per surface, the left coordinate it
  shows, tests the outline there, and samples the texture at that sub-pixel point (linear
  interpolation: rows are aligned, so only x is fractional).

Ground truth is the left view's disparity. A left pixel is valid when its point is visible in the right
view too: x - d >= 0 (inside the right image) and no other surface is closer at (x - d, y), tested at
that exact sub-pixel position. The cameras differ photometrically (gain, bias, a slight colour cast and
independent sensor noise per camera), as real pairs do.

Scene ``i`` depends only on ``(seed, i, size, max_disp)``, so the files are byte-identical whatever the
number of workers or scenes.
"""

from __future__ import annotations

import colorsys
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from parvis.data.stereo import DISPARITY_DIR, PNG_SCALE, SIDES, encode_disparity_png
from parvis.data.synth import _default_workers, run_chunks
from parvis.errors import ParvisError

MIN_WIDTH, MIN_HEIGHT = 32, 16
MAX_SIDE = 4096
MIN_MAX_DISP = 4
MAX_MAX_DISP = int(65535 // PNG_SCALE)  # what a KITTI 16-bit PNG can hold
OBJECTS = (2, 6)  # foreground objects per scene, inclusive
SHAPES = ("rectangle", "ellipse", "polygon")
TEXTURES = ("noise", "stripes", "checker", "blobs", "flat")
MAX_SLOPE = 0.12  # |b| and |c|: disparity change per pixel of a slanted surface; 1 - b stays well above 0
NOISE = (0.004, 0.016)  # sensor noise std, share of full scale, per camera

_STEREO_STREAM = 0x57E2E0  # keeps these scenes apart from the shapes generator's [seed, i] streams
_SPLIT_STREAM = 0x5B117


@dataclass
class Surface:
    """A textured plane: disparity a + b*x + c*y, an outline (None: everywhere) and a texture raster whose
    pixel (0, 0) lies at left-image (x0, y0); it reaches past the left image's right edge, to the points
    only the right camera sees."""

    a: float
    b: float
    c: float
    texture: np.ndarray  # (TH, TW, 3) float32 in [0, 1]
    outline: dict | None = None
    x0: int = 0
    y0: int = 0

    def disparity(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self.a + self.b * x + self.c * y

    def left_x(self, xr: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The left-image x of the surface point that the right image shows at (xr, y)."""
        return (xr + self.a + self.c * y) / (1 - self.b)

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        if self.outline is None:
            return np.ones(x.shape, bool)
        # The exact test only inside the outline's bounding square: it is a fraction of the image.
        r, cx, cy = self.outline["extent"], self.outline["cx"], self.outline["cy"]
        near = (np.abs(x - cx) <= r) & (np.abs(y - cy) <= r)
        inside = np.zeros(x.shape, bool)
        inside[near] = _inside(self.outline, x[near], y[near])
        return inside

    def sample(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Texture at sub-pixel x, integer rows y: linear interpolation along x (edge values outside)."""
        height, width = self.texture.shape[:2]
        x = np.clip(x - self.x0, 0, width - 1)
        left = np.minimum(np.floor(x).astype(np.intp), width - 2)
        t = (x - left).astype(np.float32)[..., None]
        rows = np.clip(y.astype(np.intp) - self.y0, 0, height - 1)
        return self.texture[rows, left] * (1 - t) + self.texture[rows, left + 1] * t


# --- outlines -----------------------------------------------------------------------------------


def _outline(rng: np.random.Generator, cx: float, cy: float, radius: float) -> dict:
    kind = SHAPES[int(rng.integers(len(SHAPES)))]
    shape = {"kind": kind, "cx": cx, "cy": cy, "angle": rng.uniform(0, math.pi)}
    if kind == "rectangle":
        shape["half"] = (radius * rng.uniform(0.5, 1.0), radius * rng.uniform(0.3, 1.0))
        if rng.random() < 0.5:
            shape["angle"] = 0.0  # axis-aligned boxes, the most common man-made outline
    elif kind == "ellipse":
        shape["half"] = (radius * rng.uniform(0.6, 1.0), radius * rng.uniform(0.35, 1.0))
    else:
        count = int(rng.integers(5, 10))
        angles = np.sort((np.arange(count) + rng.uniform(-0.35, 0.35, count)) * (2 * math.pi / count))
        shape["angles"] = angles - angles[0]
        shape["radii"] = radius * rng.uniform(0.45, 1.0, count)
    # Radius of a circle around the centre that holds the outline.
    shape["extent"] = float(np.hypot(*shape["half"])) if "half" in shape else float(shape["radii"].max())
    return shape


def _inside(shape: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    cos, sin = math.cos(shape["angle"]), math.sin(shape["angle"])
    dx, dy = x - shape["cx"], y - shape["cy"]
    u, v = dx * cos + dy * sin, -dx * sin + dy * cos
    if shape["kind"] == "rectangle":
        hu, hv = shape["half"]
        return (np.abs(u) <= hu) & (np.abs(v) <= hv)
    if shape["kind"] == "ellipse":
        hu, hv = shape["half"]
        return (u / hu) ** 2 + (v / hv) ** 2 <= 1
    # Star-shaped polygon around the centre: find the sector of the point's angle, then test the point
    # against that sector's edge (same side as the centre = inside).
    angles, radii = shape["angles"], shape["radii"]
    vx, vy = radii * np.cos(angles), radii * np.sin(angles)
    k = (np.searchsorted(angles, np.mod(np.arctan2(v, u), 2 * math.pi), side="right") - 1) % len(angles)
    k1 = (k + 1) % len(angles)
    ex, ey = vx[k1] - vx[k], vy[k1] - vy[k]
    return ex * (v - vy[k]) - ey * (u - vx[k]) >= 0  # vertices run counter-clockwise in (u, v)


# --- textures -----------------------------------------------------------------------------------


def _color(rng: np.random.Generator) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0, 0.9), rng.uniform(0.15, 0.95)), np.float32)


def _upsample(coarse: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))


def _value_noise(rng: np.random.Generator, height: int, width: int, finest: float, octaves: int) -> np.ndarray:
    """Sum of octaves of smooth random noise, cell size doubling from ``finest`` pixels; about [0, 1]."""
    total = np.zeros((height, width), np.float32)
    weight = 0.0
    for octave in range(octaves):
        cell = finest * 2**octave
        coarse = rng.random((max(2, math.ceil(height / cell) + 1), max(2, math.ceil(width / cell) + 1)), np.float32)
        amplitude = 0.65**octave
        total += amplitude * _upsample(coarse, height, width)
        weight += amplitude
    return total / np.float32(weight)


def _pattern(rng: np.random.Generator, kind: str, height: int, width: int) -> np.ndarray:
    """One channel of pattern over the raster, scaled to [0, 1]."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    theta = rng.uniform(0, math.pi)
    u = xx * math.cos(theta) + yy * math.sin(theta)
    if kind in ("noise", "flat"):
        t = _value_noise(rng, height, width, rng.uniform(2.5, 6), int(rng.integers(3, 6)))
    elif kind == "blobs":
        t = _value_noise(rng, height, width, rng.uniform(6, 14), 2)
        t = 1 / (1 + np.exp(-(t - np.float32(np.median(t))) * np.float32(rng.uniform(12, 40))))
    else:
        period = rng.uniform(5, 24)  # at least 5 px, so that stripes do not alias
        t = np.sin(u * np.float32(2 * math.pi / period) + np.float32(rng.uniform(0, 2 * math.pi)))
        if kind == "checker":
            v = yy * math.cos(theta) - xx * math.sin(theta)
            t = t * np.sin(v * np.float32(2 * math.pi / period) + np.float32(rng.uniform(0, 2 * math.pi)))
        t = np.tanh(t * np.float32(rng.uniform(0.7, 2.5)))  # from soft waves to hard-edged bars
    lo, hi = float(t.min()), float(t.max())
    return ((t - lo) / (hi - lo)).astype(np.float32) if hi > lo else np.zeros((height, width), np.float32)


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Paint: two colours mixed by a pattern, with fine noise on top so that no surface is perfectly flat;
    "flat" surfaces get only a faint pattern (the hard case for matching)."""
    kind = TEXTURES[int(rng.integers(len(TEXTURES)))]
    base = _color(rng)
    contrast = rng.uniform(0.03, 0.1) if kind == "flat" else rng.uniform(0.25, 1.0)
    toward = _color(rng) - base
    other = np.clip(base + toward * np.float32(contrast / max(float(np.abs(toward).max()), 0.2)), 0, 1)
    t = _pattern(rng, kind, height, width)
    paint = base + (other - base) * t[..., None]
    grain = _value_noise(rng, height, width, 1.5, 2) - np.float32(0.5)
    paint = paint * (1 + np.float32(rng.uniform(0.02, 0.15)) * grain[..., None])
    return np.clip(paint, 0, 1).astype(np.float32)


# --- scene --------------------------------------------------------------------------------------


def _plane_through(
    rng: np.random.Generator, lo: float, hi: float, box: tuple[float, float, float, float], slanted: bool
) -> tuple[float, float, float]:
    """(a, b, c) of a plane with lo <= d <= hi over ``box`` = (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    b, c = rng.uniform(-MAX_SLOPE, MAX_SLOPE, 2) if slanted else (0.0, 0.0)
    # A linear function's extremes over a box are at its corners.
    span = abs(b) * (x1 - x0) + abs(c) * (y1 - y0)
    if span > 0.8 * (hi - lo):  # too steep for the range: flatten it
        shrink = 0.8 * (hi - lo) / span
        b, c, span = b * shrink, c * shrink, span * shrink
    low_corner = min(b * x0, b * x1) + min(c * y0, c * y1)
    a = rng.uniform(lo, hi - span) - low_corner
    return float(a), float(b), float(c)


def _plane_range(plane: tuple[float, float, float], box: tuple[float, float, float, float]) -> tuple[float, float]:
    a, b, c = plane
    x0, y0, x1, y1 = box
    values = [a + b * x + c * y for x in (x0, x1) for y in (y0, y1)]
    return min(values), max(values)


def plan_scene(rng: np.random.Generator, width: int, height: int, max_disp: int) -> list[Surface]:
    """The surfaces of one scene, background first."""
    # Textures extend past the left image's right edge: the right camera sees up to x + max_disp there.
    texture_width = width + max_disp + 2
    view = (0.0, 0.0, float(texture_width), float(height - 1))
    background_far = rng.uniform(1, max(1.5, 0.3 * max_disp))
    plane = _plane_through(rng, 1.0, background_far + 0.15 * max_disp, view, rng.random() < 0.6)
    surfaces = [Surface(*plane, _texture(rng, height, texture_width))]
    for _ in range(int(rng.integers(OBJECTS[0], OBJECTS[1] + 1))):
        radius = rng.uniform(0.12, 0.4) * min(height, width / 2)
        cx, cy = rng.uniform(-0.1 * width, width + 0.5 * max_disp), rng.uniform(0, height)
        outline = _outline(rng, cx, cy, radius)
        r = outline["extent"]
        box = (cx - r, cy - r, cx + r, cy + r)
        # In front of the background wherever the object is: its disparities start above the background's.
        _, behind = _plane_range(plane, box)
        lo = min(behind + 1, max_disp - 2)
        if max_disp - lo < 2:
            continue
        near = rng.uniform(lo, lo + 0.5 * (max_disp - lo))
        object_plane = _plane_through(rng, near, max_disp, box, rng.random() < 0.4)
        # Paint only the part of the surface that either camera can see.
        x0, x1 = max(0, math.floor(cx - r)), min(texture_width, math.ceil(cx + r) + 2)
        y0, y1 = max(0, math.floor(cy - r)), min(height, math.ceil(cy + r) + 1)
        if x1 - x0 < 2 or y1 - y0 < 1:
            continue
        surfaces.append(Surface(*object_plane, _texture(rng, y1 - y0, x1 - x0), outline, x0, y0))
    return surfaces


def _zbuffer(surfaces: list[Surface], xs: list[np.ndarray], y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of the closest surface, its disparity) where surface k is looked at, at left x ``xs[k]``."""
    best = np.zeros(y.shape, np.intp)
    depth = np.full(y.shape, -np.inf, np.float64)
    for k, (surface, x) in enumerate(zip(surfaces, xs, strict=True)):
        d = surface.disparity(x, y)
        closer = surface.contains(x, y) & (d > depth)
        best[closer] = k
        depth[closer] = d[closer]
    return best, depth


def _shade(surfaces: list[Surface], which: np.ndarray, xs: list[np.ndarray], y: np.ndarray) -> np.ndarray:
    image = np.zeros((*y.shape, 3), np.float32)
    for k, (surface, x) in enumerate(zip(surfaces, xs, strict=True)):
        hit = which == k
        if hit.any():
            image[hit] = surface.sample(x[hit], y[hit])
    return image


def _camera(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """One camera's response: gain, bias, a slight colour cast, sensor noise, 8-bit quantisation."""
    gain = rng.uniform(0.85, 1.15) * (1 + rng.normal(0, 0.025, 3)).astype(np.float32)
    bias = np.float32(rng.uniform(-0.05, 0.05))
    noise = rng.standard_normal(image.shape, dtype=np.float32) * np.float32(rng.uniform(*NOISE))
    return np.clip((image * gain + bias + noise) * 255 + 0.5, 0, 255).astype(np.uint8)


def render_stereo(index: int, size: tuple[int, int], max_disp: int, seed: int) -> tuple[np.ndarray, ...]:
    """Scene ``index``: left and right RGB images (H, W, 3) uint8 and the left view's disparity (H, W)
    float32 in pixels, 0 where the point is hidden from the right camera or out of its frame."""
    left, right, disparity, valid = _render(index, size, max_disp, seed)
    return left, right, np.where(valid, disparity, 0).astype(np.float32)


def _render(index: int, size: tuple[int, int], max_disp: int, seed: int) -> tuple[np.ndarray, ...]:
    """render_stereo's images, the disparity of every left pixel (hidden ones too) and the valid mask."""
    width, height = size
    rng = np.random.default_rng([seed, _STEREO_STREAM, index])
    surfaces = plan_scene(rng, width, height, max_disp)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)

    which, disparity = _zbuffer(surfaces, [x] * len(surfaces), y)
    left = _shade(surfaces, which, [x] * len(surfaces), y)
    right_xs = [s.left_x(x, y) for s in surfaces]
    right = _shade(surfaces, _zbuffer(surfaces, right_xs, y)[0], right_xs, y)

    # Visible in the right view: no surface is closer at the exact point (x - d, y) the pixel maps to.
    xr = x - disparity
    seen = _zbuffer(surfaces, [s.left_x(xr, y) for s in surfaces], y)[0]
    valid = (xr >= 0) & (seen == which)
    return _camera(rng, left), _camera(rng, right), disparity.astype(np.float32), valid


# --- dataset ------------------------------------------------------------------------------------


def _assign_splits(n: int, seed: int, val_fraction: float) -> list[str]:
    n_val = min(round(n * val_fraction), n - 1)  # at least one training pair
    splits = ["train"] * n
    for i in np.random.default_rng([seed, _STEREO_STREAM, _SPLIT_STREAM]).choice(n, size=n_val, replace=False):
        splits[int(i)] = "val"
    return splits


def _render_chunk(job: tuple[str, tuple[int, int], int, int, list[tuple[int, str]]]) -> list[tuple[int, str, int]]:
    """Pool worker: render and write a chunk of pairs; returns (index, split, valid pixels) for each."""
    root, size, max_disp, seed, items = job
    done = []
    for index, split in items:
        left, right, disparity = render_stereo(index, size, max_disp, seed)
        name = f"{index:06d}.png"
        folder = Path(root, split)
        # zlib level 1: sensor noise leaves little to compress, and level 6 took 4x as long for 3% smaller files.
        Image.fromarray(left).save(folder / "left" / name, "PNG", compress_level=1)
        Image.fromarray(right).save(folder / "right" / name, "PNG", compress_level=1)
        encode_disparity_png(disparity).save(folder / DISPARITY_DIR / name, "PNG", compress_level=1)
        done.append((index, split, int(np.count_nonzero(disparity))))
    return done


def check_args(
    n: int, size: tuple[int, int], max_disp: int, seed: int, val_fraction: float, workers: int | None
) -> None:
    """Raise ParvisError naming the first argument that synthesize_stereo cannot use."""
    if not isinstance(n, int) or n < 1:
        raise ParvisError(f"n must be an integer >= 1, got {n!r}")
    if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(s, int) for s in size)):
        raise ParvisError(f"size must be (width, height) in pixels, got {size!r}")
    width, height = size
    if not (MIN_WIDTH <= width <= MAX_SIDE and MIN_HEIGHT <= height <= MAX_SIDE):
        raise ParvisError(
            f"size must be at least {MIN_WIDTH}x{MIN_HEIGHT} and at most {MAX_SIDE} a side, got {width}x{height}"
        )
    if not isinstance(max_disp, int) or not MIN_MAX_DISP <= max_disp <= min(MAX_MAX_DISP, width // 2):
        raise ParvisError(
            f"max_disp must be an integer in [{MIN_MAX_DISP}, {min(MAX_MAX_DISP, width // 2)}] for width {width} "
            f"(at most half the width, and what a 16-bit KITTI PNG holds), got {max_disp!r}"
        )
    if not isinstance(seed, int) or seed < 0:
        raise ParvisError(f"seed must be an integer >= 0, got {seed!r}")
    if not 0 <= val_fraction < 1:
        raise ParvisError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ParvisError(f"workers must be an integer >= 1, got {workers!r}")


def synthesize_stereo(
    out: str | Path,
    n: int = 2000,
    size: tuple[int, int] = (256, 128),
    max_disp: int = 48,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
    val_fraction: float = 0.2,
) -> dict:
    """Generate ``n`` stereo pairs of ``size`` = (width, height) into ``out`` and return a summary:
    {"out", "n", "size", "max_disp", "seed", "workers", "splits": {split: pairs}, "valid_fraction",
    "seconds", "pairs_per_s"}.

    Layout (the one parvis.data.stereo reads): <split>/left/NNNNNN.png, <split>/right/NNNNNN.png,
    <split>/disparity/NNNNNN.png (16-bit, KITTI: disparity x 256, 0 = invalid) for split in train, val,
    and dataset.yaml, written last (task: stereo, size, max_disp, seed, n, splits). NNNNNN is the global
    pair index. Everything is built in a sibling ``OUT.tmp-<pid>`` renamed to ``out`` when complete; a
    non-empty ``out`` is refused.
    """
    size = tuple(size) if isinstance(size, list) else size
    check_args(n, size, max_disp, seed, val_fraction, workers)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ParvisError(f"{out} already exists and is not empty; choose another --out or delete it")
    start = time.perf_counter()
    workers = workers or _default_workers()
    splits = _assign_splits(n, seed, val_fraction)
    width, height = size
    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)  # leftover of a killed run that had the same pid
    try:
        present = [split for split in ("train", "val") if split in splits]  # no empty split: it would not read
        for split in present:
            for sub in (*SIDES, DISPARITY_DIR):
                (tmp / split / sub).mkdir(parents=True)
        # Small chunks keep the progress bar live and the workers evenly loaded.
        chunk = max(1, min(16, math.ceil(n / (workers * 8))))
        jobs = [
            (str(tmp), size, max_disp, seed, [(i, splits[i]) for i in range(s, min(n, s + chunk))])
            for s in range(0, n, chunk)
        ]
        workers = min(workers, len(jobs))
        records: list[tuple[int, str, int]] = []
        records += run_chunks(jobs, _render_chunk, workers, n, f"stereo {width}x{height}", progress)
        records.sort()
        counts = {split: sum(s == split for _, s, _ in records) for split in ("train", "val")}
        meta = {
            "name": "stereo-planes",
            "generator": "parvis.data.stereo_synth",
            "version": 1,
            "task": "stereo",
            "seed": seed,
            "n": n,
            "size": {"width": width, "height": height},
            "max_disp": max_disp,
            "disparity": "16-bit PNG, value = disparity x 256, 0 = no ground truth (KITTI)",
            "splits": counts,
            "stereo": {"format": "stereo", **{split: split for split in present}},
        }
        (tmp / "dataset.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = time.perf_counter() - start
    return {
        "out": str(out),
        "n": n,
        "size": [width, height],
        "max_disp": max_disp,
        "seed": seed,
        "workers": workers,
        "splits": counts,
        "valid_fraction": sum(v for _, _, v in records) / (n * width * height),
        "seconds": seconds,
        "pairs_per_s": n / seconds,
    }
