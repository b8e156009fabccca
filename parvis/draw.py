"""Drawing results on images, shared by predict (overlays), serve (mask PNGs) and video (frames).

    frame = annotate(image, result)                 # Detections / SegmentationMask / Classification
    png = mask_png(mask)                            # class ids as a palette PNG
    jpeg = encode_jpeg(frame)                       # RGB uint8 array or PIL image -> bytes

Colours come from one palette: a class id (masks), or a track id, else a class id (boxes).
"""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont

from parvis.structures import AnomalyMap, Classification, Detections, SegmentationMask, class_name

# A fixed, distinguishable colour per class id for masks and overlays (background stays dark).
PALETTE = np.array(
    [
        [0, 0, 0],
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
        [250, 190, 212],
        [0, 128, 128],
        [220, 190, 255],
        [170, 110, 40],
        [255, 250, 200],
        [128, 0, 0],
    ],
    dtype=np.uint8,
)
LABEL_COLOUR = (255, 255, 0)  # the image-level label (classification)


def colour(key: int) -> tuple[int, int, int]:
    """A box colour for a class or track id: the palette's entries in turn, skipping its black background."""
    return tuple(int(c) for c in PALETTE[1 + key % (len(PALETTE) - 1)])


@lru_cache(maxsize=1)
def label_font():
    # Loaded once: ImageDraw loads the default font on every call otherwise (most of an overlay's cost).
    return ImageFont.load_default()


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend class colours over the image where the mask is not background."""
    colours = PALETTE[mask % len(PALETTE)]
    blended = (image * (1 - alpha) + colours * alpha).astype(np.uint8)
    return np.where(mask[..., None] > 0, blended, image)


def mask_png(mask: np.ndarray) -> bytes:
    """Class ids as a palette PNG: the pixel values are the ids, the palette makes them visible."""
    im = Image.fromarray(mask)
    im.putpalette(PALETTE.flatten().tolist())
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def grey_png(values: np.ndarray) -> bytes:
    """(H, W) uint8 values as a single-channel 8-bit PNG (heat maps: the values are the data)."""
    buf = io.BytesIO()
    Image.fromarray(values.astype(np.uint8), mode="L").save(buf, "PNG")
    return buf.getvalue()


def heat_scale(result: AnomalyMap) -> float:
    """The score an 8-bit heat map's 255 stands for: twice the threshold (so 128 is the OK/NG
    boundary), or the map's maximum for a model without a threshold."""
    if result.threshold:
        return 2 * float(result.threshold)
    return max(result.score, 1e-12)


def heat_values(result: AnomalyMap, size: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W) uint8: the anomaly map at `size` (default its own), 0..heat_scale mapped to 0..255."""
    values = result.anomaly_map.detach().float().cpu()
    if size is not None and tuple(values.shape) != tuple(size):
        values = F.interpolate(values[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    return np.clip(np.round(values.numpy() / heat_scale(result) * 255), 0, 255).astype(np.uint8)


def heat_overlay(image: np.ndarray, result: AnomalyMap) -> np.ndarray:
    """The image with the anomaly map blended in (inferno colours; clear below 0.8x the threshold, then
    more opaque up to 50% at the threshold) and the decision written in the corner: OK or NG with the score."""
    heat = heat_values(result, image.shape[:2]).astype(np.float32) / 255
    colours = colormaps["inferno"](heat)[..., :3] * 255
    alpha = np.clip((heat - 0.4) * 10, 0, 1)[..., None] * 0.5  # clear below 0.8x the threshold, 50% at it
    blended = (image.astype(np.float32) * (1 - alpha) + colours * alpha).astype(np.uint8)
    canvas = Image.fromarray(blended)
    verdict = {True: "NG", False: "OK", None: "score"}[result.defective]
    colour_ = {True: (255, 60, 60), False: (60, 220, 60), None: LABEL_COLOUR}[result.defective]
    ImageDraw.Draw(canvas).text((4, 4), f"{verdict} {result.score:.3g}", fill=colour_, font=label_font())
    return np.asarray(canvas)


def encode_jpeg(image: np.ndarray | Image.Image, quality: int = 90) -> bytes:
    """`image`: an RGB uint8 array or a PIL image."""
    buf = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def draw_detections(canvas: Image.Image, detections: Detections, min_score: float = 0.0) -> None:
    """Boxes in `canvas`'s pixels with class, track id (when tracked) and score above each box."""
    draw = ImageDraw.Draw(canvas)
    font = label_font()
    boxes = detections.boxes.detach().cpu().tolist()
    labels = detections.labels.detach().cpu().tolist()
    scores = detections.scores.detach().cpu().tolist()
    tracks = detections.track_ids
    tracks = tracks.detach().cpu().tolist() if tracks is not None else [None] * len(boxes)
    for box, label, score, track in zip(boxes, labels, scores, tracks, strict=True):
        if score < min_score:
            continue
        c = colour(track if track is not None else label)
        draw.rectangle(box, outline=c, width=2)
        text = class_name(detections.class_names, label) + (f" #{track}" if track is not None else "")
        draw.text((box[0] + 2, max(0, box[1] - 11)), f"{text} {score:.2f}", fill=c, font=font)


def annotate(image: np.ndarray, result, min_score: float = 0.0) -> np.ndarray:
    """A new RGB uint8 image with `result` drawn on it (the input is left untouched): a mask blended
    in (resized to the image when it differs), boxes scoring at least `min_score`, or the class."""
    if isinstance(result, AnomalyMap):
        return heat_overlay(image, result)
    if isinstance(result, SegmentationMask):
        mask = result.mask
        if tuple(mask.shape) != image.shape[:2]:
            mask = F.interpolate(mask[None, None].float(), size=image.shape[:2], mode="nearest")[0, 0]
        return overlay(image, mask.to(torch.uint8).cpu().numpy())
    canvas = Image.fromarray(image)
    if isinstance(result, Classification):
        text = f"{class_name(result.class_names, result.label)} {result.score:.2f}"
        ImageDraw.Draw(canvas).text((4, 4), text, fill=LABEL_COLOUR, font=label_font())
    elif isinstance(result, Detections):
        draw_detections(canvas, result, min_score)
    return np.asarray(canvas)
