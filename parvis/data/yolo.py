"""Detection in the YOLO txt layout, as Ultralytics writes it.

    data.yaml              names (a list, or {id: name}), train/val/test: image folders or .txt lists
    images/<split>/x.jpg   the images
    labels/<split>/x.txt   one object per line: class cx cy w h, normalized to [0, 1] (a polygon
                           "class x1 y1 x2 y2 ..." from a segmentation export counts as its bounding box)

An image's label file is its path with the last ``images`` folder replaced by ``labels`` and the suffix
by ``.txt`` (Ultralytics' rule). An empty label file is an image without objects; a missing one is
read the same way (as Ultralytics does) but ``parvis data check`` warns about it, since it is as often
a label that never got copied.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from parvis.data.datasets import Annotation, DetectionDataset, LayoutError, Transform, is_image_name, list_images
from parvis.errors import BadSampleError

DATA_YAML = "data.yaml"
SPLITS = ("train", "val", "test", "trainval", "all")  # Ultralytics reads the first three


def is_split_key(key: object) -> bool:
    """A data.yaml key that names a split: train/val/test (also train2017, val2017, ...), trainval, all."""
    return isinstance(key, str) and (key in SPLITS or re.fullmatch(r"(train|val|test)[\w-]*", key) is not None)


# Exporters write 6 significant digits; a value a rounding step past 1 is still a normalized one.
TOLERANCE = 1e-6


def label_path(image: Path) -> Path:
    """Ultralytics' rule: the last ``images`` folder of the path becomes ``labels``, the suffix ``.txt``."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")  # no images/ folder: the label sits next to the image


@dataclass
class LabelLine:
    line: int
    label: int
    box: tuple[float, float, float, float]  # normalized x1, y1, x2, y2


@dataclass
class LabelFile:
    """One parsed label file: its objects and what is wrong with it, by line number."""

    path: Path
    exists: bool
    objects: list[LabelLine] = field(default_factory=list)
    errors: list[tuple[int, str]] = field(default_factory=list)
    warnings: list[tuple[int, str]] = field(default_factory=list)


def read_labels(path: Path, num_classes: int) -> LabelFile:
    """Parse ``path``; problems are collected per line, never raised (a missing file has none)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return LabelFile(path, exists=False)
    except (OSError, UnicodeDecodeError) as exc:
        return LabelFile(path, True, errors=[(0, f"cannot be read as text ({exc}); re-create it")])
    result = LabelFile(path, exists=True)
    seen: dict[tuple[str, ...], int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        fields = raw.split()
        if not fields:
            continue
        problem = _line_problem(fields, num_classes)
        if problem:
            result.errors.append((number, problem))
            continue
        key = tuple(fields)
        if key in seen:
            result.warnings.append((number, f"repeats line {seen[key]}; the duplicate is dropped"))
            continue
        seen[key] = number
        values = [float(v) for v in fields[1:]]
        if len(values) == 4:
            cx, cy, w, h = values
            box = (max(0.0, cx - w / 2), max(0.0, cy - h / 2), min(1.0, cx + w / 2), min(1.0, cy + h / 2))
        else:  # polygon
            xs, ys = values[0::2], values[1::2]
            box = (min(xs), min(ys), max(xs), max(ys))
        result.objects.append(LabelLine(number, int(float(fields[0])), box))
    return result


def _line_problem(fields: list[str], num_classes: int) -> str | None:
    n = len(fields) - 1
    if not (n == 4 or (n >= 6 and n % 2 == 0)):
        return (
            f"expected 'class cx cy w h' (5 values) or a polygon 'class x1 y1 x2 y2 x3 y3 ...', got {len(fields)} "
            f"values: {' '.join(fields)[:60]!r}"
        )
    try:
        values = [float(v) for v in fields]
    except ValueError:
        return f"not numbers: {' '.join(fields)[:60]!r}"
    label = values[0]
    if not math.isfinite(label) or label != int(label) or label < 0:
        return f"class {fields[0]!r} is not a class id (a whole number from 0)"
    if label >= num_classes:
        return f"class {int(label)} is out of range: {DATA_YAML} names {num_classes} classes (ids 0-{num_classes - 1})"
    coords = values[1:]
    bad = [fields[i + 1] for i, v in enumerate(coords) if not (-TOLERANCE <= v <= 1 + TOLERANCE)]
    if bad:
        return f"coordinates {', '.join(bad)} are outside [0, 1]; YOLO labels are normalized by the image size"
    if n == 4 and (coords[2] <= 0 or coords[3] <= 0):
        return f"box width or height is 0 ({fields[3]} x {fields[4]})"
    return None


@dataclass
class YoloConfig:
    """A parsed data.yaml: the class names and each split's image list."""

    path: Path
    root: Path
    names: list[str]
    splits: dict[str, list[Path]]  # split -> image folders or .txt list files


