"""Synthetic video clips with ground-truth tracks, for the video pipeline and tracking evaluation.

Each clip is a static textured background (the shapes generator's `_background`) under a fixed
lighting field, with 2-6 shapes of the five classes that move at constant velocity plus a small
random walk, spin slowly and keep their colour and paint for the whole clip. Objects are drawn
with the shapes generator's own geometry, rasteriser and paints (`_sample_shape`, `_coverage`,
`_fill`, `_dominant_color`, `_light`), so a detector trained on the shapes images sees the same
objects here.

Every clip has at least one object that stays in view (bouncing off the borders) and one that
enters, passes over it (an occlusion, whichever of the two is drawn later hides the other) and
leaves; the others are drawn from stay / enter / leave / cross. "enter" objects are off-frame at
the first frame, "leave" objects off-frame at the last (either may also do the other).

Ground truth follows the image generator's rules: an object's pixels are those where it has the
largest share (painter's order, exact anti-aliased coverage), its box is the extent of those pixels
(the visible box, inside the frame, in pixels with the origin at the top-left corner of the
top-left pixel), and it is left out of a frame when fewer than MIN_AREA pixels or less than
MIN_VISIBLE_FRACTION of its on-frame pixels are visible. ``visibility`` is the visible share of the
whole shape, off-frame parts counted as hidden (the MOTChallenge meaning).

Clip ``c`` depends only on ``(seed, c, frames, width, height)``, so the files do not depend on the
number of clips or workers. The MP4s are encoded reproducibly (`open_writer(reproducible=True)`)
and are byte-identical for the same PyAV build; the ground truth is identical everywhere.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from parvis.data.synth import (
    CLASSES,
    MIN_AREA,
    MIN_VISIBLE_FRACTION,
    _background,
    _coverage,
    _dominant_color,
    _fill,
    _light,
    _polygons,
    _sample_shape,
)
from parvis.data.video_io import open_writer, video_encoder
from parvis.errors import ParvisError

MOTIONS = ("stay", "enter", "leave", "cross")
RADIUS = (0.07, 0.15)  # circumradius, as a share of the shorter side
SPEED = (0.4, 1.6)  # pixels per frame per 100 pixels of the shorter side, before the minimum a motion needs
JITTER = 0.15  # pixels: per-frame step of the random walk added to every path
SPIN = 0.02  # radians per frame, at most
# Sensor noise std as a share of full scale: lower than the image generator's 0.01-0.04, since the
# encoder smooths it and each level of it costs bitrate and encoding time. No optics blur either:
# the encoder's own softening stands in for it.
NOISE = (0.005, 0.025)
NOISE_SLACK = 32
MAX_SIDE = 4096
GT_FORMAT = "frame,id,x,y,w,h,conf,class,visibility"

_VIDEO_STREAM = 0x71DE0  # keeps clip generators apart from the image generator's [seed, i] streams
_PLAN, _LIGHT, _NOISE = 0, 1, 2


@dataclass
class Track:
    """One object's path: centre at frame t is ``anchor + velocity * (t - t_anchor) + jitter[t]``,
    folded back into the frame for "stay" objects so they bounce off the borders."""

    id: int
    motion: str
    shape: dict  # _sample_shape geometry; cx, cy and angle are set per frame
    anchor: np.ndarray
    t_anchor: float
    velocity: np.ndarray
    spin: float
    jitter: np.ndarray  # frames x 2
    bounds: tuple[np.ndarray, np.ndarray] | None  # (lo, hi) of the centre for bouncing objects

    def centre(self, t: int) -> np.ndarray:
        p = self.anchor + self.velocity * (t - self.t_anchor) + self.jitter[t]
        if self.bounds is not None:
            lo, hi = self.bounds
            period = 2 * (hi - lo)
            q = np.mod(p - lo, period)
            p = lo + np.where(q <= hi - lo, q, period - q)
        return p

    def shape_at(self, t: int) -> dict:
        cx, cy = self.centre(t)
        return {**self.shape, "cx": float(cx), "cy": float(cy), "angle": self.shape["angle"] + self.spin * t}


def _exit_distance(q: np.ndarray, u: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    """How far a point inside the box [lo, hi] travels along unit vector u before leaving it."""
    ts = [((hi[i] if u[i] > 0 else lo[i]) - q[i]) / u[i] for i in range(2) if abs(u[i]) > 1e-9]
    return min(ts)


def plan_clip(rng: np.random.Generator, frames: int, width: int, height: int) -> list[Track]:
    """The objects of one clip, with ids 1..n in plan order (painter's order is drawn separately)."""
    short = min(width, height)
    size = np.array([width, height], np.float64)
    motions = ["stay", "cross"] + [str(m) for m in rng.choice(MOTIONS, int(rng.integers(0, 5)))]
    tracks: list[Track] = []
    for k, motion in enumerate(motions):
        r = rng.uniform(*RADIUS) * short
        shape = _sample_shape(rng, int(rng.integers(len(CLASSES))), 0.0, 0.0, r)
        theta = rng.uniform(0, 2 * math.pi)
        u = np.array([math.cos(theta), math.sin(theta)])
        speed = rng.uniform(*SPEED) * short / 100
        jitter = np.cumsum(rng.normal(0, JITTER, (frames, 2)), axis=0)
        spin = rng.uniform(-SPIN, SPIN)
        inner_lo, inner_hi = np.array([r, r]), size - r  # the centre keeps the whole shape in view
        if motion == "stay":
            anchor, t_anchor, bounds = rng.uniform(inner_lo, inner_hi), 0.0, (inner_lo, inner_hi)
        else:
            share = {"enter": (0.4, 0.8), "leave": (0.2, 0.6), "cross": (0.35, 0.65)}[motion]
            t_anchor = rng.uniform(*share) * (frames - 1)
            if k == 1:  # meets the first ("stay") object at t_anchor: a guaranteed occlusion
                offset = rng.uniform(-0.4, 0.4, 2) * tracks[0].shape["r"]
                anchor = np.clip(tracks[0].centre(round(t_anchor)) + offset, inner_lo, inner_hi)
            else:
                anchor = rng.uniform(inner_lo, inner_hi)
            # Off-frame means the centre is beyond this margin: the shape plus the random walk's reach.
            margin = 1.05 * r + 3 * JITTER * math.sqrt(frames) + 1
            out_lo, out_hi = np.full(2, -margin), size + margin
            if motion in ("enter", "cross"):
                speed = max(speed, _exit_distance(anchor, -u, out_lo, out_hi) / max(t_anchor - 1, 1))
            if motion in ("leave", "cross"):
                speed = max(speed, _exit_distance(anchor, u, out_lo, out_hi) / max(frames - 2 - t_anchor, 1))
            bounds = None
        tracks.append(Track(k + 1, motion, shape, anchor, t_anchor, speed * u, spin, jitter, bounds))
    return tracks


def _area(shape: dict) -> float:
    """Exact area of the shape in pixels (shoelace; a ring's hole subtracts)."""
    total = 0.0
    for p, fill in _polygons(shape):
        x, y = p[:, 0], p[:, 1]
        a = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
        total += a if fill else -a
    return total


class ClipRenderer:
    """Renders clip ``clip`` of a seed frame by frame: `frame(t)` -> (RGB uint8 image, gt rows)."""

    def __init__(self, seed: int, clip: int, frames: int, width: int, height: int):
        self.width, self.height, self.frames = width, height, frames
        rng = np.random.default_rng([seed, _VIDEO_STREAM, clip, _PLAN])
        self.tracks = plan_clip(rng, frames, width, height)
        self.order = [int(i) for i in rng.permutation(len(self.tracks))]  # painter's order, fixed per clip
        # The synth helpers work on a square grid; everything is drawn on its top-left corner.
        pads = [2 * math.ceil(t.shape["r"]) + 6 for t in self.tracks]
        self.grid = max(width, height, *pads)
        self.areas = [_area(t.shape) for t in self.tracks]  # moving and spinning do not change it
        self.background = np.ascontiguousarray(_background(rng, self.grid)[:height, :width])
        under = self.background.reshape(-1, 3).mean(axis=0)
        self.paints = []
        for pad in pads:
            # Paint in the object's own frame (centred on it), so a textured object carries its
            # texture as it moves instead of sliding over a fixed one.
            local = (slice(0, pad), slice(0, pad))
            self.paints.append(np.asarray(_fill(rng, _dominant_color(rng, under), local, self.grid)))
        noise = float(rng.uniform(*NOISE) * 255)
        # _light is affine in the image: light(img) = img * gain + offset. Taking both once keeps the
        # illumination fixed over the clip and costs one multiply-add per frame.
        square = (self.grid, self.grid, 3)
        lit = [
            _light(np.random.default_rng([seed, _VIDEO_STREAM, clip, _LIGHT]), np.full(square, v), self.grid)
            for v in (np.float32(0), np.float32(1))
        ]
        # In 0-255 units, with the rounding of the final cast folded in.
        self.offset = np.ascontiguousarray(lit[0][:height, :width]) * np.float32(255)
        self.gain = np.ascontiguousarray(lit[1][:height, :width]) * np.float32(255) - self.offset
        self.offset += np.float32(0.5)
        # Sensor noise: one field larger than the frame, seen through a different random window each
        # frame. Drawing a fresh field per frame cost more than everything else in the frame together.
        noise_rng = np.random.default_rng([seed, _VIDEO_STREAM, clip, _NOISE])
        self.noise = noise_rng.standard_normal((height + NOISE_SLACK, width + NOISE_SLACK, 3), dtype=np.float32)
        self.noise *= np.float32(noise)
        self.noise_windows = noise_rng.integers(0, NOISE_SLACK + 1, (frames, 2))

    def _raster(self, shape: dict):
        """(coverage, (rows, cols)) of the shape on the frame, or None when it is off-frame."""
        res = _coverage(shape, self.grid)
        if res is None:
            return None
        cov, (ys, xs) = res
        y1, x1 = min(ys.stop, self.height), min(xs.stop, self.width)
        if y1 <= ys.start or x1 <= xs.start:
            return None
        return cov[: y1 - ys.start, : x1 - xs.start], (slice(ys.start, y1), slice(xs.start, x1))

    def frame(self, t: int) -> tuple[np.ndarray, list[tuple]]:
        """Frame ``t`` (0-based, any order) and its gt rows (frame 1-based, id, x, y, w, h, conf,
        class 1..5, visibility)."""
        img = self.background.copy()
        layers = []  # painter's order: (track index, shape, coverage, slices)
        for i in self.order:
            shape = self.tracks[i].shape_at(t)
            res = self._raster(shape)
            if res is None:
                continue
            cov, sl = res
            pad = self.paints[i].shape[0]
            oy, ox = round(shape["cy"]) - pad // 2, round(shape["cx"]) - pad // 2
            paint = self.paints[i][sl[0].start - oy : sl[0].stop - oy, sl[1].start - ox : sl[1].stop - ox]
            patch = img[sl]
            img[sl] = patch + (paint - patch) * cov[..., None]
            layers.append((i, shape, cov, sl))

        dy, dx = self.noise_windows[t]
        img *= self.gain
        img += self.offset
        img += self.noise[dy : dy + self.height, dx : dx + self.width]
        image = np.clip(img, 0, 255, out=img).astype(np.uint8)
        return image, self._ground_truth(t, layers)

    def _ground_truth(self, t: int, layers: list) -> list[tuple]:
        # Visible shares, top layer first: each object keeps its coverage times what is left uncovered.
        remaining = np.ones((self.height, self.width), np.float32)
        shares = [None] * len(layers)
        for j in range(len(layers) - 1, -1, -1):
            _, _, cov, sl = layers[j]
            shares[j] = cov * remaining[sl]
            remaining[sl] *= 1 - cov
        # Each pixel goes to the largest share, background first and then painter's order on ties
        # (argmax's rule in the image generator).
        best, owner = remaining, np.zeros((self.height, self.width), np.int16)
        for j, (_, _, _, sl) in enumerate(layers):
            won = shares[j] > best[sl]
            best[sl] = np.where(won, shares[j], best[sl])
            owner[sl] = np.where(won, j + 1, owner[sl])
        rows = []
        for j, (i, _, cov, sl) in enumerate(layers):
            visible = owner[sl] == j + 1
            area = int(np.count_nonzero(visible))
            if area < MIN_AREA or area < MIN_VISIBLE_FRACTION * np.count_nonzero(cov >= 0.5):
                continue
            ys, xs = np.nonzero(visible)
            x, y = int(xs.min()) + sl[1].start, int(ys.min()) + sl[0].start
            w, h = int(xs.max() - xs.min()) + 1, int(ys.max() - ys.min()) + 1
            visibility = min(1.0, float(shares[j].sum()) / self.areas[i])
            track = self.tracks[i]
            rows.append((t + 1, track.id, x, y, w, h, 1, track.shape["cls"] + 1, round(visibility, 3)))
        rows.sort(key=lambda row: row[1])
        return rows


def _gt_line(row: tuple) -> str:
    return ",".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row)


