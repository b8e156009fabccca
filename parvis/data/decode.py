"""Image decoding: the fastest correct decoder for each format, with size checks before decoding.

Measured on the 2-core EPYC (see benchmarks/): for JPEG, simplejpeg (libjpeg-turbo, straight to a
numpy array) is the fastest, torchvision.io.decode_jpeg is close, PIL is slowest because of its
extra copies. When the consumer wants a much smaller image than the file holds, libjpeg's DCT
scaling (simplejpeg's ``min_height``/``min_width``, PIL's ``draft``) decodes at 1/2, 1/4 or 1/8
size for a fraction of the work. PNG and every other format go through PIL (torchvision.io's
image codecs are deprecated as of torchvision 0.29; its JPEG decoder stays as a compared option).
"""

from __future__ import annotations

import io
import re
import struct
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_jpeg

from parvis.errors import BadSampleError

# Pillow's own default decompression-bomb threshold; images with more pixels are refused before
# any pixel is decoded, so a tiny file that claims to be 50000x50000 never allocates 7.5 GB.
MAX_IMAGE_PIXELS = 89_478_485

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
DECODERS = ("simplejpeg", "torchvision", "pil", "pil-draft")

try:  # optional at import time so that a broken wheel degrades to torchvision, not a crash
    import simplejpeg
except ImportError:  # pragma: no cover - exercised only where simplejpeg is missing
    simplejpeg = None


def is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def is_png(data: bytes) -> bool:
    return data[:8] == b"\x89PNG\r\n\x1a\n"


def default_decoder() -> str:
    return "simplejpeg" if simplejpeg is not None else "torchvision"


