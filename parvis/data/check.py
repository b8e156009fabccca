"""Find a dataset's layouts, open one of them, or check all of them file by file.

The check decodes every image fully, because a truncated JPEG is only found by decoding it. That
is the slow part, so it runs in a process pool, and a file that several layouts reference (the
generator's segmentation and detection splits share images/) is decoded once.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import statistics
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import yaml
from rich.console import Console
from rich.progress import track

from parvis.data.coco import CocoAnnotations, CocoDetectionDataset
from parvis.data.datasets import FileDataset, LayoutError, is_image_name
from parvis.data.decode import MAX_IMAGE_PIXELS, read_image, read_mask
from parvis.data.imagefolder import ImageFolderDataset
from parvis.data.inspection import (
    GOOD,
    GROUND_TRUTH,
    MASK_SUFFIX,
    InspectionDataset,
    is_inspection_root,
    list_split,
    read_defect_mask,
)
from parvis.data.inspection import SPLITS as INSPECTION_SPLITS
from parvis.data.inspection import size_message as defect_size_message
from parvis.data.maskfolder import (
    MaskFolderDataset,
    label_histogram,
    missing_mask_message,
    out_of_range_message,
    size_mismatch_message,
    unexpected_ids,
)
from parvis.data.stereo import (
    DISPARITY_DIR,
    SIDES,
    DisparityStats,
    StereoDataset,
    disparity_size_message,
    disparity_stats,
    negative_message,
    pair_size_message,
    read_disparity,
)
from parvis.data.voc import SPLITS as VOC_SPLITS
from parvis.data.voc import VocDetectionDataset
from parvis.data.yolo import DATA_YAML, YoloDetectionDataset, is_split_key, label_path, load_yolo_config
from parvis.errors import BadSampleError, ParvisError

CONFIG_NAME = "dataset.yaml"
# Each task's default format first.
FORMATS = {"classification": ("imagefolder",), "segmentation": ("masks",), "detection": ("coco", "yolo", "voc"),
           "stereo": ("stereo",)}  # fmt: skip
TASK_FORMATS = {task: formats[0] for task, formats in FORMATS.items()}
# The paths a split of each format needs in dataset.yaml (imagefolder, stereo: the split's value is its folder),
# and those it may add.
SPLIT_PATHS = {"masks": ("images", "masks"), "coco": ("images", "annotations"), "yolo": ("images",),
               "voc": ("images", "annotations")}  # fmt: skip
OPTIONAL_PATHS = {"voc": ("list",)}
# Keys of a task entry in dataset.yaml that are settings, not split names.
TASK_SETTINGS = ("format", "classes", "ignore_index")
VOC_FOLDERS = {"Annotations", "JPEGImages", "ImageSets", "VOCdevkit", "SegmentationClass", "SegmentationObject"}
RECOGNIZED = (
    "COCO (annotations/*.json with images/), YOLO (data.yaml with images/ + labels/), Pascal VOC (Annotations/ + "
    "JPEGImages/), mask folders (images/ + masks/), stereo (left/ + right/ [+ disparity/], or <split>/left + "
    "right), inspection (MVTec AD: train/good + test/<defect> + ground_truth/), ImageFolder (<class>/<image> or "
    "<split>/<class>/<image>)"
)


@dataclass
class Layout:
    """One split of one task: where its files are and what dataset.yaml says about its classes."""

    task: str
    split: str
    paths: dict[str, Path]  # the format's SPLIT_PATHS; classification: root; YOLO from a data.yaml: data
    classes: list[str] | None = None
    ignore_index: int = 255
    format: str = ""

    def __post_init__(self) -> None:
        self.format = self.format or TASK_FORMATS[self.task]

    @property
    def name(self) -> str:
        return f"{self.task}/{self.split}"


def load_config(root: str | Path) -> dict[str, Any] | None:
    """ROOT/dataset.yaml as a mapping, or None when there is none."""
    path = Path(root) / CONFIG_NAME
    if not path.exists():
        return None
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ParvisError(f"{path}: cannot be read as YAML ({reason}); fix or delete it") from None
    if not isinstance(config, dict):
        raise ParvisError(f"{path}: expected a mapping with keys {', '.join(TASK_FORMATS)}; fix or delete it")
    return config


def config_layouts(root: str | Path, config: dict[str, Any]) -> list[Layout]:
    """The layouts dataset.yaml lists, with paths made absolute against ROOT."""
    root = Path(root)
    where = root / CONFIG_NAME
    layouts = []
    for task, formats in FORMATS.items():
        entry = config.get(task)
        if entry is None:
            continue
        if not isinstance(entry, dict):
            raise ParvisError(f"{where}: '{task}' must be a mapping of split names to paths")
        fmt = entry.get("format", formats[0])
        if fmt not in formats:
            raise ParvisError(f"{where}: {task}.format is {fmt!r}; choose one of: {', '.join(formats)}")
        classes = entry.get("classes", config.get("classes") if task == "classification" or fmt == "yolo" else None)
        if fmt == "yolo" and classes is None:
            raise ParvisError(f"{where}: {task} in YOLO format needs 'classes' (the names of class ids 0, 1, ...)")
        if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
            raise ParvisError(f"{where}: classes of '{task}' must be a list of names")
        ignore_index = entry.get("ignore_index", 255)
        if not isinstance(ignore_index, int):
            raise ParvisError(f"{where}: {task}.ignore_index must be an integer, got {ignore_index!r}")
        for split, value in entry.items():
            if split in TASK_SETTINGS:
                continue
            keys = SPLIT_PATHS.get(fmt)
            if keys is None:
                if not isinstance(value, str):
                    raise ParvisError(f"{where}: {task}.{split} must be a folder path")
                paths = {"root": root / value}
            else:
                if not isinstance(value, dict) or not all(isinstance(value.get(k), str) for k in keys):
                    raise ParvisError(f"{where}: {task}.{split} needs {' and '.join(repr(k) for k in keys)} paths")
                optional = [k for k in OPTIONAL_PATHS.get(fmt, ()) if isinstance(value.get(k), str)]
                paths = {k: root / value[k] for k in (*keys, *optional)}
            layouts.append(Layout(task, str(split), paths, classes, ignore_index, fmt))
    if config.get("task") == "stereo" and not any(layout.task == "stereo" for layout in layouts):
        layouts += _stereo_layouts(root)  # "task: stereo" alone: the splits are the folders found
    if config.get("task") == "inspection":
        layouts += _inspection_layouts(root)  # the layout is fixed (MVTec AD's): nothing to list
    if not layouts:
        raise ParvisError(f"{where}: lists no splits under {', '.join(TASK_FORMATS)}; add at least one")
    return layouts


def detect_layouts(root: str | Path) -> list[Layout]:
    """Recognize the layouts of a dataset that has no dataset.yaml."""
    root = Path(root)
    layouts = []
    claimed = set()  # top-level folders that belong to a layout, so ImageFolder detection leaves them alone
    annotation_dir = root / "annotations"
    jsons = sorted(annotation_dir.glob("*.json")) if annotation_dir.is_dir() else []
    jsons += [path for path in sorted(root.glob("*.json")) if _looks_like_coco(path)]
    for path in jsons:
        split = path.stem.removeprefix("instances_")
        base = root if path.parent == annotation_dir else path.parent
        candidates = (base / "images" / split, base / "images", path.parent)
        images = next(folder for folder in candidates if folder.is_dir())
        layouts.append(Layout("detection", split, {"images": images, "annotations": path}))
        claimed |= {"images", "annotations"}
    yolo = _find_yolo_yaml(root)
    if yolo is not None:
        config = load_yolo_config(yolo)
        layouts += [Layout("detection", split, {"data": yolo}, config.names, format="yolo") for split in config.splits]
        claimed |= {"images", "labels"}
    elif not layouts and (root / "images").is_dir() and (root / "labels").is_dir():
        raise ParvisError(
            f"{root}: has images/ and labels/ (the YOLO layout) but no {DATA_YAML} naming the classes; write "
            f"{root / DATA_YAML} with 'names: [...]', 'train: images/train' and 'val: images/val'"
        )
    # A classifier's ImageFolder may have a class "good" too; it has no ground_truth/ and more classes in train/.
    if is_inspection_root(root) and (
        (root / GROUND_TRUTH).is_dir() or _subdirs(root / "train") == [root / "train" / GOOD]
    ):
        layouts += _inspection_layouts(root)
        claimed |= {*INSPECTION_SPLITS, GROUND_TRUTH}  # train/good/ would read as an ImageFolder class otherwise
    stereo = _stereo_layouts(root)
    layouts += stereo
    for layout in stereo:  # left/ and right/ hold images, which ImageFolder detection would take for classes
        claimed |= {*SIDES, DISPARITY_DIR} if layout.split == "all" else {layout.split}
    for base in [root, *sorted(root.glob("VOCdevkit/VOC*"))]:
        if (base / "Annotations").is_dir() and (base / "JPEGImages").is_dir():
            layouts += _voc_layouts(root, base)
            claimed |= VOC_FOLDERS
    if (root / "images").is_dir() and (root / "masks").is_dir():
        splits = sorted(
            d.name for d in (root / "images").iterdir() if d.is_dir() and (root / "masks" / d.name).is_dir()
        )
        pairs = [(s, root / "images" / s, root / "masks" / s) for s in splits] or [
            ("all", root / "images", root / "masks")
        ]
        layouts += [Layout("segmentation", s, {"images": i, "masks": m}) for s, i, m in pairs]
        claimed |= {"images", "masks"}
    folders = _find_imagefolders(root, claimed)
    names = [folder.name for folder in folders]
    for folder in folders:
        if folder == root:
            split = "all"
        elif names.count(folder.name) == 1:
            split = folder.name  # classification/train -> "train", matching the other tasks' split names
        else:
            split = folder.relative_to(root).as_posix()
        layouts.append(Layout("classification", split, {"root": folder}))
    if not layouts:
        raise ParvisError(f"{root}: no {CONFIG_NAME} and no recognized layout; expected one of: {RECOGNIZED}")
    return layouts


def find_layouts(root: str | Path) -> list[Layout]:
    """The layouts of dataset.yaml when there is one, else the detected ones."""
    root = Path(root)
    if not root.is_dir():
        raise ParvisError(f"{root}: no such dataset folder; check the path")
    config = load_config(root)
    return config_layouts(root, config) if config is not None else detect_layouts(root)


def _stereo_layouts(root: Path) -> list[Layout]:
    """ROOT/left + ROOT/right as split "all", else one split per ROOT/<split> that has left/ and right/."""
    if all((root / side).is_dir() for side in SIDES):
        return [Layout("stereo", "all", {"root": root})]
    return [
        Layout("stereo", folder.name, {"root": folder})
        for folder in _subdirs(root)
        if all((folder / side).is_dir() for side in SIDES)
    ]


def _inspection_layouts(root: Path) -> list[Layout]:
    """train, val and test: val (and with it test) taken from test/ when there is no val/ folder."""
    return [Layout("inspection", split, {"root": root}, format="inspection") for split in INSPECTION_SPLITS]


def _find_yolo_yaml(root: Path) -> Path | None:
    """ROOT/data.yaml, else the one other YAML in ROOT that has YOLO's 'names' and a split key."""
    if (root / DATA_YAML).is_file():
        return root / DATA_YAML
    found = []
    for path in sorted([*root.glob("*.yaml"), *root.glob("*.yml")]):
        if path.name == CONFIG_NAME:
            continue
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        if isinstance(data, dict) and "names" in data and any(is_split_key(k) for k in data):
            found.append(path)
    return found[0] if len(found) == 1 else None


