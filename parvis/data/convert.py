"""`parvis data convert`: a detection dataset in any layout parvis reads (COCO, YOLO, VOC) rewritten as COCO or YOLO.

Every split is converted; images are hard-linked into the new layout (copied when the target is on another
file system), so a conversion costs no pixels and no decoding: sizes come from the image headers. The output
folder is built under a temporary name and renamed when complete, so a failed or interrupted run leaves
nothing behind. An annotation problem stops the conversion before anything is written, naming each file.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import track

from parvis.data.check import Layout, find_layouts, open_layout
from parvis.data.datasets import Annotation, DetectionDataset
from parvis.data.decode import image_size, read_bytes
from parvis.data.yolo import DATA_YAML, is_split_key
from parvis.errors import BadSampleError, ParvisError

TARGETS = ("coco", "yolo")
SHOWN_PROBLEMS = 10


def _split_name(layout: Layout, to: str) -> str:
    """The split's folder (and YOLO key) in the output: VOCdevkit's VOC2007/train becomes VOC2007-train, and for
    YOLO, whose data.yaml keys are train/val/test, train-VOC2007."""
    name = layout.split.replace("/", "-")
    if to == "yolo" and not is_split_key(name):
        year, _, split = name.rpartition("-")
        if is_split_key(split):
            return f"{split}-{year}"
    return name


def _read_split(dataset: DetectionDataset, progress: bool, label: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Each image's path, name, size and annotation; the problems, one line each."""
    records, problems = [], []
    indices = range(len(dataset))
    if progress:
        indices = track(indices, description=f"reading {label}", console=Console(stderr=True), transient=True)
    names: set[str] = set()
    for index in indices:
        path = dataset.image_path(index)
        try:
            height, width = image_size(read_bytes(path), path)
            found = dataset.annotation(index, height, width)
        except BadSampleError as exc:
            problems.append(f"{exc.path}: {exc.reason}")
            continue
        name = dataset.relative_name(index)
        if Path(name).is_absolute() or ".." in Path(name).parts:  # must stay inside images/<split>/
            name = Path(name).name
        if name in names:  # two list entries with one file name in different folders
            name = f"{Path(name).stem}-{index}{Path(name).suffix}"
        names.add(name)
        records.append({"path": path, "name": name, "height": height, "width": width, "annotation": found})
    return records, problems


