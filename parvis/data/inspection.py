"""Industrial inspection (anomaly detection) in MVTec AD's layout, with optional train defects and val split.

    DIR/train/good/*.png                   good parts only: what the anomaly mode trains on
    DIR/train/<family>/*.png               optional: defect parts, for the supervised mode
    DIR/val/good/, DIR/val/<family>/       optional: where thresholds are chosen
    DIR/test/good/, DIR/test/<family>/     evaluation
    DIR/ground_truth/<family>/<stem>_mask.png          mask of test/<family>/<stem>.* (MVTec AD's own rule)
    DIR/ground_truth/<split>/<family>/<stem>_mask.png  mask of <split>/<family>/<stem>.* for train and val

A mask is an 8-bit single-channel PNG, 0 = good pixel, > 0 = defect (MVTec AD uses 255). Good images
have no mask: their target is all zero. A real MVTec AD category folder (bottle/, carpet/, ...) reads as
it is. MVTec AD has no val/: asking for "val" then takes every 2nd image of each test/ folder (0, 2, 4,
... in name order) and "test" the others (1, 3, 5, ...); ``split_note`` says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from parvis.data.datasets import FileDataset, LayoutError, Transform, list_images
from parvis.data.decode import MAX_IMAGE_PIXELS, decode, image_size, read_bytes, read_single_channel, to_tensor
from parvis.errors import BadSampleError

SPLITS = ("train", "val", "test")
GOOD = "good"
GROUND_TRUTH = "ground_truth"
MASK_SUFFIX = "_mask.png"
MASK_MODES = ("L", "P")  # 8-bit, one channel
LAYOUT_HINT = (
    "expected train/good/, test/good/ and test/<defect>/ with masks ground_truth/<defect>/<name>_mask.png "
    "(MVTec AD's layout)"
)


class Entry(NamedTuple):
    """One image of a split: where it is, its family ("good" or the defect's folder) and, for a defect
    image, where its mask must be (whether or not the file exists)."""

    path: Path
    family: str
    mask: Path | None


class SplitListing(NamedTuple):
    entries: list[Entry]
    folder: Path  # the split folder the images are in: test/ for a val taken from test/
    note: str | None  # how the split was made when it is not a folder of its own


def has_split(root: str | Path, split: str) -> bool:
    """Whether ROOT has a folder of its own for ``split`` (MVTec AD has none for val)."""
    return (Path(root) / split).is_dir()


def is_inspection_root(path: str | Path) -> bool:
    """A folder in MVTec AD's layout: train/good/ and test/ (and no left/ or right/, which are stereo's)."""
    path = Path(path)
    return (
        (path / "train" / GOOD).is_dir()
        and (path / "test").is_dir()
        and not any((path / side).is_dir() for side in ("left", "right"))
    )


def mask_path(root: str | Path, split: str, family: str, relative: Path | str) -> Path:
    """Where the mask of <split>/<family>/<relative> lies: ground_truth/<family>/ for test (MVTec AD's rule),
    ground_truth/<split>/<family>/ for the other splits."""
    relative = Path(relative)
    base = Path(root) / GROUND_TRUTH / (family if split == "test" else Path(split, family))
    return base / relative.parent / f"{relative.stem}{MASK_SUFFIX}"


def read_defect_mask(path: str | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """A defect mask as uint8 (H, W), values as stored (0 good, > 0 defect); BadSampleError names the file
    when it is not a single-channel 8-bit PNG."""
    return read_single_channel(
        path, MASK_MODES, "mask", "an 8-bit single-channel PNG (mode L: 0 good, 255 defect)", max_pixels,
        not_png="not a PNG; defect masks are 8-bit single-channel PNGs (0 good, 255 defect)",
    )  # fmt: skip


def size_message(mask_shape: tuple[int, ...], image_name: str, height: int, width: int) -> str:
    return (
        f"mask is {mask_shape[1]}x{mask_shape[0]} but image {image_name} is {width}x{height}; "
        "re-create the mask at the image size"
    )


def _families(folder: Path) -> list[tuple[str, list[Path]]]:
    """(family, images) per subfolder of a split folder, "good" first, then by name."""
    found = [(d.name, list_images(d)) for d in sorted(folder.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    return sorted(found, key=lambda item: (item[0] != GOOD, item[0]))


def list_split(root: str | Path, split: str, good_only: bool = False) -> SplitListing:
    """The images of ``split`` without opening any file; a missing mask is left for the caller to find.

    LayoutError when the split folder (or, for a val taken from test/, test/) or its good/ is missing.
    """
    root = Path(root)
    if split not in SPLITS:
        raise LayoutError(root, f"split {split!r} is not an inspection split; choose one of: {', '.join(SPLITS)}")
    if not root.is_dir():
        raise LayoutError(root, f"no such inspection folder; {LAYOUT_HINT}")
    from_test = split in ("val", "test") and not has_split(root, "val")
    folder = root / ("test" if from_test else split)
    if not folder.is_dir():
        raise LayoutError(folder, f"no such folder; {LAYOUT_HINT}")
    if not (folder / GOOD).is_dir():
        raise LayoutError(folder / GOOD, f"no such folder: every split has good/ images; {LAYOUT_HINT}")
    entries = []
    for family, images in _families(folder):
        if good_only and family != GOOD:
            continue
        if from_test:
            images = images[0::2] if split == "val" else images[1::2]
        for path in images:
            mask = None if family == GOOD else mask_path(root, folder.name, family, path.relative_to(folder / family))
            entries.append(Entry(path, family, mask))
    note = None
    if from_test:
        picked = "0, 2, 4, ..." if split == "val" else "1, 3, 5, ..."
        other = "val the others" if split == "test" else "test the others"
        note = (
            f"{root} has no val/: {split} is images {picked} (name order) of each test/ folder "
            f"({len(entries)} images), {other}"
        )
    return SplitListing(entries, folder, note)


class InspectionDataset(FileDataset):
    """Samples are (Image (3, H, W) uint8 RGB, Mask (H, W) int64: 1 defect pixel, 0 good pixel).

    ``paths``, ``labels`` (0 good, 1 defect) and ``families`` ("good" or the defect folder) list the split;
    ``good_only`` keeps <split>/good alone (the anomaly mode's training set). A defect image without its
    mask file is a LayoutError here, naming it; ``parvis data check`` lists every one.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        transform: Transform | None = None,
        good_only: bool = False,
        on_bad_sample: str = "error",
        decoder: str = "auto",
        min_size: int | None = None,
        max_pixels: int = MAX_IMAGE_PIXELS,
    ):
        super().__init__(transform=transform, on_bad_sample=on_bad_sample, decoder=decoder, min_size=min_size)
        self.root = Path(root)
        self.split = split
        self.good_only = good_only
        self.max_pixels = max_pixels
        listing = list_split(self.root, split, good_only)
        self.folder = listing.folder
        self.split_note = listing.note
        if not listing.entries:
            raise LayoutError(listing.folder, f"no images{' in good/' if good_only else ''}; {LAYOUT_HINT}")
        missing = [entry for entry in listing.entries if entry.mask is not None and not entry.mask.is_file()]
        if missing:
            first = missing[0]
            more = f" (and {len(missing) - 1} more defect images without masks)" if len(missing) > 1 else ""
            raise LayoutError(
                first.path,
                f"defect image has no mask {self._display(first.mask)}{more}; add the masks "
                f"(`parvis data check {self.root}` lists them all)",
            )
        self.entries = listing.entries
        self.paths = [entry.path for entry in self.entries]
        self.families = [entry.family for entry in self.entries]
        self.labels = [int(family != GOOD) for family in self.families]

    def _display(self, path: Path) -> str:
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def __len__(self) -> int:
        return len(self.entries)

    def relative_name(self, index: int) -> str:
        """The image's path inside its split folder, e.g. "crack/000.png"."""
        return self.paths[index].relative_to(self.folder).as_posix()

    def load(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        path, _, mask_file = self.entries[index]
        data = read_bytes(path)
        height, width = image_size(data, path)
        array = decode(data, decoder=self.decoder, min_size=self.min_size, name=path, max_pixels=self.max_pixels)
        image = tv_tensors.Image(to_tensor(array))
        if mask_file is None:
            return image, tv_tensors.Mask(torch.zeros(image.shape[-2:], dtype=torch.int64))
        mask = read_defect_mask(mask_file, self.max_pixels)
        if mask.shape != (height, width):
            raise BadSampleError(mask_file, size_message(mask.shape, path.name, height, width))
        target = tv_tensors.Mask(torch.from_numpy((mask > 0).astype(np.uint8)))
        if tuple(image.shape[-2:]) != (height, width):
            target = F.resize(target, list(image.shape[-2:]))  # image was DCT-downscaled; nearest keeps {0, 1}
        return image, tv_tensors.Mask(target.to(torch.int64))
