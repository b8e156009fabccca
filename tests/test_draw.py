"""parvis.draw: the one drawing module predict, serve and video share."""

import io

import numpy as np
import torch
from PIL import Image

from parvis.draw import PALETTE, annotate, colour, encode_jpeg, mask_png, overlay
from parvis.structures import Classification, Detections, SegmentationMask

GREY = np.full((40, 60, 3), 100, np.uint8)


def test_mask_png_keeps_the_ids_and_shows_the_palette():
    mask = np.zeros((8, 8), np.uint8)
    mask[2:4, 2:4] = 3
    im = Image.open(io.BytesIO(mask_png(mask)))
    assert im.mode == "P" and np.array_equal(np.array(im), mask)
    assert tuple(im.convert("RGB").getpixel((2, 2))) == tuple(PALETTE[3])


def test_overlay_leaves_background_alone():
    mask = np.zeros((40, 60), np.uint8)
    mask[:10] = 1
    out = overlay(GREY, mask)
    assert np.array_equal(out[10:], GREY[10:]) and not np.array_equal(out[:10], GREY[:10])


def test_annotate_each_result_type_without_touching_the_input():
    image = GREY.copy()
    boxes = torch.tensor([[5.0, 15.0, 30.0, 35.0], [35.0, 15.0, 55.0, 35.0]])
    dets = Detections(boxes, torch.tensor([0.9, 0.1]), torch.tensor([0, 1]), ["a", "b"])
    drawn = annotate(image, dets, min_score=0.3)
    assert np.array_equal(image, GREY)  # a new image
    assert tuple(drawn[25, 5]) == colour(0)  # the kept box's left edge
    assert np.array_equal(drawn[20:35, 35:56], GREY[20:35, 35:56])  # the low-score box is not drawn
    tracked = Detections(boxes[:1], torch.tensor([0.9]), torch.tensor([0]), ["a"], torch.tensor([4]))
    assert tuple(annotate(image, tracked)[25, 5]) == colour(4)  # a track keeps its colour whatever its class
    small = SegmentationMask(torch.ones(20, 30, dtype=torch.long), ["bg", "x"])
    assert annotate(image, small).shape == image.shape  # the mask is resized to the image
    label = annotate(image, Classification(1, 0.8, [0.2, 0.8], ["a", "b"]))
    assert not np.array_equal(label[:16], GREY[:16])


def test_colour_never_black_and_jpeg_roundtrip():
    assert all(colour(k) != (0, 0, 0) for k in range(40))
    im = Image.open(io.BytesIO(encode_jpeg(GREY)))
    assert im.format == "JPEG" and im.size == (60, 40)