def _write_clip(job: tuple[str, int, int, int, int, float, int, str]) -> dict:
    """Pool worker: render clip ``clip``, encode it and write its ground truth."""
    root, clip, frames, width, height, fps, seed, codec = job
    name = f"clip_{clip:03d}"
    renderer = ClipRenderer(seed, clip, frames, width, height)
    lines = []
    # Reproducible encoding runs on one thread; clips run in parallel instead.
    mp4 = Path(root) / "clips" / f"{name}.mp4"
    with open_writer(mp4, width, height, fps, reproducible=True, codec=codec) as writer:
        for t in range(frames):
            image, rows = renderer.frame(t)
            writer.write(image)
            lines += [_gt_line(row) for row in rows]
    (Path(root) / "gt" / f"{name}.txt").write_text("".join(line + "\n" for line in lines))
    objects = [{"id": tr.id, "class": CLASSES[tr.shape["cls"]], "motion": tr.motion} for tr in renderer.tracks]
    return {"name": name, "video": f"clips/{name}.mp4", "gt": f"gt/{name}.txt", "objects": objects, "boxes": len(lines)}


def check_size(width: int, height: int) -> None:
    """Raise ParvisError unless width and height are even integers in [32, MAX_SIDE]."""
    for side in (width, height):
        if not isinstance(side, int) or not 32 <= side <= MAX_SIDE or side % 2:
            # H.264 stores colour at half resolution (4:2:0), so odd sides would be padded.
            raise ParvisError(f"width and height must be even integers in [32, {MAX_SIDE}], got {width}x{height}")


