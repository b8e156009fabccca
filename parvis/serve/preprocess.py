"""Request bytes -> model input, and model output -> JSON, for one served model.

The preprocessing comes from the model's metadata (task, input size, mean/std), the same preset
`parvis predict` uses, so a served model sees exactly what it saw in evaluation. Both directions run
in the server's worker pool, never on the event loop.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from parvis.data.decode import MAX_IMAGE_PIXELS, decode, image_size, is_jpeg, is_png
from parvis.data.transforms import EvalPreprocess, decode_min_size
from parvis.draw import mask_png
from parvis.errors import BadSampleError, ParvisError
from parvis.models.base import ModelMeta
from parvis.structures import Classification, Detections, SegmentationMask

# Formats the server decodes. Anything else Pillow could open (EPS through Ghostscript, PSD, ICO, ...)
# is refused with 415: fewer decoders reachable from the network, and none that shells out.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "PPM", "GIF")
MASK_FORMATS = ("png", "rle", "none")


class Preprocessor:
    """Encoded image bytes -> normalized float32 (3, H, W) and the image's own (height, width)."""

    def __init__(self, meta: ModelMeta, max_pixels: int = MAX_IMAGE_PIXELS):
        self.meta = meta
        self.max_pixels = max_pixels
        self.min_size = decode_min_size(meta.task, False, meta.input_size)
        self.prepare = EvalPreprocess.for_model(meta)

    def __call__(self, data: bytes, name: str = "request body") -> tuple[torch.Tensor, tuple[int, int]]:
        check_format(data, name)
        height, width = image_size(data, name)
        array = decode(data, min_size=self.min_size, name=name, max_pixels=self.max_pixels)
        return self.prepare(array), (height, width)


def check_format(data: bytes, name: str) -> None:
    """BadSampleError(kind="format") unless `data` starts like an image in IMAGE_FORMATS."""
    if is_jpeg(data) or is_png(data):
        return
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as im:
            im.format  # noqa: B018 - opening reads only the header
    except UnidentifiedImageError:
        raise BadSampleError(
            name, f"not an image in a supported format; send one of {', '.join(IMAGE_FORMATS)}", kind="format"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadSampleError(name, f"corrupt or truncated image ({exc})") from None


def result_dict(
    meta: ModelMeta,
    logits: torch.Tensor,
    size: tuple[int, int],
    mask_format: str = "png",
    postprocess=None,
    min_score: float = 0.3,
    agnostic: bool = False,
) -> dict:
    """One image's JSON result from its raw output, through the shared result types. Detection needs
    the model's `postprocess` (its decoding); boxes come back in the image's own pixels. `agnostic`: class-agnostic
    NMS over the kept boxes (Detections.agnostic_nms), for clients that want one box per object."""
    if meta.task not in ("classification", "segmentation", "detection"):
        raise ParvisError(f"serving {meta.task} models is not supported (classification, segmentation, detection are)")
    if meta.task == "detection":
        det = postprocess(logits.float()[None])[0]
        keep = det.scores >= min_score
        # The detection preset resizes to a square: scale x and y back separately.
        height, width = size
        scale = torch.tensor([width, height, width, height], dtype=torch.float32) / meta.input_size
        found = Detections(det.boxes[keep].float() * scale, det.scores[keep], det.labels[keep], meta.class_names)
        return (found.agnostic_nms() if agnostic else found).to_dict()
    if meta.task == "classification":
        probs = logits.float().softmax(0)
        score, label = probs.max(0)
        return Classification(int(label), float(score), probs, meta.class_names).to_dict()
    # Back to the image's own resolution before the argmax, so the mask lines up with the image.
    full = F.interpolate(logits.float()[None], size=size, mode="bilinear", align_corners=False)
    mask = full[0].argmax(0).to(torch.uint8)
    out = SegmentationMask(mask.long(), meta.class_names).to_dict()
    if mask_format == "png":
        out["mask_png"] = base64.b64encode(mask_png(mask.numpy())).decode("ascii")
    elif mask_format == "rle":
        out["mask_rle"] = rle(mask.numpy())
    return out


def rle(mask: np.ndarray) -> dict:
    """Run-length encoding of a class-id mask in row-major order: {"size": [H, W], "values", "counts"}."""
    flat = mask.reshape(-1)
    if flat.size == 0:
        return {"size": list(mask.shape), "values": [], "counts": []}
    starts = np.flatnonzero(np.concatenate(([True], flat[1:] != flat[:-1])))
    counts = np.diff(np.append(starts, flat.size))
    return {"size": list(mask.shape), "values": flat[starts].tolist(), "counts": counts.tolist()}