def _voc_layouts(root: Path, base: Path) -> list[Layout]:
    """One layout per ImageSets/Main/<split>.txt (per-class lists like cat_train.txt are not splits); without
    them one split "all". Under VOCdevkit each year's splits are named VOC2007/train and so on."""
    paths = {"images": base / "JPEGImages", "annotations": base / "Annotations"}
    lists = [base / "ImageSets" / "Main" / f"{split}.txt" for split in VOC_SPLITS]
    prefix = "" if base == root else f"{base.name}/"
    found = [Layout("detection", prefix + p.stem, {**paths, "list": p}, format="voc") for p in lists if p.is_file()]
    return found or [Layout("detection", prefix + "all", paths, format="voc")]


def _looks_like_coco(path: Path) -> bool:
    try:
        CocoAnnotations(path)
    except LayoutError:
        return False
    return True


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _is_imagefolder(folder: Path) -> bool:
    return any(is_image_name(p.name) for d in _subdirs(folder) for p in d.iterdir())


def _find_imagefolders(root: Path, claimed: set[str]) -> list[Path]:
    """ROOT itself, else <split>/ or <group>/<split>/ below it, whose class subfolders hold images."""
    if not claimed and _is_imagefolder(root):
        return [root]
    found = []
    for child in _subdirs(root):
        if child.name in claimed:
            continue
        if _is_imagefolder(child):
            found.append(child)
        else:
            found += [folder for folder in _subdirs(child) if _is_imagefolder(folder)]
    return found


