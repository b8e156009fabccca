"""Detection in the COCO instances format: one JSON file of images, boxes and categories per split."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

from parvis.data.datasets import Annotation, DetectionDataset, LayoutError, Transform
from parvis.errors import BadSampleError

# Exporters round box corners to the pixel grid; half a pixel of overhang is rounding, not a bad box.
BOX_TOLERANCE = 0.5

REQUIRED = {
    "images": ("id", "file_name"),
    "annotations": ("image_id", "category_id", "bbox"),
    "categories": ("id", "name"),
}


class CocoAnnotations:
    """One parsed annotation file, with the checks that both the dataset and ``check_dataset`` apply.

    Structural mistakes (bad JSON, missing keys, duplicate ids) raise ParvisError here, since no
    sample of the file can be trusted; mistakes in single annotations are reported per image.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            data = json.loads(self.path.read_bytes())
        except OSError as exc:
            raise LayoutError(self.path, f"cannot read ({exc.strerror or exc}); check the path") from None
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            raise LayoutError(self.path, f"not valid JSON ({exc}); fix or re-export the file") from None
        if not isinstance(data, dict):
            raise LayoutError(self.path, f"expected a JSON object with keys {', '.join(REQUIRED)} (COCO format)")
        for key, fields in REQUIRED.items():
            if not isinstance(data.get(key), list):
                raise LayoutError(self.path, f"missing key '{key}' (a list); expected the COCO instances format")
            for i, entry in enumerate(data[key]):
                missing = [field for field in fields if not isinstance(entry, dict) or field not in entry]
                if missing:
                    raise LayoutError(
                        self.path, f"{key}[{i}] has no '{missing[0]}'; every entry needs {', '.join(fields)}"
                    )

        self.images: dict[int, dict[str, Any]] = {}
        for entry in data["images"]:
            if entry["id"] in self.images:
                raise LayoutError(self.path, f"image id {entry['id']} appears twice in 'images'; ids must be unique")
            self.images[entry["id"]] = entry
        categories = {}
        for entry in data["categories"]:
            if entry["id"] in categories:
                raise LayoutError(self.path, f"category id {entry['id']} appears twice in 'categories'")
            categories[entry["id"]] = str(entry["name"])
        category_ids = sorted(categories)
        self.classes = [categories[i] for i in category_ids]
        self.label_of = {category_id: label for label, category_id in enumerate(category_ids)}

        self.by_image: dict[int, list[dict[str, Any]]] = {}
        self.orphans: list[dict[str, Any]] = []  # annotations of an image id that 'images' does not list
        for ann in data["annotations"]:
            if ann["image_id"] in self.images:
                self.by_image.setdefault(ann["image_id"], []).append(ann)
            else:
                self.orphans.append(ann)

    def size_problem(self, entry: dict[str, Any], height: int, width: int) -> str | None:
        """Boxes are in the JSON's pixel grid, so a JSON size that differs from the file makes them wrong."""
        stated = (entry.get("width", width), entry.get("height", height))
        if stated != (width, height):
            return (
                f"{self.path.name} gives image id {entry['id']} as {stated[0]}x{stated[1]} but the file is "
                f"{width}x{height}; fix the annotation file"
            )
        return None

    def annotation_problem(self, ann: dict[str, Any], height: int | None, width: int | None) -> str | None:
        """What is wrong with one annotation of a listed image; bounds are checked when the size is known."""
        where = f"annotation {ann.get('id', '?')} (image {self.images[ann['image_id']]['file_name']})"
        if ann["category_id"] not in self.label_of:
            return f"{where}: category_id {ann['category_id']} is not in 'categories'"
        bbox = ann["bbox"]
        if not (
            isinstance(bbox, list)
            and len(bbox) == 4
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)
        ):
            return f"{where}: bbox {bbox!r} is not [x, y, width, height]"
        x, y, w, h = bbox
        if w <= 0 or h <= 0:
            return f"{where}: box {bbox} has a non-positive width or height"
        if (
            height is not None
            and width is not None
            and (
                x < -BOX_TOLERANCE
                or y < -BOX_TOLERANCE
                or x + w > width + BOX_TOLERANCE
                or y + h > height + BOX_TOLERANCE
            )
        ):
            return f"{where}: box {bbox} extends outside the {width}x{height} image"
        return None


class CocoDetectionDataset(DetectionDataset):
    """Samples are (Image, {"boxes": BoundingBoxes XYXY, "labels": int64, "image_id": int}).

    ``classes`` are the category names in category-id order; labels index into them. Crowd
    annotations are left out of the targets; images without annotations give zero boxes.
    """

    def __init__(
        self,
        images_dir: str | Path,
        annotation_file: str | Path,
        transform: Transform | None = None,
        on_bad_sample: str = "error",
        decoder: str = "auto",
        min_size: int | None = None,
    ):
        super().__init__(transform=transform, on_bad_sample=on_bad_sample, decoder=decoder, min_size=min_size)
        self.images_dir = Path(images_dir)
        if not self.images_dir.is_dir():
            raise LayoutError(self.images_dir, "no such images folder; point it at the folder the file_names are in")
        self.coco = CocoAnnotations(annotation_file)
        self.classes = self.coco.classes
        self.ids = sorted(self.coco.images)

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> Path:
        return self.images_dir / self.coco.images[self.ids[index]]["file_name"]

    def relative_name(self, index: int) -> str:
        return str(self.coco.images[self.ids[index]]["file_name"])

    def image_id(self, index: int) -> int:
        return int(self.ids[index])

    def label_counts(self) -> dict[int, int]:
        counts = Counter(ann["category_id"] for anns in self.coco.by_image.values() for ann in anns)
        return {self.coco.label_of[c]: n for c, n in counts.items() if c in self.coco.label_of}

    def annotation(self, index: int, height: int, width: int) -> Annotation:
        image_id = self.ids[index]
        problem = self.coco.size_problem(self.coco.images[image_id], height, width)
        if problem:
            raise BadSampleError(self.image_path(index), problem)
        found = Annotation([], [], [])
        for ann in self.coco.by_image.get(image_id, ()):
            problem = self.coco.annotation_problem(ann, height, width)
            if problem:
                raise BadSampleError(self.coco.path, problem)
            x, y, w, h = ann["bbox"]
            box, label = (x, y, x + w, y + h), self.coco.label_of[ann["category_id"]]
            if ann.get("iscrowd", 0):
                found.ignored.append((box, label))
            else:
                found.boxes.append(box)
                found.labels.append(label)
        return found