def _names(path: Path, data: dict[str, Any]) -> list[str]:
    names = data.get("names")
    if isinstance(names, dict):
        try:
            ids = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise LayoutError(path, f"names keys must be class ids 0, 1, ...; got {list(names)[:5]}") from None
        if ids != list(range(len(ids))):
            raise LayoutError(path, f"names ids must run 0..{len(ids) - 1} without gaps; got {ids[:10]}")
        names = [names[k] if k in names else names[str(k)] for k in ids]
    if not isinstance(names, list) or not names:
        raise LayoutError(path, "needs 'names': the class names, as a list or {0: name, 1: name, ...}")
    nc = data.get("nc")
    if nc is not None and nc != len(names):
        raise LayoutError(path, f"nc is {nc} but names lists {len(names)} classes; make them agree")
    return [str(n) for n in names]


def load_yolo_config(path: str | Path) -> YoloConfig:
    """Read an Ultralytics data.yaml. ``path:`` is honored when it names an existing folder (absolute,
    or relative to the yaml); otherwise the yaml's folder is the root, as for a dataset copied elsewhere."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LayoutError(path, f"cannot be read as YAML ({reason}); fix it") from None
    if not isinstance(data, dict):
        raise LayoutError(path, "expected a mapping with 'names' and 'train'/'val' (the YOLO data.yaml)")
    names = _names(path, data)
    root = path.parent
    if isinstance(data.get("path"), str):
        stated = Path(data["path"])
        candidate = stated if stated.is_absolute() else path.parent / stated
        if candidate.is_dir():
            root = candidate
    splits: dict[str, list[Path]] = {}
    for split in [key for key in data if is_split_key(key)]:
        value = data.get(split)
        if not value:  # Ultralytics leaves `test:` empty when there is none
            continue
        entries = value if isinstance(value, list) else [value]
        if not all(isinstance(e, str) for e in entries):
            raise LayoutError(path, f"'{split}' must be a folder or .txt list of images (or a list of them)")
        resolved = []
        for entry in entries:
            where = root / entry
            if not where.exists() and entry.startswith("../"):
                where = root / entry[3:]  # exports that point one level up from a copied root
            if not where.exists():
                raise LayoutError(path, f"'{split}: {entry}' does not exist under {root}; fix the path")
            resolved.append(where)
        splits[split] = resolved
    if not splits:
        raise LayoutError(path, "lists no split: add 'train: images/train' and 'val: images/val'")
    return YoloConfig(path, root, names, splits)


def split_images(sources: list[Path]) -> list[Path]:
    """The images of a split: every image under its folders, and the paths each .txt list names
    (relative to the list's own folder), in order."""
    images: list[Path] = []
    for source in sources:
        if source.is_dir():
            images += list_images(source)
            continue
        try:
            text = source.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise LayoutError(source, f"cannot be read as a list of image paths ({exc}); fix the file") from None
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if not line:
                continue
            image = Path(line) if os.path.isabs(line) else source.parent / line
            if not is_image_name(image.name):
                raise LayoutError(source, f"line {number}: {line!r} is not an image path")
            images.append(image)
    return images


class YoloDetectionDataset(DetectionDataset):
    """Samples as CocoDetectionDataset's: (Image, {"boxes": XYXY pixels, "labels", "image_id": index})."""

    def __init__(
        self,
        images: list[Path] | Path,
        classes: list[str],
        transform: Transform | None = None,
        on_bad_sample: str = "error",
        decoder: str = "auto",
        min_size: int | None = None,
    ):
        super().__init__(transform=transform, on_bad_sample=on_bad_sample, decoder=decoder, min_size=min_size)
        sources = [images] if isinstance(images, Path) else list(images)
        for source in sources:
            if not source.exists():
                raise LayoutError(source, "no such images folder or list; check the path")
        self.sources = sources
        self.images = split_images(sources)
        self.classes = list(classes)

    def __len__(self) -> int:
        return len(self.images)

    def image_path(self, index: int) -> Path:
        return self.images[index]

    def relative_name(self, index: int) -> str:
        for source in self.sources:
            if source.is_dir() and self.images[index].is_relative_to(source):
                return self.images[index].relative_to(source).as_posix()
        return self.images[index].name

    def labels(self, index: int) -> LabelFile:
        return read_labels(label_path(self.images[index]), len(self.classes))

    def label_counts(self) -> dict[int, int]:
        return dict(Counter(o.label for i in range(len(self)) for o in self.labels(i).objects))

    def annotation(self, index: int, height: int, width: int) -> Annotation:
        parsed = self.labels(index)
        if parsed.errors:
            number, message = parsed.errors[0]
            raise BadSampleError(f"{parsed.path}:{number}" if number else parsed.path, message)
        boxes = [(o.box[0] * width, o.box[1] * height, o.box[2] * width, o.box[3] * height) for o in parsed.objects]
        return Annotation(boxes, [o.label for o in parsed.objects], [])
