"""Stereo as three parallel folders: rectified left/X and right/X images with disparity/X ground truth.

    left/000000.png        the left camera's image (any image format; grey is read as RGB)
    right/000000.png       the right camera's image, same size, rows aligned with the left's
    disparity/000000.png   optional: disparity of the LEFT view, either a 16-bit PNG in KITTI's
                           convention (value = disparity x 256, 0 = no ground truth) or a PFM
                           (Middlebury, SceneFlow: float32 pixels, inf or nan = no ground truth)

Files pair by their path inside each folder without the suffix (the "name"), so left/a.jpg, right/a.jpg
and disparity/a.pfm are one sample. A split without disparity/ is for inference: its targets are None.
A left pixel (x, y) with disparity d shows the surface point that the right image has at (x - d, y).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors

from parvis.data.datasets import FileDataset, LayoutError, Transform, list_images
from parvis.data.decode import MAX_IMAGE_PIXELS, check_pixels, read_bytes, read_single_channel
from parvis.errors import BadSampleError

SIDES = ("left", "right")
DISPARITY_DIR = "disparity"
DISPARITY_SUFFIXES = (".png", ".pfm")
PNG_SCALE = 256.0  # KITTI: a 16-bit PNG stores round(disparity * 256); 0 marks pixels without ground truth
LAYOUT_HINT = "expected left/X.png and right/X.png, with disparity/X.png or .pfm for ground truth"

_PFM_HEADER = re.compile(rb"\A(PF|Pf)\s+(\d+)\s+(\d+)\s+([-+0-9.eE]+)\s")


def read_pfm(path: str | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """A PFM file as float32, rows top to bottom: (H, W) for 'Pf' (grey), (H, W, 3) for 'PF' (colour).

    PFM stores rows bottom to top, little-endian when the scale is negative; the scale's magnitude
    carries no meaning for disparities and is ignored. BadSampleError names the file when it is not one.
    """
    path = Path(path)
    data = read_bytes(path)
    match = _PFM_HEADER.match(data)
    if not match:
        raise BadSampleError(path, "not a PFM file (no 'PF'/'Pf' header); re-create or remove it", kind="format")
    channels = 3 if match[1] == b"PF" else 1
    width, height = int(match[2]), int(match[3])
    try:
        scale = float(match[4])
    except ValueError:
        raise BadSampleError(path, f"PFM scale {match[4].decode()!r} is not a number", kind="format") from None
    check_pixels(height, width, path, max_pixels)
    count = width * height * channels
    body = data[match.end() : match.end() + 4 * count]
    if len(body) < 4 * count:
        raise BadSampleError(path, f"truncated PFM: {width}x{height} needs {4 * count} bytes of data, has {len(body)}")
    array = np.frombuffer(body, dtype="<f4" if scale < 0 else ">f4").reshape(height, width, channels)
    array = np.flipud(array).astype(np.float32)  # native byte order, top row first, writable
    return array[..., 0] if channels == 1 else array


def write_pfm(path: str | Path, array: np.ndarray) -> Path:
    """Write (H, W) or (H, W, 3) values as a little-endian PFM (scale -1.0), rows bottom to top."""
    array = np.asarray(array, dtype=np.float32)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ValueError(f"PFM holds (H, W) or (H, W, 3) arrays, got shape {array.shape}")
    magic = b"PF" if array.ndim == 3 else b"Pf"
    header = b"%s\n%d %d\n-1.0\n" % (magic, array.shape[1], array.shape[0])
    path = Path(path)
    path.write_bytes(header + np.ascontiguousarray(np.flipud(array), dtype="<f4").tobytes())
    return path


def read_disparity(path: str | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Disparity in pixels as float32 (H, W), values as stored: pixels without ground truth are NaN
    (a KITTI PNG's 0) or whatever the PFM holds there (inf, nan). Negative values are kept, for the
    caller to refuse; BadSampleError names the file when it cannot be read as a disparity map."""
    path = Path(path)
    if path.suffix.lower() == ".pfm":
        disparity = read_pfm(path, max_pixels)
        if disparity.ndim == 3:
            raise BadSampleError(path, "PFM has 3 channels (PF); a disparity map has one (Pf)", kind="format")
        return disparity
    stored = read_single_channel(
        path, ("I;16", "I;16B", "I"), "disparity PNG",
        "16-bit grey (KITTI: value = disparity x 256, 0 = invalid)", max_pixels,
        not_png="not a PNG; disparity maps are 16-bit PNG (KITTI) or PFM",
    )  # fmt: skip
    if stored.size and (stored.min() < 0 or stored.max() > 65535):
        raise BadSampleError(path, "disparity PNG holds values outside 0..65535; expected 16-bit grey")
    disparity = stored.astype(np.float32) / np.float32(PNG_SCALE)
    disparity[stored == 0] = np.nan
    return disparity


def encode_disparity_png(disparity: np.ndarray) -> Image.Image:
    """A KITTI 16-bit PNG image of ``disparity`` (pixels; 0, inf or nan = invalid; at most 255.99 px)."""
    valid = np.isfinite(disparity) & (disparity > 0)
    stored = np.where(valid, np.round(np.where(valid, disparity, 0) * PNG_SCALE), 0)
    if stored.max(initial=0) > 65535:
        raise ValueError(f"disparity {float(disparity[valid].max()):.1f} px does not fit a 16-bit PNG (max 255.99)")
    # A valid disparity under 1/512 px would round to the invalid marker; keep it valid at 1/256.
    stored[valid & (stored == 0)] = 1
    return Image.fromarray(stored.astype(np.uint16))


def disparity_target(disparity: np.ndarray) -> np.ndarray:
    """The training target: disparity in pixels with 0 where there is no ground truth (inf, nan)."""
    return np.where(np.isfinite(disparity), disparity, np.float32(0)).astype(np.float32)


