"""Segmentation as two parallel folders: images/X.jpg pairs with masks/X.png (one class id per pixel)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from parvis.data.datasets import FileDataset, LayoutError, Transform, list_images
from parvis.data.decode import read_mask
from parvis.errors import BadSampleError

MASK_SUFFIX = ".png"


def label_histogram(mask: np.ndarray) -> np.ndarray:
    """Pixels per label id 0..255; a bincount is several times faster than np.unique on a mask."""
    return np.bincount(mask.ravel(), minlength=256)


def unexpected_ids(histogram: np.ndarray, num_classes: int, ignore_index: int) -> list[int]:
    """Label ids present in the histogram that are neither a class nor the ignore index."""
    return [int(i) for i in np.flatnonzero(histogram) if i >= num_classes and i != ignore_index]


def missing_mask_message(mask_path: Path | str) -> str:
    return f"no mask {mask_path}; add it or remove the image"


def size_mismatch_message(mask_shape: tuple[int, ...], image_name: str, height: int, width: int) -> str:
    return (
        f"mask is {mask_shape[1]}x{mask_shape[0]} but image {image_name} is {width}x{height}; "
        "re-create the mask at the image size"
    )


def out_of_range_message(ids: list[int], num_classes: int, ignore_index: int) -> str:
    return (
        f"label ids {', '.join(map(str, ids))} are outside 0..{num_classes - 1} and not the ignore index "
        f"{ignore_index}; fix the mask or the class list"
    )


class MaskFolderDataset(FileDataset):
    """Samples are (Image, Mask (H, W) uint8). ``samples`` lists (image path, mask path) pairs."""

    def __init__(
        self,
        images_dir: str | Path,
        masks_dir: str | Path,
        num_classes: int | None = None,
        ignore_index: int = 255,
        transform: Transform | None = None,
        on_bad_sample: str = "error",
        decoder: str = "auto",
        min_size: int | None = None,
        classes: Sequence[str] | None = None,
    ):
        super().__init__(transform=transform, on_bad_sample=on_bad_sample, decoder=decoder, min_size=min_size)
        self.images_dir = Path(images_dir)
        self.masks_dir = Path(masks_dir)
        self.classes = list(classes) if classes is not None else None
        if num_classes is None and classes is not None:
            num_classes = len(classes)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        for what, folder in (("images", self.images_dir), ("masks", self.masks_dir)):
            if not folder.is_dir():
                raise LayoutError(folder, f"no such {what} folder; expected images/X.jpg with masks/X.png")
        images = list_images(self.images_dir)
        if not images:
            raise LayoutError(self.images_dir, "no images; expected images/X.jpg with masks/X.png")
        # Missing masks are found per sample (lazily), so that one gap does not block the whole dataset.
        self.samples = [
            (path, (self.masks_dir / path.relative_to(self.images_dir)).with_suffix(MASK_SUFFIX)) for path in images
        ]

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        image_path, mask_path = self.samples[index]
        if not mask_path.is_file():
            raise BadSampleError(image_path, missing_mask_message(mask_path))
        image, (height, width) = self.read_image(image_path)
        mask = read_mask(mask_path)
        if mask.shape != (height, width):
            raise BadSampleError(mask_path, size_mismatch_message(mask.shape, image_path.name, height, width))
        if self.num_classes is not None:
            ids = unexpected_ids(label_histogram(mask), self.num_classes, self.ignore_index)
            if ids:
                raise BadSampleError(mask_path, out_of_range_message(ids, self.num_classes, self.ignore_index))
        target = tv_tensors.Mask(torch.from_numpy(mask))
        if image.shape[-2:] != target.shape:
            target = F.resize(target, list(image.shape[-2:]))  # image was DCT-downscaled; nearest keeps ids intact
        return image, target
