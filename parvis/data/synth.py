"""Deterministic synthetic "shapes" dataset for classification, segmentation and detection.

Every scene has one dominant shape (its class is the classification label) and 1-4 smaller
distractors on a procedurally textured background, under random lighting and sensor noise. Colour,
texture and lighting are drawn independently of the class, so only shape tells the classes apart.

Scene ``i`` depends only on ``(seed, i, size)``: it is drawn from ``np.random.default_rng([seed, i])``
and its dominant class from a seeded per-block permutation, so the files are byte-identical no
matter how many workers render them or how large ``n`` is.

Shapes are rasterised at ``SUPERSAMPLE`` x resolution and box-averaged, which gives anti-aliased
edges and, per object, an exact coverage fraction for every output pixel. Labels come from those
fractions: a pixel belongs to the class owning at least ``CONFIDENT`` of it, otherwise it is
ignored (255) - a thin band along edges.
"""

from __future__ import annotations

import colorsys
import json
import math
import multiprocessing
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw, ImageFilter
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from parvis.errors import ParvisError

CLASSES = ("circle", "ring", "square", "star", "triangle")  # alphabetical, so ImageFolder index == position
IGNORE = 255
SUPERSAMPLE = 4
CONFIDENT = 0.75  # coverage in (0.25, 0.75) at a two-way edge is ambiguous and gets IGNORE
MIN_AREA = 20  # visible pixels; smaller instances are unrecognisable slivers
MIN_VISIBLE_FRACTION = 0.25  # of the unoccluded area; below it an instance counts as hidden
DOMINANT_VISIBLE_FRACTION = 0.8  # the label object must stay clearly recognisable
MIN_CONTRAST = 0.3  # RGB distance in [0, 1] units between the dominant object and what is under it

# Stream tags keep the class and split generators independent of the per-scene ones ([seed, i]).
_CLASS_STREAM = 0xC1A55
_SPLIT_STREAM = 0x5B117


def dominant_class(index: int, seed: int) -> int:
    """Class (index into CLASSES) of scene ``index``'s dominant object.

    Each block of len(CLASSES) consecutive scenes holds every class once, in a seeded order, so
    any n is balanced to within one and the class of a scene does not depend on n.
    """
    block, pos = divmod(index, len(CLASSES))
    order = np.random.default_rng([seed, _CLASS_STREAM, block]).permutation(len(CLASSES))
    return int(order[pos])


def render_scene(index: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Scene ``index``: RGB image (size x size x 3 uint8), mask (size x size uint8: 0 background,
    i+1 = CLASSES[i], 255 ignore) and the kept instances in painter's order, each
    {"category_id": 1..5, "bbox": [x, y, w, h], "area": visible pixels}."""
    return _render(np.random.default_rng([seed, index]), dominant_class(index, seed), size)


# --- geometry -----------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (yy, xx), cached because every scene of a run needs them."""
    c = np.arange(size, dtype=np.float32) + 0.5
    yy, xx = np.meshgrid(c, c, indexing="ij")
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


def _sample_shape(rng: np.random.Generator, cls: int, cx: float, cy: float, r: float) -> dict:
    """Geometry of one object; ``r`` is its circumradius in pixels."""
    shape = {"cls": cls, "cx": cx, "cy": cy, "r": r, "angle": rng.uniform(0, 2 * math.pi)}
    name = CLASSES[cls]
    if name in ("circle", "ring"):
        shape["aspect"] = rng.uniform(0.85, 1.0)
    if name == "ring":
        # At least 2.5 px of band where possible, so the ring survives the ignore band on both edges.
        shape["inner"] = max(0.3, min(rng.uniform(0.45, 0.7), 1 - 2.5 / r))
    elif name == "star":
        shape["inner"] = rng.uniform(0.38, 0.55)
    elif name == "triangle":
        shape["jitter"] = rng.uniform(-0.14, 0.14, 3)
        shape["radii"] = rng.uniform(0.9, 1.0, 3)
    return shape


def _polygons(shape: dict) -> list[tuple[np.ndarray, int]]:
    """(vertices N x 2 in pixel units, fill) to draw in order; fill 0 cuts a hole."""
    name, r = CLASSES[shape["cls"]], shape["r"]
    if name in ("circle", "ring"):
        t = np.linspace(0, 2 * math.pi, int(np.clip(2 * math.pi * r, 32, 256)), endpoint=False)
        unit = np.stack([np.cos(t), shape["aspect"] * np.sin(t)], axis=1)
        rings = [(unit, 255)] + ([(unit * shape["inner"], 0)] if name == "ring" else [])
    elif name == "square":
        t = math.pi / 4 + np.arange(4) * math.pi / 2
        rings = [(np.stack([np.cos(t), np.sin(t)], axis=1), 255)]
    elif name == "star":
        t = -math.pi / 2 + np.arange(10) * math.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, 1.0, shape["inner"])
        rings = [(np.stack([rad * np.cos(t), rad * np.sin(t)], axis=1), 255)]
    else:
        t = -math.pi / 2 + np.arange(3) * 2 * math.pi / 3 + shape["jitter"]
        rad = shape["radii"]
        rings = [(np.stack([rad * np.cos(t), rad * np.sin(t)], axis=1), 255)]
    a = shape["angle"]
    rot = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
    centre = np.array([shape["cx"], shape["cy"]])
    return [(unit @ rot * r + centre, fill) for unit, fill in rings]