class DisparityStats(NamedTuple):
    """What the check keeps of one disparity map: pixels with ground truth, their range, negatives."""

    pixels: int
    valid: int
    low: float  # over the valid pixels; 0 when there are none
    high: float
    negative: int
    lowest_negative: float


def disparity_stats(disparity: np.ndarray) -> DisparityStats:
    valid = np.isfinite(disparity) & (disparity > 0)
    negative = np.isfinite(disparity) & (disparity < 0)
    values = disparity[valid]
    return DisparityStats(
        pixels=int(disparity.size),
        valid=int(values.size),
        low=float(values.min()) if values.size else 0.0,
        high=float(values.max()) if values.size else 0.0,
        negative=int(np.count_nonzero(negative)),
        lowest_negative=float(disparity[negative].min()) if negative.any() else 0.0,
    )


def negative_message(stats: DisparityStats) -> str:
    return (
        f"{stats.negative} negative disparities (lowest {stats.lowest_negative:g}); left-view disparities are "
        ">= 0, mark pixels without ground truth with inf or nan (PFM) or 0 (PNG)"
    )


def disparity_size_message(shape: tuple[int, ...], left_name: str, height: int, width: int) -> str:
    return (
        f"disparity map is {shape[1]}x{shape[0]} but left image {left_name} is {width}x{height}; "
        "the map must have the left image's size"
    )


def pair_size_message(right_shape: tuple[int, int], left_name: str, left_shape: tuple[int, int]) -> str:
    return (
        f"right image is {right_shape[1]}x{right_shape[0]} but left image {left_name} is "
        f"{left_shape[1]}x{left_shape[0]}; a rectified pair has one size"
    )


def _by_name(folder: Path, suffixes: tuple[str, ...] | None = None) -> dict[str, Path]:
    """Files under ``folder`` keyed by their relative path without suffix (the first of duplicates wins)."""
    if not folder.is_dir():
        return {}
    if suffixes is None:
        paths = list_images(folder)
    else:
        paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in suffixes and not p.name.startswith("."))
    found: dict[str, Path] = {}
    for path in paths:
        found.setdefault(path.relative_to(folder).with_suffix("").as_posix(), path)
    return found


class StereoDataset(FileDataset):
    """Samples are (Image (6, H, W) uint8 = left RGB then right RGB, disparity float32 (H, W) in pixels
    with 0 where there is no ground truth); the target is None for a split without disparity/.

    ``names`` lists the samples (one per left image); ``unmatched`` the files that pair with no left
    image, as (path, which folder), for the check to report. Pairs always decode at full size:
    ``min_size`` is accepted for the readers' common signature and ignored, since a disparity in
    pixels would have to be rescaled with the image.
    """

    classes = ["disparity"]  # what a stereo model's meta names its one output channel

    def __init__(
        self,
        root: str | Path,
        transform: Transform | None = None,
        on_bad_sample: str = "error",
        decoder: str = "auto",
        min_size: int | None = None,
    ):
        super().__init__(transform=transform, on_bad_sample=on_bad_sample, decoder=decoder, min_size=None)
        self.root = Path(root)
        if not self.root.is_dir():
            raise LayoutError(self.root, f"no such stereo folder; {LAYOUT_HINT}")
        for side in SIDES:
            if not (self.root / side).is_dir():
                raise LayoutError(self.root / side, f"no such folder; {LAYOUT_HINT}")
        left, right = _by_name(self.root / "left"), _by_name(self.root / "right")
        if not left:
            raise LayoutError(self.root / "left", f"no images; {LAYOUT_HINT}")
        self.has_disparity = (self.root / DISPARITY_DIR).is_dir()
        disparity = _by_name(self.root / DISPARITY_DIR, DISPARITY_SUFFIXES)
        self.names = sorted(left)
        # Missing partners are found per sample (lazily), so that one gap does not block the whole split.
        self.samples = [(left[name], right.get(name), disparity.get(name)) for name in self.names]
        self.unmatched = [(right[name], "right") for name in sorted(right.keys() - left.keys())]
        self.unmatched += [(disparity[name], DISPARITY_DIR) for name in sorted(disparity.keys() - left.keys())]

    def __len__(self) -> int:
        return len(self.samples)

    def pair_paths(self, index: int) -> tuple[Path, Path, Path | None]:
        """(left, right, disparity or None); right is where the file would be when it is missing."""
        left, right, disparity = self.samples[index]
        return left, right or self.root / "right" / left.relative_to(self.root / "left"), disparity

    def load(self, index: int) -> tuple[tv_tensors.Image, torch.Tensor | None]:
        left_path, right_path, disparity_path = self.samples[index]
        name = self.names[index]
        if right_path is None:
            raise BadSampleError(left_path, f"no right image right/{name}.*; add it or remove the left image")
        if self.has_disparity and disparity_path is None:
            raise BadSampleError(left_path, f"no disparity map {DISPARITY_DIR}/{name}.png or .pfm; add it")
        left, left_size = self.read_image(left_path)
        right, right_size = self.read_image(right_path)
        if right_size != left_size:
            raise BadSampleError(right_path, pair_size_message(right_size, left_path.name, left_size))
        image = tv_tensors.Image(torch.cat([left, right], dim=0))
        if disparity_path is None:
            return image, None
        disparity = read_disparity(disparity_path)
        if disparity.shape != left_size:
            raise BadSampleError(disparity_path, disparity_size_message(disparity.shape, left_path.name, *left_size))
        stats = disparity_stats(disparity)
        if stats.negative:
            raise BadSampleError(disparity_path, negative_message(stats))
        return image, torch.from_numpy(disparity_target(disparity))