def _place(source: Path, target: Path) -> bool:
    """Hard-link ``source`` at ``target`` (copy across file systems); True when it was linked."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
        return True
    except OSError:
        shutil.copy2(source, target)
        return False


def _coco_json(records: list[dict[str, Any]], classes: list[str]) -> dict[str, Any]:
    images, annotations = [], []

    def add(image_id: int, box: tuple[float, float, float, float], label: int, crowd: int) -> None:
        record = records[image_id - 1]  # clamped: VOC tolerates a pixel of overhang, COCO half of one
        x1, x2 = (min(max(v, 0.0), float(record["width"])) for v in (box[0], box[2]))
        y1, y2 = (min(max(v, 0.0), float(record["height"])) for v in (box[1], box[3]))
        w, h = x2 - x1, y2 - y1
        annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": label + 1,
                            "bbox": [round(x1, 2), round(y1, 2), round(w, 2), round(h, 2)],
                            "area": round(w * h, 2), "iscrowd": crowd})  # fmt: skip

    for image_id, record in enumerate(records, start=1):
        images.append({"id": image_id, "file_name": record["name"], "width": record["width"],
                       "height": record["height"]})  # fmt: skip
        found: Annotation = record["annotation"]
        for box, label in zip(found.boxes, found.labels, strict=True):
            add(image_id, box, label, 0)
        for box, label in found.ignored:
            add(image_id, box, label, 1)
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(classes)]
    return {"images": images, "annotations": annotations, "categories": categories}


def _yolo_lines(record: dict[str, Any]) -> str:
    found: Annotation = record["annotation"]
    height, width = record["height"], record["width"]
    lines = []
    for (x1, y1, x2, y2), label in zip(found.boxes, found.labels, strict=True):
        x1, x2 = max(0.0, x1), min(float(width), x2)
        y1, y2 = max(0.0, y1), min(float(height), y2)
        if x2 <= x1 or y2 <= y1:
            continue
        cx, cy, w, h = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height
        lines.append(f"{label} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n")
    return "".join(lines)


def convert_detection(src: str | Path, to: str, out: str | Path, progress: bool = False) -> dict[str, Any]:
    """Rewrite every detection split of ``src`` in the ``to`` layout under ``out`` (which must not exist or be
    empty). Returns what was written: splits, images, boxes, how many images were linked, what was dropped."""
    src, out = Path(src), Path(out)
    start = time.perf_counter()
    if to not in TARGETS:
        raise ParvisError(f"--to {to!r} is not supported; choose one of: {', '.join(TARGETS)}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ParvisError(f"{out}: exists and is not an empty folder; choose a new --out")
    layouts = [layout for layout in find_layouts(src) if layout.task == "detection"]
    if not layouts:
        raise ParvisError(f"{src}: has no detection data (COCO, YOLO, VOC); `parvis data check {src}` lists it")
    splits, classes = {}, None
    problems: list[str] = []
    for layout in layouts:
        dataset = open_layout(layout)
        if not isinstance(dataset, DetectionDataset):
            raise ParvisError(f"{src}: {layout.name} cannot be converted")
        if classes is not None and list(dataset.classes) != classes:
            raise ParvisError(
                f"{src}: split {layout.split!r} has classes {dataset.classes} but an earlier split has {classes}; "
                "a converted dataset has one class list"
            )
        classes = list(dataset.classes)
        records, found = _read_split(dataset, progress, layout.name)
        problems += found
        key = _split_name(layout, to)
        if key in splits:
            raise ParvisError(f"{src}: two splits would both be written as {key!r}; convert them separately")
        splits[key] = records
    if problems:
        shown = "; ".join(problems[:SHOWN_PROBLEMS])
        more = f" (and {len(problems) - SHOWN_PROBLEMS} more)" if len(problems) > SHOWN_PROBLEMS else ""
        raise ParvisError(
            f"{src}: {len(problems)} annotation problem(s), nothing written: {shown}{more}; "
            f"fix them (`parvis data check {src}` lists all) and convert again"
        )
    assert classes is not None
    tmp = out.parent / f".{out.name}.converting-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    linked = images = boxes = dropped = 0
    try:
        tmp.mkdir(parents=True)
        for split, records in splits.items():
            (tmp / "images" / split).mkdir(parents=True, exist_ok=True)  # an empty split is still a split
            if to == "yolo":
                (tmp / "labels" / split).mkdir(parents=True, exist_ok=True)
            for record in records:
                linked += _place(record["path"], tmp / "images" / split / record["name"])
                images += 1
                boxes += len(record["annotation"].boxes)
                if to == "yolo":
                    dropped += len(record["annotation"].ignored)
                    label = (tmp / "labels" / split / record["name"]).with_suffix(".txt")
                    label.parent.mkdir(parents=True, exist_ok=True)
                    label.write_text(_yolo_lines(record))  # an empty file: an image without objects
            if to == "coco":
                path = tmp / "annotations" / f"instances_{split}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(_coco_json(records, classes)))
        if to == "yolo":
            config = {split: f"images/{split}" for split in splits}
            config["names"] = dict(enumerate(classes))
            (tmp / DATA_YAML).write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {
        "to": to,
        "splits": {split: len(records) for split, records in splits.items()},
        "classes": classes,
        "images": images,
        "boxes": boxes,
        "linked": linked,
        "dropped_ignored": dropped,
        "seconds": time.perf_counter() - start,
    }
