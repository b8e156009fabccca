"""Draw a result on its frame: boxes with class, score and track id; a class mask; a frame label."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from parvis.engine.predict import PALETTE, _label_font, overlay
from parvis.structures import Classification, Detections, SegmentationMask, class_name


def _colour(key: int) -> tuple[int, int, int]:
    # Track ids cycle through the palette (skipping its black background entry).
    return tuple(int(c) for c in PALETTE[1 + key % (len(PALETTE) - 1)])


def annotate(frame: np.ndarray, result) -> np.ndarray:
    """A new RGB uint8 frame with `result` drawn on it (the input is left untouched)."""
    from PIL import Image, ImageDraw

    if isinstance(result, SegmentationMask):
        mask = result.mask
        if tuple(mask.shape) != frame.shape[:2]:
            mask = F.interpolate(mask[None, None].float(), size=frame.shape[:2], mode="nearest")[0, 0]
        return overlay(frame, mask.to(torch.uint8).cpu().numpy())
    canvas = Image.fromarray(frame)
    draw = ImageDraw.Draw(canvas)
    font = _label_font()
    if isinstance(result, Classification):
        draw.text((4, 4), f"{class_name(result.class_names, result.label)} {result.score:.2f}", fill=(255, 255, 0),
                  font=font)  # fmt: skip
    elif isinstance(result, Detections):
        boxes = result.boxes.detach().cpu().tolist()
        labels = result.labels.detach().cpu().tolist()
        scores = result.scores.detach().cpu().tolist()
        tracks = result.track_ids.detach().cpu().tolist() if result.track_ids is not None else [None] * len(boxes)
        for box, label, score, track in zip(boxes, labels, scores, tracks, strict=True):
            colour = _colour(track if track is not None else label)
            draw.rectangle(box, outline=colour, width=2)
            text = f"{class_name(result.class_names, label)}" + (f" #{track}" if track is not None else "")
            draw.text((box[0] + 2, max(0, box[1] - 11)), f"{text} {score:.2f}", fill=colour, font=font)
    return np.asarray(canvas)
