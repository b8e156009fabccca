"""What the three dataset readers share: file listing, image loading and the on_bad_sample policy.

A reader only says how to turn index i into (image, target); this base decides what a bad file
does to the batch, so "error" and "skip" behave the same for every format.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset
from torchvision import tv_tensors

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
