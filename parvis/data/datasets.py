"""What the three dataset readers share: file listing, image loading and the on_bad_sample policy.

A reader only says how to turn index i into (image, target); this base decides what a bad file
does to the batch, so "error" and "skip" behave the same for every format.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from parvis.data.decode import DECODERS, IMAGE_SUFFIXES, decode, image_size, read_bytes, to_tensor
from parvis.errors import BadSampleError, ParvisError

ON_BAD_SAMPLE = ("error", "skip")

Transform = Callable[[Any, Any], tuple[Any, Any]]


class LayoutError(ParvisError):
    """A whole folder or annotation file cannot be used; ``path`` and ``reason`` as in BadSampleError."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def is_image_name(name: str) -> bool:
    """An image suffix, any case; hidden files (macOS ._X.jpg resource forks) are not samples."""
    return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")


def list_images(directory: Path) -> list[Path]:
    """Image files under ``directory`` (recursively, hidden folders skipped), sorted for stable indices."""
    found = []
    # os.walk, not Path.rglob: it gets file/folder from the directory entries without a stat per file.
    for folder, subfolders, names in os.walk(directory):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        found += [Path(folder, name) for name in names if is_image_name(name)]
    return sorted(found)


class FileDataset(Dataset):
    """Base of the readers. Subclasses implement ``__len__`` and ``load(index) -> (image, target)``."""

    def __init__(
        self,
        *,
        transform: Transform | None = None,
        on_bad_sample: str = "error",
        decoder: str = "auto",
        min_size: int | None = None,
    ):
        if on_bad_sample not in ON_BAD_SAMPLE:
            raise ParvisError(
                f"on_bad_sample={on_bad_sample!r} is not supported; choose one of: {', '.join(ON_BAD_SAMPLE)}"
            )
        if decoder != "auto" and decoder not in DECODERS:
            raise ParvisError(f"decoder={decoder!r} is not supported; choose one of: auto, {', '.join(DECODERS)}")
        self.transform = transform
        self.on_bad_sample = on_bad_sample
        self.decoder = decoder
        self.min_size = min_size

    def load(self, index: int) -> tuple[tv_tensors.Image, Any]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[Any, Any] | None:
        try:
            image, target = self.load(index)
        except BadSampleError:
            if self.on_bad_sample == "skip":
                return None  # the loader's collate drops and counts these
            raise
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image, target

    def read_image(self, path: Path) -> tuple[tv_tensors.Image, tuple[int, int]]:
        """The decoded image and the file's own (height, width).

        They differ when ``min_size`` lets a JPEG decode at 1/2..1/8 scale; targets are stated in the
        file's coordinates, so readers need both to check and rescale them.
        """
        data = read_bytes(path)
        size = image_size(data, path)
        array = decode(data, decoder=self.decoder, min_size=self.min_size, name=path)
        return tv_tensors.Image(to_tensor(array)), size


def detection_target(
    boxes: list[tuple[float, float, float, float]],
    labels: list[int],
    image_id: int,
    file_size: tuple[int, int],
    decoded_size: tuple[int, int],
) -> dict[str, Any]:
    """The detection readers' target: XYXY boxes in the file's pixels (clamped to it: exporters' rounding
    overhangs by a fraction of a pixel), then scaled to the decoded image when it was DCT-downscaled."""
    height, width = file_size
    target_boxes = tv_tensors.BoundingBoxes(
        torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), format="XYXY", canvas_size=(height, width)
    )
    target_boxes = F.clamp_bounding_boxes(target_boxes)
    if tuple(decoded_size) != (height, width):
        target_boxes = F.resize(target_boxes, list(decoded_size))
    return {"boxes": target_boxes, "labels": torch.tensor(labels, dtype=torch.int64), "image_id": int(image_id)}


class Annotation(NamedTuple):
    """One image's objects in its file's pixels: XYXY boxes and class indices; ``ignored`` are the objects
    kept out of training and evaluation (COCO crowd, VOC difficult) as (box, label) pairs."""

    boxes: list[tuple[float, float, float, float]]
    labels: list[int]
    ignored: list[tuple[tuple[float, float, float, float], int]]


class DetectionDataset(FileDataset):
    """Base of the detection readers (COCO, YOLO, VOC): samples are (Image, {"boxes": BoundingBoxes XYXY,
    "labels": int64, "image_id": int}); ``classes`` are the names the labels index.

    A reader says where image i is and what its annotation holds; ``parvis data convert`` uses the same two
    methods, so every format converts to every other without decoding pixels.
    """

    classes: list[str]

    def image_path(self, index: int) -> Path:
        raise NotImplementedError

    def relative_name(self, index: int) -> str:
        """The image's path inside its split, as a converted copy names it."""
        return self.image_path(index).name

    def image_id(self, index: int) -> int:
        return index

    def annotation(self, index: int, height: int, width: int) -> Annotation:
        """Image ``index``'s objects, given its file's size; BadSampleError names the file (and line) when
        an annotation is wrong."""
        raise NotImplementedError

    def label_counts(self) -> dict[int, int]:
        """Objects per class index over the split, from the annotations alone (a recipe's class balance)."""
        raise NotImplementedError

    def load(self, index: int) -> tuple[tv_tensors.Image, dict[str, Any]]:
        image, (height, width) = self.read_image(self.image_path(index))
        found = self.annotation(index, height, width)
        target = detection_target(found.boxes, found.labels, self.image_id(index), (height, width), image.shape[-2:])
        return image, target