def open_layout(layout: Layout, **kwargs: Any) -> FileDataset:
    if layout.task == "classification":
        return ImageFolderDataset(layout.paths["root"], **kwargs)
    if layout.task == "segmentation":
        return MaskFolderDataset(
            layout.paths["images"],
            layout.paths["masks"],
            ignore_index=layout.ignore_index,
            classes=layout.classes,
            **kwargs,
        )
    if layout.task == "stereo":
        return StereoDataset(layout.paths["root"], **kwargs)
    if layout.task == "inspection":
        return InspectionDataset(layout.paths["root"], layout.split, **kwargs)
    if layout.format == "yolo":
        if "data" in layout.paths:
            config = load_yolo_config(layout.paths["data"])
            return YoloDetectionDataset(config.splits[layout.split], config.names, **kwargs)
        return YoloDetectionDataset(layout.paths["images"], layout.classes or [], **kwargs)
    if layout.format == "voc":
        paths = layout.paths
        return VocDetectionDataset(paths["images"], paths["annotations"], paths.get("list"), layout.classes, **kwargs)
    return CocoDetectionDataset(layout.paths["images"], layout.paths["annotations"], **kwargs)


def open_dataset(root: str | Path, task: str, split: str, **kwargs: Any) -> FileDataset:
    """The dataset of ``task`` and ``split`` under ROOT; kwargs go to the reader (transform, on_bad_sample, ...).

    Without dataset.yaml a classification ROOT is ROOT/<split> or else ROOT itself in ImageFolder
    layout; other tasks use the detected layouts. An inspection ROOT is in MVTec AD's layout, whose reader
    takes val from test/ when there is no val/ (``split_note`` says so).
    """
    if task == "inspection":
        return InspectionDataset(root, split, **kwargs)
    if task not in TASK_FORMATS:
        raise ParvisError(f"task {task!r} is not supported; choose one of: {', '.join(TASK_FORMATS)}")
    root = Path(root)
    if not root.is_dir():
        raise ParvisError(f"{root}: no such dataset folder; check the path")
    config = load_config(root)
    if config is None and task == "classification":
        folder = root / split
        return ImageFolderDataset(folder if folder.is_dir() else root, **kwargs)
    layouts = config_layouts(root, config) if config is not None else detect_layouts(root)
    for layout in layouts:
        if (layout.task, layout.split) == (task, split):
            return open_layout(layout, **kwargs)
    source = root / CONFIG_NAME if config is not None else root
    listed = ", ".join(layout.name for layout in layouts)
    raise ParvisError(f"{source}: has no {task} split {split!r}; it has: {listed}")


