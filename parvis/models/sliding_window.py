"""Sliding-window inference for segmentation models on images larger than what they were trained on.

As MONAI's `sliding_window_inference`: windows overlap, each window's logits are weighted by an
importance map that favours its centre (a network sees the least context at a window's border,
so its predictions there are the least reliable), and every pixel gets the weighted mean over the
windows covering it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from parvis.errors import ParvisError

MODES = ("gaussian", "constant")


def importance_map(
    window: tuple[int, int],
    mode: str = "gaussian",
    sigma_scale: float = 0.125,
    device: torch.device | str = "cpu",
) -> Tensor:
    """(h, w) float32 weights, peak 1: a Gaussian with sigma = sigma_scale * window per axis, or all ones."""
    if mode not in MODES:
        raise ParvisError(f"sliding-window mode {mode!r} is unknown; choose one of {', '.join(MODES)}")
    if mode == "constant":
        return torch.ones(window, device=device)
    if sigma_scale <= 0:
        raise ParvisError(f"sliding-window sigma scale must be positive, got {sigma_scale}")
    axes = []
    for length in window:
        position = torch.arange(length, dtype=torch.float32, device=device) - (length - 1) / 2
        axes.append(torch.exp(-0.5 * (position / (sigma_scale * length)) ** 2))
    weights = torch.outer(axes[0], axes[1])
    weights = weights / weights.max()
    # A small sigma underflows to 0 at the corners; a pixel covered only by corners would divide by 0.
    return weights.clamp_min(weights[weights > 0].min())


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start offsets along one axis: a step of window * (1 - overlap), the last window flush with the end."""
    if size <= window:
        return [0]
    step = max(1, int(window * (1 - overlap)))
    count = math.ceil((size - window) / step) + 1
    return [min(i * step, size - window) for i in range(count)]


def sliding_window_inference(
    fn: Callable[[Tensor], Tensor],
    images: Tensor,
    window: int | tuple[int, int],
    overlap: float = 0.25,
    batch_size: int = 4,
    mode: str = "gaussian",
    sigma_scale: float = 0.125,
) -> Tensor:
    """`fn` (windows (N, C, h, w) -> logits (N, K, h, w)) over `images` (B, C, H, W) -> (B, K, H, W) float32.

    Images smaller than the window are zero-padded (evenly on both sides) and the padding is cropped
    from the result. Windows of all images are batched together, `batch_size` at a time.
    """
    wh, ww = (window, window) if isinstance(window, int) else tuple(window)
    if wh < 1 or ww < 1:
        raise ParvisError(f"sliding window must be at least 1 px, got {wh}x{ww}")
    if not 0 <= overlap < 1:
        raise ParvisError(f"sliding-window overlap must be in [0, 1), got {overlap}")
    if batch_size < 1:
        raise ParvisError(f"sliding-window batch size must be at least 1, got {batch_size}")
    if images.ndim != 4:
        raise ParvisError(f"sliding-window inference needs (B, C, H, W) images, got shape {tuple(images.shape)}")
    b, _, h, w = images.shape
    pad_h, pad_w = max(0, wh - h), max(0, ww - w)
    pad = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)  # F.pad order: left, right, top, bottom
    padded = F.pad(images, pad) if pad_h or pad_w else images
    ph, pw = padded.shape[-2:]

    weight = importance_map((wh, ww), mode, sigma_scale, images.device)
    tiles = [
        (i, y, x) for i in range(b) for y in window_starts(ph, wh, overlap) for x in window_starts(pw, ww, overlap)
    ]
    out: Tensor | None = None
    norm = torch.zeros((ph, pw), device=images.device)
    for y, x in {(y, x) for _, y, x in tiles}:
        norm[y : y + wh, x : x + ww] += weight
    for first in range(0, len(tiles), batch_size):
        chunk = tiles[first : first + batch_size]
        logits = fn(torch.stack([padded[i, :, y : y + wh, x : x + ww] for i, y, x in chunk]))
        if logits.ndim != 4 or tuple(logits.shape[-2:]) != (wh, ww):
            raise ValueError(f"fn must return (N, K, {wh}, {ww}) for {wh}x{ww} windows, got {tuple(logits.shape)}")
        if out is None:
            out = torch.zeros((b, logits.shape[1], ph, pw), device=images.device)
        for (i, y, x), tile in zip(chunk, logits.float(), strict=True):
            out[i, :, y : y + wh, x : x + ww] += tile * weight
    return out.div_(norm)[:, :, pad[2] : pad[2] + h, pad[0] : pad[0] + w]
