"""Objects as center points (Zhou et al., 2019, "Objects as Points"): the raw output format every
parvis detector shares, its training targets and loss, and its decoding into boxes.

Raw output, one tensor (B, C + 4, H / s, W / s) at output stride s:

    channels 0..C-1   class heatmap logits (a peak at each object's center cell)
    channels C, C+1   box width and height, in output cells
    channels C+2, C+3 the center's sub-cell offset (x, y) in [0, 1), in output cells

One plain tensor keeps every runtime (ONNX Runtime, OpenVINO, torch.compile) running the network
unchanged; decoding is a few tensor ops on that output, so an exported artifact decodes exactly as
the PyTorch model does. Everything here is vectorized over the batch and the objects: no Python
loop runs per object or per peak.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# The heatmap head's initial bias: sigmoid(-2.19) = 0.1, so the first steps are not swamped by the
# loss of thousands of background cells (Lin et al., 2017, focal loss prior).
HEATMAP_PRIOR_BIAS = -2.19
SIZE_WEIGHT = 0.1  # CenterNet's weight of the size L1 term (sizes are in cells, offsets in [0, 1))
OFFSET_WEIGHT = 1.0
MIN_OVERLAP = 0.7  # a corner-shifted box with this IoU bounds the Gaussian's radius (CenterNet)


def gaussian_radius(sizes: Tensor, min_overlap: float = MIN_OVERLAP) -> Tensor:
    """CenterNet's radius per box (sizes (M, 2) as width, height, any unit): the largest shift of the
    box's corners that still leaves an IoU of `min_overlap` with the true box, in three cases."""
    w, h = sizes[:, 0], sizes[:, 1]
    b1 = h + w
    c1 = w * h * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + (b1**2 - 4 * c1).clamp(min=0).sqrt()) / 2
    b2 = 2 * (h + w)
    c2 = (1 - min_overlap) * w * h
    r2 = (b2 + (b2**2 - 16 * c2).clamp(min=0).sqrt()) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (h + w)
    c3 = (min_overlap - 1) * w * h
    r3 = (b3 + (b3**2 - 4 * a3 * c3).clamp(min=0).sqrt()) / 2
    return torch.minimum(torch.minimum(r1, r2), r3)


def center_targets(
    targets: list[dict], num_classes: int, grid: tuple[int, int], stride: int, device: torch.device
) -> dict[str, Tensor]:
    """Training targets from the loader's per-image {"boxes" (xyxy input pixels), "labels"} dicts.

    Returns heatmap (B, C, H, W): per class the maximum of the objects' Gaussians, exactly 1 at
    each center cell; and per object (M of them over the batch): batch index, center cell (x, y),
    size (w, h) and offset (x, y) in cells.
    """
    height, width = grid
    boxes = torch.cat([t["boxes"].as_subclass(Tensor).reshape(-1, 4) for t in targets]).to(device, torch.float32)
    labels = torch.cat([t["labels"].as_subclass(Tensor).reshape(-1) for t in targets]).to(device, torch.int64)
    batch = torch.cat([torch.full((len(t["labels"]),), i, dtype=torch.int64) for i, t in enumerate(targets)])
    batch = batch.to(device)
    centers = (boxes[:, :2] + boxes[:, 2:]) / (2 * stride)
    sizes = (boxes[:, 2:] - boxes[:, :2]) / stride
    cells = centers.floor().long()
    cells[:, 0].clamp_(0, width - 1)
    cells[:, 1].clamp_(0, height - 1)
    offsets = centers - cells
    # The Gaussian is centred on the center cell (peak exactly 1 there) and cut at the radius.
    radius = gaussian_radius(sizes).floor().clamp(min=0)
    sigma2 = ((2 * radius + 1) / 6) ** 2
    dx = torch.arange(width, device=device)[None] - cells[:, :1]  # (M, W)
    dy = torch.arange(height, device=device)[None] - cells[:, 1:]  # (M, H)
    r = radius[:, None]
    gx = torch.exp(-(dx**2) / (2 * sigma2[:, None])) * (dx.abs() <= r)
    gy = torch.exp(-(dy**2) / (2 * sigma2[:, None])) * (dy.abs() <= r)
    gauss = gy[:, :, None] * gx[:, None, :]  # (M, H, W)
    heatmap = torch.zeros(len(targets) * num_classes, height * width, device=device)
    rows = (batch * num_classes + labels)[:, None].expand(-1, height * width)
    heatmap.scatter_reduce_(0, rows, gauss.flatten(1), "amax")
    return {
        "heatmap": heatmap.view(len(targets), num_classes, height, width),
        "batch": batch,
        "cells": cells,
        "sizes": sizes,
        "offsets": offsets,
    }


def center_loss(raw: Tensor, targets: list[dict], num_classes: int, stride: int) -> Tensor:
    """Penalty-reduced focal loss on the heatmap (alpha 2, beta 4, normalized by the number of
    objects) + 0.1 x L1 on the sizes + L1 on the offsets, both read at the objects' center cells."""
    raw = raw.float()
    t = center_targets(targets, num_classes, tuple(raw.shape[-2:]), stride, raw.device)
    logits, heatmap = raw[:, :num_classes], t["heatmap"]
    prob = logits.sigmoid()
    positive = heatmap.eq(1).float()
    # log(p) and log(1 - p) from the logits: exact where sigmoid saturates.
    pos_term = F.logsigmoid(logits) * (1 - prob) ** 2 * positive
    neg_term = F.logsigmoid(-logits) * prob**2 * (1 - heatmap) ** 4 * (1 - positive)
    focal = -(pos_term.sum() + neg_term.sum()) / positive.sum().clamp(min=1)
    objects = len(t["batch"])
    if objects == 0:
        return focal + 0 * raw[:, num_classes:].sum()  # keeps every head in the graph
    reg = raw[t["batch"], num_classes : num_classes + 4, t["cells"][:, 1], t["cells"][:, 0]]  # (M, 4)
    size_l1 = (reg[:, :2] - t["sizes"]).abs().mean()
    offset_l1 = (reg[:, 2:] - t["offsets"]).abs().mean()
    return focal + SIZE_WEIGHT * size_l1 + OFFSET_WEIGHT * offset_l1


def decode_centers(
    raw: Tensor, num_classes: int, stride: int, k: int = 100, threshold: float = 0.05
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(boxes (B, K, 4) xyxy input pixels, scores (B, K), labels (B, K), keep (B, K) score > threshold).

    A heatmap cell is a detection when it is the maximum of its 3x3 neighbourhood (CenterNet's NMS)
    and among the top `k` of its image over all classes.
    """
    raw = raw.detach().float()
    batch, _, height, width = raw.shape
    heat = raw[:, :num_classes].sigmoid()
    peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
    scores, index = peaks.flatten(1).topk(min(k, num_classes * height * width))
    labels = index // (height * width)
    cell = index % (height * width)
    reg = raw[:, num_classes : num_classes + 4].flatten(2)  # (B, 4, HW)
    box_w, box_h, off_x, off_y = reg.gather(2, cell[:, None].expand(-1, 4, -1)).unbind(1)
    cx = (cell % width).float() + off_x
    cy = (cell // width).float() + off_y
    boxes = torch.stack([cx - box_w / 2, cy - box_h / 2, cx + box_w / 2, cy + box_h / 2], dim=-1) * stride
    limit = torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device) * stride
    boxes = torch.minimum(boxes.clamp(min=0), limit)
    return boxes, scores, labels, scores > threshold