@dataclass
class Problem:
    path: str
    message: str
    severity: str = "error"  # "warning": worth fixing, but training works

    def line(self) -> str:
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{self.path}: {prefix}{self.message}"


@dataclass
class CheckReport:
    layouts: list[str]
    summary: dict[str, Any]
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(problem.severity == "error" for problem in self.problems)

    def lines(self) -> list[str]:
        return [problem.line() for problem in self.problems]


class _Inspected(NamedTuple):
    """What a worker learned about one file: its size, a mask's label histogram, a disparity map's
    statistics, or what is wrong."""

    height: int = 0
    width: int = 0
    histogram: np.ndarray | None = None
    error: str | None = None
    disparity: DisparityStats | None = None


def _inspect(job: tuple[str, str, int]) -> _Inspected:
    kind, path, max_pixels = job
    try:
        if kind == "mask":
            mask = read_mask(path, max_pixels=max_pixels)
            return _Inspected(mask.shape[0], mask.shape[1], histogram=label_histogram(mask))
        if kind == "defect_mask":
            mask = read_defect_mask(path, max_pixels=max_pixels)
            return _Inspected(mask.shape[0], mask.shape[1], histogram=label_histogram(mask))
        if kind == "disparity":
            disparity = read_disparity(path, max_pixels=max_pixels)
            return _Inspected(disparity.shape[0], disparity.shape[1], disparity=disparity_stats(disparity))
        image = read_image(path, max_pixels=max_pixels)
        return _Inspected(image.shape[0], image.shape[1])
    except BadSampleError as exc:
        return _Inspected(error=exc.reason)
    except Exception as exc:  # one odd file must not abort the check of thousands
        return _Inspected(error=f"could not be checked ({type(exc).__name__}: {exc})")


