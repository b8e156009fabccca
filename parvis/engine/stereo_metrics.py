"""Stereo metrics on valid pixels (ground-truth disparity > 0, KITTI's convention).

- epe: mean absolute disparity error in pixels (end-point error);
- bad1 / bad2 / bad3: % of valid pixels whose error exceeds 1, 2, 3 px;
- d1: KITTI 2015's D1, % of valid pixels whose error exceeds both 3 px and 5 % of the true disparity;
- plane_acc / plane_iou (Bi3D head): per plane D, the share of valid pixels whose "closer than D"
  (disparity > D) answer matches the truth, and the IoU of the "closer" region; averaged over planes.

Sums are kept per process and all-reduced in `compute()`, so every rank reports the whole split.
"""

from __future__ import annotations

import torch
from torch import Tensor

THRESHOLDS = (1, 2, 3)
D1_PIXELS, D1_RELATIVE = 3.0, 0.05


def error_sums(pred: Tensor, target: Tensor) -> Tensor:
    """(valid, |error| sum, bad1, bad2, bad3, d1) over a batch of (B, H, W) or (H, W) disparities."""
    pred, target = pred.float().reshape(target.shape), target.float()
    valid = target > 0
    err = (pred - target).abs()[valid]
    truth = target[valid]
    bad = [(err > t).sum() for t in THRESHOLDS]
    d1 = ((err > D1_PIXELS) & (err > D1_RELATIVE * truth)).sum()
    values = [valid.sum(), err.double().sum(), *bad, d1]
    return torch.stack([v.double() for v in values])


def metrics_from_sums(sums: Tensor) -> dict[str, float]:
    n = max(float(sums[0]), 1.0)
    out = {"epe": float(sums[1]) / n}
    for i, t in enumerate(THRESHOLDS):
        out[f"bad{t}"] = 100.0 * float(sums[2 + i]) / n
    out["d1"] = 100.0 * float(sums[5]) / n
    out["valid_pixels"] = int(sums[0])
    return out


def plane_sums(closer_pred: Tensor, target: Tensor, plane: float) -> Tensor:
    """(valid, agree, intersection, union) of a predicted "closer than plane" mask against the truth."""
    valid = target > 0
    truth = (target > plane) & valid
    pred = closer_pred.reshape(target.shape).bool() & valid
    return torch.stack(
        [valid.sum(), ((pred == truth) & valid).sum(), (pred & truth).sum(), (pred | truth).sum()]
    ).double()


class StereoMetric:
    """update(pred disparity, target disparity[, plane masks]) per batch; compute() -> plain floats."""

    def __init__(self, planes: list[float] | None = None):
        self.planes = list(planes or [])
        self.device = torch.device("cpu")
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(6, dtype=torch.float64, device=self.device)
        self.plane = torch.zeros(len(self.planes), 4, dtype=torch.float64, device=self.device)

    def to(self, device) -> StereoMetric:
        self.device = torch.device(device)
        self.sums, self.plane = self.sums.to(self.device), self.plane.to(self.device)
        return self

    def update(self, pred: Tensor, target: Tensor, plane_probs: Tensor | None = None) -> None:
        self.sums += error_sums(pred, target).to(self.device)
        if plane_probs is not None:
            for k, plane in enumerate(self.planes):
                self.plane[k] += plane_sums(plane_probs[:, k] > 0.5, target, plane).to(self.device)

    def compute(self) -> dict[str, float]:
        sums, plane = self.sums.clone(), self.plane.clone()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(sums)
            torch.distributed.all_reduce(plane)
        out = metrics_from_sums(sums)
        if self.planes and float(plane[:, 0].sum()) > 0:
            acc = plane[:, 1] / plane[:, 0].clamp(min=1)
            iou = plane[:, 2] / plane[:, 3].clamp(min=1)
            out["plane_acc"] = float(acc.mean())
            out["plane_iou"] = float(iou.mean())
            for plane_px, a in zip(self.planes, acc.tolist(), strict=True):
                out[f"plane_acc_{plane_px:g}"] = float(a)
        return out


def eval_planes(max_disp: float) -> list[float]:
    """The planes `parvis eval` scores the plane head on: a quarter, half and three quarters of the range."""
    return [round(max_disp * f, 1) for f in (0.25, 0.5, 0.75)]