def _check_args(n_clips, frames, width, height, fps, seed, workers) -> None:
    if not isinstance(n_clips, int) or n_clips < 1:
        raise ParvisError(f"n_clips must be an integer >= 1, got {n_clips!r}")
    if not isinstance(frames, int) or frames < 1:
        raise ParvisError(f"frames must be an integer >= 1, got {frames!r}")
    check_size(width, height)
    if not isinstance(fps, (int, float)) or not 0 < fps <= 240:
        raise ParvisError(f"fps must be in (0, 240], got {fps!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ParvisError(f"seed must be an integer >= 0, got {seed!r}")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ParvisError(f"workers must be an integer >= 1, got {workers!r}")


def synthesize_video(
    out: str | Path,
    n_clips: int = 4,
    frames: int = 150,
    width: int = 320,
    height: int = 240,
    fps: float = 15,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = False,
) -> dict:
    """Write ``n_clips`` clips with MOTChallenge ground truth into ``out`` and return a summary:
    {"out", "clips", "frames", "width", "height", "fps", "codec", "seed", "boxes", "seconds",
    "frames_per_s"}.

    Layout: clips/clip_NNN.mp4, gt/clip_NNN.txt (one line per visible object per frame:
    ``frame,id,x,y,w,h,conf,class,visibility``, frame 1-based, ids per clip from 1, box in pixels,
    conf 1, class 1..5 = CLASSES[class - 1], visibility in [0, 1]) and video.json, written last.
    video.json holds name, generator, version, seed, classes, frames, size {width, height}, fps,
    codec (the encoder), gt_format and clips: [{name, video, gt, objects: [{id, class, motion}],
    boxes}]. Clips render in parallel over ``workers`` processes (default: every usable core), with
    a progress bar on stderr when ``progress``. Everything is built in a sibling ``OUT.tmp-<pid>``
    renamed to ``out`` when complete; a non-empty ``out`` is refused.
    """
    _check_args(n_clips, frames, width, height, fps, seed, workers)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ParvisError(f"{out} already exists and is not empty; choose another --out or delete it")
    start = time.perf_counter()
    codec = video_encoder()
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = min(workers, n_clips)
    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)  # leftover of a killed run that had the same pid
    try:
        (tmp / "clips").mkdir(parents=True)
        (tmp / "gt").mkdir()
        jobs = [(str(tmp), c, frames, width, height, fps, seed, codec) for c in range(n_clips)]
        bar = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            disable=not progress,
        )
        clips = []
        if workers == 1:
            with bar:
                task = bar.add_task(f"video clips {width}x{height}", total=n_clips)
                for job in jobs:
                    clips.append(_write_clip(job))
                    bar.advance(task)
        else:
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            # The pool forks before the progress bar starts its refresh thread.
            with multiprocessing.get_context(method).Pool(workers) as pool, bar:
                task = bar.add_task(f"video clips {width}x{height}", total=n_clips)
                for clip in pool.imap_unordered(_write_clip, jobs):
                    clips.append(clip)
                    bar.advance(task)
        clips.sort(key=lambda c: c["name"])
        meta = {
            "name": "shapes-video",
            "generator": "parvis.data.video_synth",
            "version": 1,
            "seed": seed,
            "classes": list(CLASSES),
            "frames": frames,
            "size": {"width": width, "height": height},
            "fps": float(fps),
            "codec": codec,
            "gt_format": GT_FORMAT,
            "clips": clips,
        }
        (tmp / "video.json").write_text(json.dumps(meta, indent=1) + "\n")
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = time.perf_counter() - start
    return {
        "out": str(out),
        "clips": n_clips,
        "frames": frames,
        "width": width,
        "height": height,
        "fps": fps,
        "codec": codec,
        "seed": seed,
        "workers": workers,
        "boxes": sum(c["boxes"] for c in clips),
        "seconds": seconds,
        "frames_per_s": n_clips * frames / seconds,
    }