class _Files:
    """The distinct files to inspect: keyed by resolved path, so a file shared by layouts is read once."""

    def __init__(self) -> None:
        self.jobs: dict[tuple[str, str], int] = {}
        # Resolving each folder once instead of each file saves a realpath (an lstat per path component) per
        # file; a symlinked *file* then counts as its own, which costs a duplicate decode, never a wrong result.
        self.real_folder = functools.lru_cache(maxsize=None)(os.path.realpath)

    def add(self, kind: str, path: Path) -> tuple[str, str]:
        key = (kind, os.path.join(self.real_folder(os.path.dirname(path)), path.name))
        self.jobs.setdefault(key, len(self.jobs))
        return key

    def inspect(self, max_pixels: int, workers: int | None, progress: bool) -> dict[tuple[str, str], _Inspected]:
        jobs = [(kind, path, max_pixels) for kind, path in self.jobs]
        if workers is None:
            # A pool costs ~50 ms per worker to start, which small sets do not win back.
            workers = (os.cpu_count() or 1) if len(jobs) >= 256 else 1
        workers = max(1, min(workers, len(jobs)))
        with ExitStack() as stack:
            if workers == 1:
                results: Iterable[_Inspected] = map(_inspect, jobs)
            else:
                # fork: the workers inherit the imported decoders instead of re-importing torch (~2 s each).
                context = multiprocessing.get_context("fork") if sys.platform.startswith("linux") else None
                pool = stack.enter_context(ProcessPoolExecutor(workers, mp_context=context))
                results = pool.map(_inspect, jobs, chunksize=max(1, min(64, len(jobs) // (workers * 8))))
            if progress:
                results = _track(results, len(jobs))
            return dict(zip(self.jobs, results, strict=True))


def _track(results: Iterable[_Inspected], total: int) -> Iterator[_Inspected]:
    yield from track(results, total=total, description="checking files", console=Console(stderr=True), transient=True)


def _box_stats(per_image: list[int], per_class: dict[str, int]) -> dict[str, Any]:
    """The box counts every detection layout's summary shows."""
    return {
        "boxes": sum(per_image),
        "boxes_per_class": per_class,
        "boxes_per_image_mean": round(sum(per_image) / max(1, len(per_image)), 4),
        "images_without_boxes": per_image.count(0),
    }


def _size_stats(sizes: list[tuple[int, int]]) -> dict[str, Any]:
    if not sizes:
        return {}
    heights, widths = zip(*sizes, strict=True)
    return {
        axis: {"min": min(values), "median": statistics.median(values), "max": max(values)}
        for axis, values in (("width", widths), ("height", heights))
    }


class _LayoutCheck:
    """The check of one layout split, in two passes around the shared decode: ``plan`` lists the files
    to inspect (and finds what needs no decoding), ``finish`` turns the results into problems and stats."""

    def __init__(self, layout: Layout, root: Path):
        self.layout = layout
        self.root = root
        self.problems: list[Problem] = []
        self.dataset: Any = None

    def display(self, path: Path | str) -> str:
        path = Path(path)
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def problem(self, path: Path | str, message: str, severity: str = "error") -> None:
        self.problems.append(Problem(self.display(path), message, severity))

    def plan(self, files: _Files) -> None:
        try:
            self.dataset = open_layout(self.layout)
        except LayoutError as exc:
            self.problem(exc.path, exc.reason)
            return
        self.plan_files(files)

    def finish(self, results: dict[tuple[str, str], _Inspected]) -> dict[str, Any]:
        stats = {"format": self.layout.format}
        stats["paths"] = {name: self.display(path) for name, path in self.layout.paths.items()}
        if self.dataset is not None:
            stats.update(self.finish_files(results))
        stats["problems"] = len(self.problems)
        return stats

    def image_result(self, path: Path, result: _Inspected, sizes: list[tuple[int, int]]) -> bool:
        if result.error:
            self.problem(path, result.error)
            return False
        sizes.append((result.height, result.width))
        return True

    def plan_files(self, files: _Files) -> None:
        raise NotImplementedError

    def finish_files(self, results: dict[tuple[str, str], _Inspected]) -> dict[str, Any]:
        raise NotImplementedError


class _ImageFolderCheck(_LayoutCheck):
    def plan_files(self, files: _Files) -> None:
        dataset: ImageFolderDataset = self.dataset
        self.keys = [files.add("image", path) for path, _ in dataset.samples]
        counts = Counter(dataset.targets)
        for index, name in enumerate(dataset.classes):
            if not counts[index]:
                self.problem(dataset.root / name, f"empty class folder (it still takes class index {index})", "warning")
        if self.layout.classes is not None and self.layout.classes != dataset.classes:
            self.problem(
                dataset.root,
                f"class folders {dataset.classes} differ from the classes in {CONFIG_NAME} {self.layout.classes}; "
                "class indices follow the folders",
                "warning",
            )

    def finish_files(self, results: dict[tuple[str, str], _Inspected]) -> dict[str, Any]:
        dataset: ImageFolderDataset = self.dataset
        sizes: list[tuple[int, int]] = []
        for (path, _), key in zip(dataset.samples, self.keys, strict=True):
            self.image_result(path, results[key], sizes)
        counts = Counter(dataset.targets)
        return {
            "images": len(dataset.samples),
            "classes": len(dataset.classes),
            "images_per_class": {name: counts[i] for i, name in enumerate(dataset.classes)},
            "size": _size_stats(sizes),
        }


class _MaskFolderCheck(_LayoutCheck):
    def plan_files(self, files: _Files) -> None:
        dataset: MaskFolderDataset = self.dataset
        self.keys = []
        for image_path, mask_path in dataset.samples:
            mask_key = None
            if mask_path.is_file():
                mask_key = files.add("mask", mask_path)
            else:
                self.problem(image_path, missing_mask_message(self.display(mask_path)))
            self.keys.append((files.add("image", image_path), mask_key))

    def finish_files(self, results: dict[tuple[str, str], _Inspected]) -> dict[str, Any]:
        dataset: MaskFolderDataset = self.dataset
        sizes: list[tuple[int, int]] = []
        histogram = np.zeros(256, dtype=np.int64)
        masks = 0
        for (image_path, mask_path), (image_key, mask_key) in zip(dataset.samples, self.keys, strict=True):
            image = results[image_key]
            image_ok = self.image_result(image_path, image, sizes)
            if mask_key is None:
                continue
            mask = results[mask_key]
            if mask.error:
                self.problem(mask_path, mask.error)
                continue
            masks += 1
            histogram += mask.histogram
            if image_ok and (mask.height, mask.width) != (image.height, image.width):
                self.problem(
                    mask_path,
                    size_mismatch_message((mask.height, mask.width), image_path.name, image.height, image.width),
                )
            if dataset.num_classes is not None:
                ids = unexpected_ids(mask.histogram, dataset.num_classes, dataset.ignore_index)
                if ids:
                    self.problem(mask_path, out_of_range_message(ids, dataset.num_classes, dataset.ignore_index))
        return {
            "images": len(dataset.samples),
            "masks": masks,
            "classes": dataset.num_classes,
            "coverage": self.coverage(histogram),
            "size": _size_stats(sizes),
        }

    def coverage(self, histogram: np.ndarray) -> dict[str, float]:
        """Share of all mask pixels per class name (or id), the ignore index and unexpected ids."""
        dataset: MaskFolderDataset = self.dataset
        total = int(histogram.sum()) or 1
        names = dataset.classes or []
        labels = set(range(dataset.num_classes or 0)) | set(np.flatnonzero(histogram).tolist()) | {dataset.ignore_index}
        shares = {}
        for label in sorted(labels):
            if label == dataset.ignore_index:
                name = "ignore"
            elif label < len(names):
                name = names[label]
            elif dataset.num_classes is not None and label >= dataset.num_classes:
                name = f"unexpected id {label}"
            else:
                name = str(label)
            shares[name] = round(int(histogram[label]) / total, 6)
        return shares


class _CocoCheck(_LayoutCheck):
    def plan_files(self, files: _Files) -> None:
        dataset: CocoDetectionDataset = self.dataset
        coco = dataset.coco
        name = coco.path.name
        for ann in coco.orphans:
            self.problem(
                coco.path, f"annotation {ann.get('id', '?')} references image id {ann['image_id']}, not in 'images'"
            )
        self.keys = {}
        for image_id in dataset.ids:
            path = dataset.images_dir / coco.images[image_id]["file_name"]
            if path.is_file():
                self.keys[image_id] = files.add("image", path)
            else:
                self.problem(path, f"listed in {name} as image id {image_id} but the file does not exist")

    def finish_files(self, results: dict[tuple[str, str], _Inspected]) -> dict[str, Any]:
        dataset: CocoDetectionDataset = self.dataset
        coco = dataset.coco
        sizes: list[tuple[int, int]] = []
        boxes_per_class: Counter[str] = Counter()
        boxes_per_image = []
        crowd = 0
        for image_id in dataset.ids:
            entry = coco.images[image_id]
            path = dataset.images_dir / entry["file_name"]
            height, width = entry.get("height"), entry.get("width")
            key = self.keys.get(image_id)
            if key is not None and self.image_result(path, results[key], sizes):
                real = results[key]
                mismatch = coco.size_problem(entry, real.height, real.width)
                if mismatch:
                    self.problem(path, mismatch)
                height, width = height or real.height, width or real.width
            boxes = 0
            for ann in coco.by_image.get(image_id, ()):
                problem = coco.annotation_problem(ann, height, width)
                if problem:
                    self.problem(coco.path, problem)
                elif ann.get("iscrowd", 0):
                    crowd += 1
                else:
                    boxes += 1
                    boxes_per_class[coco.classes[coco.label_of[ann["category_id"]]]] += 1
            boxes_per_image.append(boxes)
        return {
            "images": len(dataset.ids),
            **_box_stats(boxes_per_image, {name: boxes_per_class[name] for name in coco.classes}),
            "crowd_annotations": crowd,
            "size": _size_stats(sizes),
        }


class _YoloCheck(_LayoutCheck):
    def plan_files(self, files: _Files) -> None:
        dataset: YoloDetectionDataset = self.dataset
        self.keys = [files.add("image", path) if path.is_file() else None for path in dataset.images]
        for path, key in zip(dataset.images, self.keys, strict=True):
            if key is None:
                self.problem(path, "listed in the split but the file does not exist")
        self.labels = [dataset.labels(i) for i in range(len(dataset))]
        missing = [parsed for parsed in self.labels if not parsed.exists]
        if missing and len(missing) == len(self.labels):
            where = self.display(label_path(dataset.images[0]).parent)
            self.problem(where, f"none of the {len(missing)} images has a label file (the first would be "
                         f"{self.display(missing[0].path)}); labels/ mirrors images/ with .txt files")  # fmt: skip
            return
        for parsed in missing:
            self.problem(parsed.path, "no label file: read as an image without objects; write an empty file if "
                         "that is intended", "warning")  # fmt: skip
        for parsed in self.labels:
            for number, message in parsed.errors:
                self.problem(f"{self.display(parsed.path)}:{number}" if number else parsed.path, message)
            for number, message in parsed.warnings:
                self.problem(f"{self.display(parsed.path)}:{number}", message, "warning")

    def finish_files(self, results: dict[tuple[str, str], _Inspected]) -> dict[str, Any]:
        dataset: YoloDetectionDataset = self.dataset
        sizes: list[tuple[int, int]] = []
        for path, key in zip(dataset.images, self.keys, strict=True):
            if key is not None:
                self.image_result(path, results[key], sizes)
        per_image = [len(parsed.objects) for parsed in self.labels]
        per_class = Counter(o.label for parsed in self.labels for o in parsed.objects)
        return {
            "images": len(dataset),
            **_box_stats(per_image, {name: per_class[i] for i, name in enumerate(dataset.classes)}),
            "missing_label_files": sum(not parsed.exists for parsed in self.labels),
            "size": _size_stats(sizes),
        }


class _VocCheck(_LayoutCheck):
    def plan_files(self, files: _Files) -> None:
        dataset: VocDetectionDataset = self.dataset
        self.keys = []
        for xml, image in dataset.samples:
            if image.is_file():
                self.keys.append(files.add("image", image))
            else:
                self.keys.append(None)
                folder = self.display(image.parent)
                self.problem(image, f"no image for {self.display(xml)} (no {image.stem}.* in {folder})")
        self.parsed = [dataset.parse(i) for i in range(len(dataset))]

    def finish_files(self, results: dict[tuple[str, str], _Inspected]) -> dict[str, Any]:
        dataset: VocDetectionDataset = self.dataset
        sizes: list[tuple[int, int]] = []
        per_class: Counter[str] = Counter()
        per_image, difficult = [], 0
        for (_, image), key, parsed in zip(dataset.samples, self.keys, self.parsed, strict=True):
            height = width = None
            if key is not None and self.image_result(image, results[key], sizes):
                height, width = results[key].height, results[key].width
            for number, message in dataset.problems(parsed, height, width):
                self.problem(f"{self.display(parsed.path)}:{number}" if number else parsed.path, message)
            per_image.append(sum(not o.difficult for o in parsed.objects))
            difficult += sum(o.difficult for o in parsed.objects)
            per_class.update(o.name for o in parsed.objects if not o.difficult)
        return {
            "images": len(dataset),
            **_box_stats(per_image, {name: per_class[name] for name in dataset.classes}),
            "difficult_objects": difficult,
            "size": _size_stats(sizes),
        }


class _StereoCheck(_LayoutCheck):
    def plan_files(self, files: _Files) -> None:
        dataset: StereoDataset = self.dataset
        self.keys = []
        for name, (left, right, disparity) in zip(dataset.names, dataset.samples, strict=True):
            if right is None:
                self.problem(left, f"no right image right/{name}.*; add it or remove the left image")
            if dataset.has_disparity and disparity is None:
                self.problem(left, f"no disparity map {DISPARITY_DIR}/{name}.png or .pfm; add it")
            self.keys.append(
                (
                    files.add("image", left),
                    files.add("image", right) if right is not None else None,
                    files.add("disparity", disparity) if disparity is not None else None,
                )
            )
        for path, folder in dataset.unmatched:
            what = "right image" if folder == "right" else "disparity map"
            self.problem(path, f"{what} without a left image left/{path.stem}.*; add the left image or remove it")

    def finish_files(self, results: dict[tuple[str, str], _Inspected]) -> dict[str, Any]:
        dataset: StereoDataset = self.dataset
        sizes: list[tuple[int, int]] = []
        pixels = valid = maps = 0
        low, high = float("inf"), 0.0
        for (left, right, disparity), keys in zip(dataset.samples, self.keys, strict=True):
            left_key, right_key, disparity_key = keys
            image = results[left_key]
            left_ok = self.image_result(left, image, sizes)
            if right_key is not None:
                other = results[right_key]
                if other.error:
                    self.problem(right, other.error)
                elif left_ok and (other.height, other.width) != (image.height, image.width):
                    message = pair_size_message((other.height, other.width), left.name, (image.height, image.width))
                    self.problem(right, message)
            if disparity_key is None:
                continue
            found = results[disparity_key]
            if found.error:
                self.problem(disparity, found.error)
                continue
            maps += 1
            if left_ok and (found.height, found.width) != (image.height, image.width):
                shape = (found.height, found.width)
                self.problem(disparity, disparity_size_message(shape, left.name, image.height, image.width))
            stats = found.disparity
            if stats.negative:
                self.problem(disparity, negative_message(stats))
            pixels, valid = pixels + stats.pixels, valid + stats.valid
            if stats.valid:
                low, high = min(low, stats.low), max(high, stats.high)
        summary: dict[str, Any] = {"pairs": len(dataset), "disparity_maps": maps}
        if maps:
            summary["valid_pixels"] = round(valid / max(1, pixels), 4)
            summary["disparity"] = {"min": round(low, 3), "max": round(high, 3)} if valid else {}
        summary["size"] = _size_stats(sizes)
        return summary


class _InspectionCheck(_LayoutCheck):
    """One split of an MVTec AD-style folder. The train split's check also looks at ground_truth/ as a whole:
    masks without an image, and masks of good images (which must be empty)."""

    def plan(self, files: _Files) -> None:
        root = self.layout.paths["root"]
        self.good_masks: list[tuple[Path, tuple[str, str]]] = []
        if self.layout.split == "train":
            self.plan_ground_truth(root, files)
        try:
            self.dataset = list_split(root, self.layout.split)
        except LayoutError as exc:
            self.problem(exc.path, exc.reason)
            return
        self.plan_files(files)

    def plan_ground_truth(self, root: Path, files: _Files) -> None:
        masks_dir = root / GROUND_TRUTH
        if not masks_dir.is_dir():
            return
        for mask in sorted(p for p in masks_dir.rglob("*") if p.is_file() and not p.name.startswith(".")):
            parts = mask.relative_to(masks_dir).parts
            split = parts[0] if parts[0] in ("train", "val") and len(parts) > 2 else "test"
            inside = parts[1:] if split != "test" else parts  # <family>/<name>_mask.png
            if len(inside) < 2:
                self.problem(mask, f"not in a defect folder; masks are {GROUND_TRUTH}/<defect>/<name>{MASK_SUFFIX}")
                continue
            if not mask.name.endswith(MASK_SUFFIX):
                self.problem(mask, f"not named <image name>{MASK_SUFFIX}: no image's mask; rename or remove it")
                continue
            family = inside[0]
            relative = Path(*inside[1:]).with_name(mask.name[: -len(MASK_SUFFIX)])
            folder = root / split / family / relative.parent
            found = folder.is_dir() and any(
                p.stem == relative.name and is_image_name(p.name) and p.is_file() for p in folder.iterdir()
            )
            if not found:
                expected = (Path(split) / family / relative).as_posix()
                self.problem(mask, f"mask without an image: no {expected}.*; add the image or remove the mask")
            elif family == GOOD:
                self.good_masks.append((mask, files.add("defect_mask", mask)))

    def plan_files(self, files: _Files) -> None:
        listing = self.dataset
        self.keys = []
        for path, _, mask in listing.entries:
            mask_key = None
            if mask is not None:
                if mask.is_file():
                    mask_key = files.add("defect_mask", mask)
                else:
                    self.problem(path, f"defect image has no mask {self.display(mask)}; add it")
            self.keys.append((files.add("image", path), mask_key))
        if not any(family == GOOD for _, family, _ in listing.entries):
            good = listing.folder / GOOD
            if self.layout.split == "train":
                self.problem(good, "no images: the anomaly mode trains on good parts; add them")
            else:
                self.problem(good, "no images: without good parts false alarms cannot be measured", "warning")

    def finish_files(self, results: dict[tuple[str, str], _Inspected]) -> dict[str, Any]:
        listing = self.dataset
        sizes: list[tuple[int, int]] = []
        shares = []
        for (path, family, mask), (image_key, mask_key) in zip(listing.entries, self.keys, strict=True):
            image = results[image_key]
            image_ok = self.image_result(path, image, sizes)
            if mask_key is None:
                continue
            found = results[mask_key]
            if found.error:
                self.problem(mask, found.error)
                continue
            shape = (found.height, found.width)
            if image_ok and shape != (image.height, image.width):
                self.problem(mask, defect_size_message(shape, path.name, image.height, image.width))
            pixels = int(found.histogram.sum())
            defect = pixels - int(found.histogram[0])
            if not defect:
                self.problem(mask, f"empty mask (all 0) of a defect image in {family}/; draw the defect or move "
                             f"the image to {GOOD}/")  # fmt: skip
            shares.append(defect / max(1, pixels))
        for mask, key in self.good_masks:
            found = results[key]
            if found.error:
                self.problem(mask, found.error)
            elif found.histogram.sum() - found.histogram[0]:
                defect = int(found.histogram.sum() - found.histogram[0])
                self.problem(mask, f"mask of a good image marks {defect} defect pixels; move the image to its "
                             "defect folder or remove the mask")  # fmt: skip
        families = Counter(family for _, family, _ in listing.entries)
        summary: dict[str, Any] = {
            "images": len(listing.entries),
            "good": families[GOOD],
            "defect": len(listing.entries) - families[GOOD],
            "images_per_family": dict(sorted(families.items(), key=lambda item: (item[0] != GOOD, item[0]))),
            "masks": len(shares),
        }
        if shares:
            summary["defect_area_median"] = round(statistics.median(shares), 6)
        if listing.note:
            summary["note"] = listing.note
        summary["size"] = _size_stats(sizes)
        return summary


CHECKS = {"imagefolder": _ImageFolderCheck, "masks": _MaskFolderCheck, "coco": _CocoCheck, "yolo": _YoloCheck,
          "voc": _VocCheck, "stereo": _StereoCheck, "inspection": _InspectionCheck}  # fmt: skip


def check_dataset(
    root: str | Path, max_pixels: int = MAX_IMAGE_PIXELS, workers: int | None = None, progress: bool = False
) -> CheckReport:
    """Check every layout of ROOT (dataset.yaml's, else the detected ones), reading each file once.

    ``workers``: processes that decode; default os.cpu_count() (small sets are checked in-process).
    Problems of a single file or annotation are collected, not raised; ParvisError only when ROOT
    itself cannot be understood.
    """
    root = Path(root)
    layouts = find_layouts(root)
    checks = [CHECKS[layout.format](layout, root) for layout in layouts]
    files = _Files()
    for check in checks:
        check.plan(files)
    results = files.inspect(max_pixels, workers, progress)
    # {task: {split: stats}} next to a few scalars, which readers of the summary tell apart by type.
    summary: dict[str, Any] = {"root": str(root), "files_checked": len(files.jobs)}
    problems: dict[tuple[str, str], Problem] = {}  # a file shared by layouts is reported once
    for check in checks:
        summary.setdefault(check.layout.task, {})[check.layout.split] = check.finish(results)
        for problem in check.problems:
            problems.setdefault((problem.path, problem.message), problem)
    return CheckReport([layout.name for layout in layouts], summary, list(problems.values()))