def image_size(data: bytes, name: str | Path = "<bytes>") -> tuple[int, int]:
    """(height, width) read from the header only. Raises BadSampleError if it is not an image."""
    if not data:
        raise BadSampleError(name, "empty file (0 bytes); re-create or remove it", kind="format")
    if is_png(data):
        if len(data) < 24:
            raise BadSampleError(name, "truncated PNG header; re-create or remove it")
        width, height = struct.unpack(">II", data[16:24])
        return height, width
    if is_jpeg(data) and simplejpeg is not None:
        try:
            height, width, _, _ = simplejpeg.decode_jpeg_header(data)
            return height, width
        except ValueError:
            pass  # fall through to PIL, which reads more header variants
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            return height, width
    except UnidentifiedImageError:
        # PIL's own message only names its BytesIO object, which tells the user nothing.
        raise BadSampleError(
            name, "not an image (unrecognized file format); re-create or remove it", kind="format"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadSampleError(name, f"corrupt or truncated image ({exc}); re-create or remove it") from None


def check_pixels(height: int, width: int, name: str | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
    if height * width > max_pixels:
        raise BadSampleError(
            name,
            f"image is {width}x{height} = {height * width:,} pixels, over the limit of {max_pixels:,} "
            "(possible decompression bomb); downscale it or remove it",
            kind="size",
        )


def decode(
    data: bytes,
    decoder: str = "auto",
    min_size: int | None = None,
    name: str | Path = "<bytes>",
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> np.ndarray:
    """Decode to an RGB uint8 array of shape (H, W, 3).

    ``min_size``: the consumer needs at least this many pixels on the shorter side; JPEG decoders
    that support DCT scaling may then return a smaller image than the file (never below min_size).
    """
    height, width = image_size(data, name)
    check_pixels(height, width, name, max_pixels)
    decoder = default_decoder() if decoder == "auto" else decoder
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; choose one of {', '.join(DECODERS)}")
    try:
        if is_jpeg(data):
            if decoder == "simplejpeg" and simplejpeg is not None:
                return simplejpeg.decode_jpeg(
                    data, colorspace="RGB", strict=True, **_dct_scale(height, width, min_size)
                )
            if decoder == "torchvision":
                with warnings.catch_warnings():  # deprecated in torchvision 0.29, still measured as an option
                    warnings.simplefilter("ignore", DeprecationWarning)
                    tensor = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
                return tensor.permute(1, 2, 0).numpy()
        return _decode_pil(data, draft_size=min_size if decoder == "pil-draft" else None)
    except BadSampleError:
        raise
    except Exception as exc:  # every decoder has its own exception types for corrupt data
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        reason = _CPP_LOCATION.sub("", reason)  # torchvision prefixes "operator(), /path/decode_png.cpp:79, "
        raise BadSampleError(name, f"corrupt or truncated image ({reason}); re-create or remove it") from None


_CPP_LOCATION = re.compile(r"^.*\.cpp:\d+,\s*")


def _dct_scale(height: int, width: int, min_size: int | None) -> dict:
    """simplejpeg arguments for the largest 1/2, 1/4 or 1/8 reduction that keeps the short side >= min_size.

    libjpeg-turbo also scales by 3/8, 5/8, 7/8..., but those IDCTs are slower than decoding at full
    size (measured: 7/8 of a 256 px JPEG decodes at half the rate of 8/8), so only powers of two pay.
    """
    if not min_size:
        return {}
    for denom in (8, 4, 2):
        if -(-min(height, width) // denom) >= min_size:
            # libjpeg's scaled size is ceil(side / denom); asking for exactly that selects this scale.
            return {"min_height": -(-height // denom), "min_width": -(-width // denom)}
    return {}


def _decode_pil(data: bytes, draft_size: int | None = None) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        if draft_size:
            w, h = im.size
            scale = draft_size / min(w, h)
            im.draft("RGB", (int(np.ceil(w * scale)), int(np.ceil(h * scale))))
        im.load()  # a truncated file raises here (PIL does not load truncated images by default)
        if im.mode.startswith("I;16"):  # 16-bit PNG: convert("RGB") would clip; keep the high byte
            gray = (np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8)
            return np.repeat(gray[..., None], 3, axis=2)
        return np.asarray(im.convert("RGB"))


def read_image(
    path: str | Path, decoder: str = "auto", min_size: int | None = None, max_pixels: int = MAX_IMAGE_PIXELS
) -> np.ndarray:
    """Read and decode one image file to RGB uint8 (H, W, 3); BadSampleError names the file."""
    path = Path(path)
    return decode(read_bytes(path), decoder=decoder, min_size=min_size, name=path, max_pixels=max_pixels)


def read_bytes(path: str | Path) -> bytes:
    """The whole file; BadSampleError names it when it cannot be read."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise BadSampleError(
            path, f"cannot read ({exc.strerror or exc}); check the path and permissions", kind="io"
        ) from None


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """(H, W, C) uint8 array -> (C, H, W) uint8 tensor, without copying the pixels when the array is
    writable. PIL's arrays are read-only views of its bytes; torch.from_numpy on one warns ("The given
    NumPy array is not writable") once per process, i.e. on every training run, so those are copied."""
    array = np.ascontiguousarray(array) if array.flags.writeable else np.array(array, order="C")
    return torch.from_numpy(array).permute(2, 0, 1)


def read_single_channel(
    path: str | Path,
    modes: tuple[str, ...],
    what: str,
    expected: str,
    max_pixels: int = MAX_IMAGE_PIXELS,
    not_png: str | None = None,
) -> np.ndarray:
    """A label or value map (masks, disparity) as the array PIL stores, when its mode is one of `modes`.
    BadSampleError names the file: `{what} has mode M; expected {expected}`, a corrupt file, too many
    pixels, and with `not_png` (the reason to give) a file that is not a PNG."""
    path = Path(path)
    data = read_bytes(path)
    if not_png is not None and not is_png(data):
        raise BadSampleError(path, not_png, kind="format")
    height, width = image_size(data, path)
    check_pixels(height, width, path, max_pixels)
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            mode = im.mode
            # a copy: np.asarray of a PIL image is read-only, which torch warns about
            array = np.array(im) if mode in modes else None
    except Exception as exc:  # PIL raises many types for corrupt data
        raise BadSampleError(path, f"corrupt or truncated {what} ({exc}); re-create or remove it") from None
    if array is None:
        raise BadSampleError(path, f"{what} has mode {mode}; expected {expected}")
    return array


def read_mask(path: str | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Read a single-channel index mask (PNG, mode L or P) as uint8 (H, W), values kept as stored."""
    mask = read_single_channel(
        path, ("L", "P", "I", "I;16"), "mask", "a single-channel index PNG (mode L or P)", max_pixels
    )
    if mask.dtype != np.uint8:
        # 16/32-bit masks: casting would silently wrap label 256 to 0, so refuse ids that do not fit.
        if mask.size and (mask.min() < 0 or mask.max() > 255):
            raise BadSampleError(path, f"mask holds label ids up to {mask.max()}; ids must fit in 0..255")
        mask = mask.astype(np.uint8)
    return mask
