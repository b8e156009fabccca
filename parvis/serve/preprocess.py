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
from parvis.data.transforms import EvalPreprocess, Normalize, decode_min_size
from parvis.draw import grey_png, heat_scale, heat_values, mask_png
from parvis.errors import BadSampleError, ParvisError
from parvis.models.base import ModelMeta
from parvis.structures import AnomalyMap, Classification, Detections, Disparity, SegmentationMask

# Formats the server decodes. Anything else Pillow could open (EPS through Ghostscript, PSD, ICO, ...)
# is refused with 415: fewer decoders reachable from the network, and none that shells out.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "PPM", "GIF")
MASK_FORMATS = ("png", "rle", "none")


class Preprocessor:
    """Encoded image bytes -> normalized float32 (3, H, W) and the image's own (height, width)."""

    def __init__(self, meta: ModelMeta, max_pixels: int = MAX_IMAGE_PIXELS):
        self.meta = meta
        self.max_pixels = max_pixels
        self.stereo = meta.task == "stereo"
        self.min_size = None if self.stereo else decode_min_size(meta.task, False, meta.input_size)
        self.prepare = Normalize(meta.mean, meta.std) if self.stereo else EvalPreprocess.for_model(meta)

    def __call__(self, data, name: str = "request body") -> tuple[torch.Tensor, tuple[int, int]]:
        """`data`: image bytes, or for a stereo model the (left, right) bytes of one rectified pair."""
        if self.stereo:
            return self.pair(*data)
        check_format(data, name)
        height, width = image_size(data, name)
        array = decode(data, min_size=self.min_size, name=name, max_pixels=self.max_pixels)
        return self.prepare(array), (height, width)

    def pair(self, left: bytes, right: bytes) -> tuple[torch.Tensor, tuple[int, int]]:
        """(6, H, W) normalized left RGB then right RGB, at the pair's own size (disparity is in its pixels)."""
        views = []
        for data, name in ((left, "left image"), (right, "right image")):
            check_format(data, name)
            views.append(decode(data, name=name, max_pixels=self.max_pixels))
        if views[0].shape != views[1].shape:
            (h, w), (rh, rw) = views[0].shape[:2], views[1].shape[:2]
            raise BadSampleError("right image", f"{rw}x{rh} px but the left one is {w}x{h}; send a rectified pair "
                                 "of one size", kind="format")  # fmt: skip
        pair = torch.from_numpy(np.concatenate(views, axis=2)).permute(2, 0, 1)[None]
        return self.prepare(pair)[0].contiguous(), views[0].shape[:2]


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
    planes: tuple[float, ...] = (),
) -> dict:
    """One image's JSON result from its raw output, through the shared result types. Detection needs
    the model's `postprocess` (its decoding); boxes come back in the image's own pixels. `agnostic`: class-agnostic
    NMS over the kept boxes (Detections.agnostic_nms), for clients that want one box per object."""
    if meta.task not in ("classification", "segmentation", "detection", "stereo", "inspection"):
        raise ParvisError(f"serving {meta.task} models is not supported (classification, segmentation, detection, "
                          "stereo, inspection are)")  # fmt: skip
    if meta.task == "stereo":
        return disparity_result(meta, logits, planes)
    if meta.task == "inspection":
        return inspection_result(meta, logits, size, heatmap=mask_format != "none")
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


def disparity_result(meta: ModelMeta, raw: torch.Tensor, planes: tuple[float, ...] = ()) -> dict:
    """A stereo pair's JSON: disparity statistics, the disparity as a base64 16-bit PNG (KITTI: value / 256
    = pixels), and per plane asked the share of pixels closer than it with its mask as a PNG."""
    disparity = raw.float().reshape(raw.shape[-2:])
    result = Disparity(disparity, meta.extra.get("focal_baseline"))
    out = result.to_dict()
    values = np.clip(np.round(disparity.numpy() * 256), 0, 65535).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="PNG")
    out["disparity_png"] = base64.b64encode(buffer.getvalue()).decode("ascii")
    if planes:
        out["planes_from"] = "dense disparity"
        out["planes"] = {}
        for plane in planes:
            closer = result.closer_than(plane).numpy()
            out["planes"][f"{plane:g}"] = {
                "closer_share": float(closer.mean()),
                "mask_png": base64.b64encode(mask_png(closer.astype(np.uint8))).decode("ascii"),  # 1 = closer
            }
    return out


def inspection_result(meta: ModelMeta, raw: torch.Tensor, size: tuple[int, int], heatmap: bool = True) -> dict:
    """One part's JSON: image score, threshold and OK/NG decision, the share of pixels at or above the
    threshold and, with `heatmap`, the anomaly map at the image's own size as a base64 8-bit PNG
    (`heatmap_scale`: the score that 255 stands for; 128 is the threshold)."""
    full = F.interpolate(raw.float().reshape(1, 1, *raw.shape[-2:]), size=size, mode="bilinear", align_corners=False)
    result = AnomalyMap(full[0, 0], meta.extra.get("threshold"))
    out = result.to_dict()
    if heatmap:
        out["heatmap_png"] = base64.b64encode(grey_png(heat_values(result))).decode("ascii")
        out["heatmap_scale"] = heat_scale(result)
    return out


def rle(mask: np.ndarray) -> dict:
    """Run-length encoding of a class-id mask in row-major order: {"size": [H, W], "values", "counts"}."""
    flat = mask.reshape(-1)
    if flat.size == 0:
        return {"size": list(mask.shape), "values": [], "counts": []}
    starts = np.flatnonzero(np.concatenate(([True], flat[1:] != flat[:-1])))
    counts = np.diff(np.append(starts, flat.size))
    return {"size": list(mask.shape), "values": flat[starts].tolist(), "counts": counts.tolist()}