def _coverage(shape: dict, size: int) -> tuple[np.ndarray, tuple[slice, slice]] | None:
    """Exact per-pixel coverage (float32 in [0, 1]) over the object's on-image box, or None if the
    object lies entirely outside the image. Drawing only the box keeps small objects cheap."""
    polys = _polygons(shape)
    pts = np.concatenate([p for p, _ in polys])
    x0, y0 = (max(0, math.floor(v)) for v in pts.min(axis=0))
    x1, y1 = (min(size, math.ceil(v)) for v in pts.max(axis=0))
    if x1 <= x0 or y1 <= y0:
        return None
    w, h = x1 - x0, y1 - y0
    canvas = Image.new("L", (w * SUPERSAMPLE, h * SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(canvas)
    for p, fill in polys:
        # PIL puts integer coordinates at sub-pixel centres, hence the half sub-pixel shift.
        xy = (p - (x0, y0)) * SUPERSAMPLE - 0.5
        draw.polygon(xy.ravel().tolist(), fill=fill)
    hits = np.asarray(canvas).reshape(h, SUPERSAMPLE, w, SUPERSAMPLE).sum(axis=(1, 3), dtype=np.uint32)
    return (hits / np.float32(255 * SUPERSAMPLE * SUPERSAMPLE)).astype(np.float32), (slice(y0, y1), slice(x0, x1))


def _plan(rng: np.random.Generator, dom_cls: int, size: int) -> tuple[list[dict], int, bool]:
    """Objects in painter's order, the dominant object's position in it, and whether a small
    occluder is drawn over the dominant object (always last when present)."""
    r_dom = rng.uniform(0.35, 0.6) * size / 2
    cx, cy = rng.uniform(r_dom, size - r_dom, 2)
    dominant = _sample_shape(rng, dom_cls, cx, cy, r_dom)
    n_distractors = int(rng.integers(1, 4))
    occluded = bool(rng.random() < 0.35)
    below = []
    for _ in range(n_distractors - occluded):
        # At most half the dominant radius, so the dominant object is always the largest one.
        r = rng.uniform(max(0.35 * r_dom, 0.08 * size), 0.6 * r_dom)
        below.append(_sample_shape(rng, int(rng.integers(len(CLASSES))), *rng.uniform(0, size, 2), r))
    objects = below + [dominant]
    if occluded:
        r = rng.uniform(0.2, 0.35) * r_dom
        angle, dist = rng.uniform(0, 2 * math.pi), rng.uniform(0.6, 1.1) * r_dom
        ox, oy = cx + dist * math.cos(angle), cy + dist * math.sin(angle)
        objects.append(_sample_shape(rng, int(rng.integers(len(CLASSES))), ox, oy, r))
    return objects, len(below), occluded


# --- labels -------------------------------------------------------------------------------------


def _label(covs: list[np.ndarray], classes: list[int], size: int) -> tuple[np.ndarray, np.ndarray]:
    """(instance map: 0 background, k+1 = object k, by largest visible share; mask before dropping
    hidden instances). Painter's order: each object's visible share is its coverage times what
    the objects above it leave uncovered."""
    shares = np.empty((len(covs) + 1, size, size), np.float32)
    remaining = np.ones((size, size), np.float32)
    for k in range(len(covs) - 1, -1, -1):
        shares[k + 1] = covs[k] * remaining
        remaining *= 1 - covs[k]
    shares[0] = remaining
    class_shares = np.zeros((len(CLASSES) + 1, size, size), np.float32)
    class_shares[0] = shares[0]
    for k, cls in enumerate(classes):
        class_shares[cls + 1] += shares[k + 1]
    semantic = class_shares.argmax(axis=0)
    confident = class_shares.max(axis=0) >= CONFIDENT
    instance = shares.argmax(axis=0)
    # A confident class whose pixel the instance map gives to another class (possible only where
    # several instances split a pixel) is ignored, so every labelled pixel lies in a box of its class.
    instance_class = np.array([0] + [c + 1 for c in classes])[instance]
    mask = np.where(confident & (semantic == instance_class), semantic, IGNORE).astype(np.uint8)
    return instance, mask


def _full(cov: np.ndarray, sl: tuple[slice, slice], size: int) -> np.ndarray:
    out = np.zeros((size, size), np.float32)
    out[sl] = cov
    return out


# --- appearance ---------------------------------------------------------------------------------


def _color(rng: np.random.Generator) -> np.ndarray:
    h, s, v = rng.random(), rng.random(), rng.uniform(0.12, 1.0)
    return np.array(colorsys.hsv_to_rgb(h, s, v), np.float32)


def _value_noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    cells = int(rng.integers(2, 8))
    coarse = Image.fromarray(rng.random((cells, cells), dtype=np.float32))
    return np.asarray(coarse.resize((w, h), Image.Resampling.BICUBIC))


def _texture(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """A random procedural texture over the given pixel coordinates, scaled to [0, 1]."""
    h, w = yy.shape
    kind = rng.integers(4)
    theta = rng.uniform(0, math.pi)
    u = xx * math.cos(theta) + yy * math.sin(theta)
    if kind == 0:  # low-frequency noise, two octaves
        t = _value_noise(rng, h, w) + 0.5 * _value_noise(rng, h, w)
    elif kind == 3:  # linear gradient
        t = u
    else:
        period = rng.uniform(max(4, max(h, w) / 16), max(6, max(h, w) / 2))
        t = np.sin(u * np.float32(2 * math.pi / period) + np.float32(rng.uniform(0, 2 * math.pi)))
        if kind == 2:  # checker
            v = yy * math.cos(theta) - xx * math.sin(theta)
            t = t * np.sin(v * np.float32(2 * math.pi / period) + np.float32(rng.uniform(0, 2 * math.pi)))
        t = np.tanh(t * np.float32(rng.uniform(0.5, 3)))  # from soft waves to hard-edged bars
    lo, hi = float(t.min()), float(t.max())
    return ((t - lo) / (hi - lo)).astype(np.float32) if hi > lo else np.zeros((h, w), np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = _grid(size)
    c0, c1 = _color(rng), _color(rng)
    img = c0 + (c1 - c0) * _texture(rng, yy, xx)[..., None]
    for _ in range(int(rng.integers(0, 2))):
        alpha = (rng.uniform(0.25, 0.7) * _texture(rng, yy, xx))[..., None]
        img = img * (1 - alpha) + _color(rng) * alpha
    return img


def _fill(rng: np.random.Generator, base: np.ndarray, sl: tuple[slice, slice], size: int) -> np.ndarray:
    """Object paint over its box: solid, linear gradient or textured."""
    yy, xx = (g[sl] for g in _grid(size))
    kind = rng.random()
    if kind < 0.55:
        return np.broadcast_to(base, yy.shape + (3,))
    if kind < 0.8:
        theta = rng.uniform(0, 2 * math.pi)
        u = xx * math.cos(theta) + yy * math.sin(theta)
        span = float(u.max() - u.min())
        u = (u - u.min()) / span if span > 0 else np.zeros_like(u)
        return base + (_color(rng) - base) * u[..., None]
    return base * (1 - rng.uniform(0.25, 0.6) * _texture(rng, yy, xx))[..., None]


def _dominant_color(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A random colour that stands out from the mean colour ``under`` the object; the best of a few
    tries keeps the draw deterministic and bounded."""
    best, best_dist = None, -1.0
    for _ in range(12):
        c = _color(rng)
        dist = float(np.linalg.norm(c - under))
        if dist >= MIN_CONTRAST:
            return c
        if dist > best_dist:
            best, best_dist = c, dist
    return best


def _light(rng: np.random.Generator, img: np.ndarray, size: int) -> np.ndarray:
    yy, xx = _grid(size)
    theta = rng.uniform(0, 2 * math.pi)
    u = ((xx - size / 2) * math.cos(theta) + (yy - size / 2) * math.sin(theta)) / (size / 2)
    illum = 1 + rng.uniform(0, 0.45) * u
    if rng.random() < 0.6:  # soft spotlight or shadow
        sx, sy = rng.uniform(0, size, 2)
        sigma = rng.uniform(0.15, 0.5) * size
        illum = illum * (1 + rng.uniform(-0.35, 0.6) * np.exp(-((xx - sx) ** 2 + (yy - sy) ** 2) / (2 * sigma**2)))
    gain = 1 + rng.normal(0, 0.06, 3).astype(np.float32)  # slight colour cast
    img = img * np.maximum(illum, 0.25)[..., None] * gain
    contrast, brightness = rng.uniform(0.7, 1.2), rng.uniform(-0.12, 0.12)
    return (img - 0.5) * np.float32(contrast) + np.float32(0.5 + brightness)


# --- scene --------------------------------------------------------------------------------------


def _render(rng: np.random.Generator, dom_cls: int, size: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    objects, dom_pos, occluded = _plan(rng, dom_cls, size)
    rasters = [_coverage(o, size) for o in objects]
    shown = [(o, r) for o, r in zip(objects, rasters, strict=True) if r is not None]
    dom = next(i for i, (o, _) in enumerate(shown) if o is objects[dom_pos])
    covs = [_full(cov, sl, size) for _, (cov, sl) in shown]
    classes = [o["cls"] for o, _ in shown]
    instance, mask = _label(covs, classes, size)
    if occluded and shown[-1][0] is objects[-1]:
        unoccluded = np.count_nonzero(covs[dom] >= 0.5)
        if np.count_nonzero(instance == dom + 1) < DOMINANT_VISIBLE_FRACTION * unoccluded:
            shown, covs, classes = shown[:-1], covs[:-1], classes[:-1]
            instance, mask = _label(covs, classes, size)

    img = _background(rng, size)
    for _, (cov, sl) in shown:
        patch = img[sl]
        under = (patch * cov[..., None]).sum(axis=(0, 1)) / max(float(cov.sum()), 1e-6)
        base = _dominant_color(rng, under)
        img[sl] = patch + (_fill(rng, base, sl, size) - patch) * cov[..., None]

    img = _light(rng, img, size)
    image = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:  # optics blur comes before sensor noise
        blurred = Image.fromarray(image).filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.9)))
        image = np.asarray(blurred)
    noise = rng.standard_normal((size, size, 3), dtype=np.float32) * np.float32(rng.uniform(0.01, 0.04) * 255)
    image = np.clip(image + noise + 0.5, 0, 255).astype(np.uint8)

    instances = []
    for k, ((_, (_, sl)), cls) in enumerate(zip(shown, classes, strict=True)):
        visible = instance[sl] == k + 1
        area = int(np.count_nonzero(visible))
        labelled = np.count_nonzero(visible & (mask[sl] == cls + 1))
        if area < MIN_AREA or area < MIN_VISIBLE_FRACTION * np.count_nonzero(covs[k] >= 0.5) or not labelled:
            mask[instance == k + 1] = IGNORE  # unannotated, so it must not count as background either
            continue
        ys, xs = np.nonzero(visible)
        x0, y0 = xs.min() + sl[1].start, ys.min() + sl[0].start
        bbox = [float(x0), float(y0), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
        instances.append({"category_id": cls + 1, "bbox": bbox, "area": area})
    return image, mask, instances


# --- dataset ------------------------------------------------------------------------------------


def _assign_splits(n: int, seed: int, val_fraction: float) -> list[str]:
    """Split of each scene: a seeded, class-stratified val selection so both splits are balanced."""
    # At least one training scene: a dataset with an empty train split is of no use.
    n_val = min(round(n * val_fraction), n - 1)
    by_class: list[list[int]] = [[] for _ in CLASSES]
    for i in range(n):
        by_class[dominant_class(i, seed)].append(i)
    rng = np.random.default_rng([seed, _SPLIT_STREAM])
    base, extra = divmod(n_val, len(CLASSES))
    # The remainder goes to the most populous classes first, which keeps train balanced as well.
    ranked = sorted(range(len(CLASSES)), key=lambda c: (-len(by_class[c]), int(rng.integers(1 << 30))))
    splits = ["train"] * n
    for rank, c in enumerate(ranked):
        take = base + (rank < extra)
        for i in rng.choice(by_class[c], size=take, replace=False) if take else ():
            splits[int(i)] = "val"
    return splits


def _render_chunk(job: tuple[str, int, int, list[tuple[int, str]]]) -> list[tuple[int, str, int, list[dict]]]:
    """Pool worker: render, encode and write a chunk of scenes; returns their annotations."""
    root, size, seed, items = job
    done = []
    for index, split in items:
        rng = np.random.default_rng([seed, index])
        cls = dominant_class(index, seed)
        image, mask, instances = _render(rng, cls, size)
        quality = int(rng.integers(80, 96))
        name = f"{index:06d}"
        Image.fromarray(image).save(os.path.join(root, "images", split, name + ".jpg"), "JPEG", quality=quality)
        Image.fromarray(mask).save(os.path.join(root, "masks", split, name + ".png"), "PNG")
        done.append((index, split, cls, instances))
    return done


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.0f} img/s" if speed else "? img/s", style="progress.data.speed")


def run_chunks(jobs: list, worker: Callable, workers: int, total: int, description: str, progress: bool) -> list:
    """Every job's results (each job returns a list, one item per image), in a pool of ``workers``
    processes, with a progress bar of ``total`` items: the loop the synthetic-data generators share."""
    results: list = []
    bar = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not progress,
    )
    if workers == 1:
        with bar:
            task = bar.add_task(description, total=total)
            for job in jobs:
                done = worker(job)
                results += done
                bar.advance(task, len(done))
        return results
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    # The pool forks before the progress bar starts its refresh thread.
    with multiprocessing.get_context(method).Pool(workers) as pool, bar:
        task = bar.add_task(description, total=total)
        for done in pool.imap_unordered(worker, jobs):
            results += done
            bar.advance(task, len(done))
    return results


def _default_workers() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _check_args(n: int, size: int, seed: int, val_fraction: float, workers: int | None) -> None:
    if not isinstance(n, int) or n < 1:
        raise ParvisError(f"n must be an integer >= 1, got {n!r}")
    if not isinstance(size, int) or size < 32:
        raise ParvisError(f"size must be an integer >= 32 (pixels), got {size!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ParvisError(f"seed must be an integer >= 0, got {seed!r}")
    if not 0 <= val_fraction < 1:
        raise ParvisError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ParvisError(f"workers must be an integer >= 1, got {workers!r}")


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # file systems without hard links
        shutil.copyfile(src, dst)


def _write_outputs(root: Path, records: list[tuple[int, str, int, list[dict]]], size: int, seed: int) -> None:
    """COCO annotations, ImageFolder links and, last, dataset.yaml (which marks the dataset complete)."""
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES)]
    coco = {split: {"images": [], "annotations": [], "categories": categories} for split in ("train", "val")}
    ann_id = 0
    for index, split, cls, instances in records:
        name = f"{index:06d}.jpg"
        # COCO tools treat id 0 as "unmatched", so ids start at 1.
        image_id = index + 1
        coco[split]["images"].append({"id": image_id, "file_name": name, "width": size, "height": size})
        for inst in instances:
            ann_id += 1
            coco[split]["annotations"].append({"id": ann_id, "image_id": image_id, **inst, "iscrowd": 0})
        _link(root / "images" / split / name, root / "classification" / split / CLASSES[cls] / name)
    for split, data in coco.items():
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data, separators=(",", ":")))

    counts = Counter(split for _, split, _, _ in records)
    meta = {
        "name": "shapes",
        "generator": "parvis.data.synth",
        "version": 1,
        "seed": seed,
        "image_size": size,
        "classes": list(CLASSES),
        "splits": {"train": counts["train"], "val": counts["val"]},
        "classification": {"format": "imagefolder", "train": "classification/train", "val": "classification/val"},
        "segmentation": {
            "format": "masks",
            "train": {"images": "images/train", "masks": "masks/train"},
            "val": {"images": "images/val", "masks": "masks/val"},
            "classes": ["background", *CLASSES],
            "ignore_index": IGNORE,
        },
        "detection": {
            "format": "coco",
            "train": {"images": "images/train", "annotations": "annotations/instances_train.json"},
            "val": {"images": "images/val", "annotations": "annotations/instances_val.json"},
        },
    }
    (root / "dataset.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))


def synthesize(
    out: str | Path,
    n: int = 1000,
    size: int = 128,
    seed: int = 0,
    val_fraction: float = 0.2,
    workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Generate ``n`` scenes into ``out`` and return a summary: {"out", "n", "size", "seed",
    "workers", "splits": {split: scenes}, "classes": {split: {class: scenes}},
    "instances": {split: annotations}, "seconds", "images_per_s"}.

    Layout: images/<split>/NNNNNN.jpg, masks/<split>/NNNNNN.png (0 background, i+1 = CLASSES[i],
    255 ignore), annotations/instances_<split>.json (COCO; image id = index + 1),
    classification/<split>/<class>/NNNNNN.jpg (hard links, labelled by the dominant object) and
    dataset.yaml, written last. NNNNNN is the global scene index, so names never collide across
    splits. Everything is written into a sibling ``OUT.tmp-<pid>`` that is renamed to ``out`` only
    when complete, so ``out`` never holds a partial dataset.
    """
    _check_args(n, size, seed, val_fraction, workers)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ParvisError(f"{out} already exists and is not empty; choose another --out or delete it")
    start = time.perf_counter()
    workers = workers or _default_workers()
    splits = _assign_splits(n, seed, val_fraction)
    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)  # leftover of a killed run that had the same pid
    try:
        for split in ("train", "val"):
            for sub in ("images", "masks"):
                (tmp / sub / split).mkdir(parents=True)
            for name in CLASSES:
                # Empty class folders too, so ImageFolder indices always match CLASSES.
                (tmp / "classification" / split / name).mkdir(parents=True)
        (tmp / "annotations").mkdir()

        # Small chunks keep the progress bar live and the two workers evenly loaded.
        chunk = max(1, min(32, math.ceil(n / (workers * 8))))
        jobs = [
            (str(tmp), size, seed, [(i, splits[i]) for i in range(s, min(n, s + chunk))]) for s in range(0, n, chunk)
        ]
        workers = min(workers, len(jobs))
        records = []
        records += run_chunks(jobs, _render_chunk, workers, n, f"shapes {size}px", progress)
        records.sort()
        _write_outputs(tmp, records, size, seed)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    seconds = time.perf_counter() - start
    per_split: dict[str, Counter] = {"train": Counter(), "val": Counter()}
    n_instances = Counter()
    for _, split, cls, instances in records:
        per_split[split][CLASSES[cls]] += 1
        n_instances[split] += len(instances)
    return {
        "out": str(out),
        "n": n,
        "size": size,
        "seed": seed,
        "workers": workers,
        "splits": {split: sum(c.values()) for split, c in per_split.items()},
        "classes": {split: {name: c[name] for name in CLASSES} for split, c in per_split.items()},
        "instances": {split: n_instances[split] for split in ("train", "val")},
        "seconds": seconds,
        "images_per_s": n / seconds,
    }
