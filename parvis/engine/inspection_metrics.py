"""Inspection metrics: image and pixel AUROC, PRO, and the OK/NG decision's F1, false-reject and escape
rates; the threshold rule that sets the decision.

    metric = InspectionMetric(threshold)      # threshold: the model's, or None (only the ranking metrics)
    metric.update(maps, masks)                # (B, 1, H, W) scores, (B, H, W) ground truth (>0: defect)
    metric.compute()                          # plain floats

An image is defective when its mask has any defect pixel; its score is its map's maximum. A part is
rejected (NG) when its score reaches the threshold: the false-reject rate is the share of good parts
rejected, the escape rate the share of defective parts passed.
PRO (per-region overlap, Bergmann et al., MVTec AD): for thresholds from high to low, the mean over
ground-truth regions (8-connected, per image) of the share of the region's pixels above the threshold,
against the share of good pixels above it; its area up to a false-positive rate of 0.3, divided by 0.3.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from parvis.errors import ParvisError

PRO_MAX_FPR = 0.3
PRO_THRESHOLDS = 1000


def auroc(scores: Tensor, labels: Tensor) -> float:
    """The area under the ROC curve of `scores` for binary `labels` (ties count a half: Mann-Whitney's
    U from average ranks); nan when only one class is present."""
    scores = scores.detach().double().flatten().cpu()
    labels = labels.detach().flatten().cpu().bool()
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    order = torch.argsort(scores)
    sorted_scores = scores[order]
    # average ranks of tied runs
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    average = ends - (counts.double() - 1) / 2  # 1-based mean rank of each run
    ranks = torch.empty_like(scores)
    ranks[order] = average[inverse]
    u = float(ranks[labels].sum()) - positives * (positives + 1) / 2
    return u / (positives * negatives)


def roc_points(scores: Tensor, labels: Tensor, points: int = 200) -> dict[str, list[float]]:
    """The ROC curve of `scores` for binary `labels` as at most `points` (fpr, tpr) pairs from (0, 0) to
    (1, 1), one per distinct threshold (evenly thinned when there are more): what `parvis report` plots."""
    scores = scores.detach().double().flatten().cpu()
    labels = labels.detach().flatten().cpu().bool()
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return {"fpr": [], "tpr": []}
    order = torch.argsort(scores, descending=True)
    ranked, hits = scores[order], labels[order].double()
    tp, fp = hits.cumsum(0), (1 - hits).cumsum(0)
    last = torch.cat([ranked[1:] != ranked[:-1], torch.tensor([True])])  # the end of each run of ties
    fpr = torch.cat([torch.zeros(1, dtype=torch.float64), fp[last] / negatives])
    tpr = torch.cat([torch.zeros(1, dtype=torch.float64), tp[last] / positives])
    if len(fpr) > points:
        keep = torch.linspace(0, len(fpr) - 1, points).round().long().unique()
        fpr, tpr = fpr[keep], tpr[keep]
    return {"fpr": [round(float(v), 5) for v in fpr], "tpr": [round(float(v), 5) for v in tpr]}


def choose_threshold(
    scores: Tensor, defective: Tensor, max_false_reject: float | None = None, min_recall: float | None = None
) -> tuple[float, dict]:
    """The OK/NG threshold (score >= threshold: NG) for a target on labelled images.

    `max_false_reject` R: the thresholds that reject at most floor(R x good images) of the good ones
    and, among those, catch the most defects, form a gap between the (k+1)-th highest good score and
    the next score above it; the threshold is the middle of that gap, so the split's counts are the
    same anywhere in it and a new good part scoring a little higher than these is not rejected.
    `min_recall` r: likewise the middle of the gap below the score that still catches ceil(r x
    defective images). Returns (threshold, what it achieves on these images).
    """
    if (max_false_reject is None) == (min_recall is None):
        raise ParvisError("give one threshold target: --max-false-reject R or --min-recall R")
    scores = scores.detach().float().flatten().cpu()
    defective = defective.detach().flatten().cpu().bool()
    good, bad = scores[~defective], scores[defective]
    if max_false_reject is not None:
        if not 0 <= max_false_reject < 1:
            raise ParvisError(f"--max-false-reject {max_false_reject} must be in [0, 1), e.g. 0.01")
        if good.numel() == 0:
            raise ParvisError("the threshold split has no good images: a false-reject rate needs some")
        allowed = math.floor(max_false_reject * good.numel())
        ranked = good.sort(descending=True).values
        if allowed >= len(ranked):
            threshold = float(scores.min())
        else:
            edge = ranked[allowed]  # the highest good score that must pass
            above = scores[scores > edge]  # the next score up, of any image: the gap's top
            threshold = (float(edge) + float(above.min())) / 2 if above.numel() else _just_above(edge)
        target = {"max_false_reject": max_false_reject}
    else:
        if not 0 < min_recall <= 1:
            raise ParvisError(f"--min-recall {min_recall} must be in (0, 1], e.g. 0.99")
        if bad.numel() == 0:
            raise ParvisError("the threshold split has no defective images: a recall needs some")
        needed = math.ceil(min_recall * bad.numel())
        edge = bad.sort(descending=True).values[needed - 1]  # the lowest defect score that must be caught
        below = scores[scores < edge]
        threshold = (float(edge) + float(below.max())) / 2 if below.numel() else float(edge)
        target = {"min_recall": min_recall}
    return threshold, {**target, **decision_rates(scores, defective, threshold)}


def _just_above(value: Tensor) -> float:
    return float(torch.nextafter(value.float(), torch.tensor(float("inf"))))


def decision_rates(scores: Tensor, defective: Tensor, threshold: float) -> dict[str, float]:
    """F1 of the NG decision, false-reject and escape rates, counts of each kind of image."""
    scores = scores.detach().float().flatten().cpu()
    defective = defective.detach().flatten().cpu().bool()
    rejected = scores >= threshold
    tp = int((rejected & defective).sum())
    fp = int((rejected & ~defective).sum())
    fn = int((~rejected & defective).sum())
    goods, bads = int((~defective).sum()), int(defective.sum())
    return {
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0,
        "false_reject": fp / goods if goods else 0.0,
        "escape": fn / bads if bads else 0.0,
        "good_images": goods,
        "defective_images": bads,
    }


def _regions(masks: np.ndarray) -> np.ndarray:
    """Per-image 8-connected ground-truth regions, numbered 1.. across the whole set (0: good pixel)."""
    from scipy import ndimage  # noqa: PLC0415 - only PRO needs connected components

    out = np.zeros(masks.shape, dtype=np.int64)
    offset = 0
    structure = np.ones((3, 3), dtype=bool)
    for i, mask in enumerate(masks):
        labels, count = ndimage.label(mask, structure=structure)
        out[i] = np.where(labels > 0, labels + offset, 0)
        offset += count
    return out


def pro_score(maps: Tensor, masks: Tensor, max_fpr: float = PRO_MAX_FPR, steps: int = PRO_THRESHOLDS) -> float:
    """The normalized area under the PRO curve up to `max_fpr` (see the module docstring); nan without
    defect regions or good pixels."""
    maps = maps.detach().float().cpu()
    masks = masks.detach().cpu() > 0
    regions = torch.from_numpy(_regions(masks.numpy()))
    count = int(regions.max())
    if count == 0 or bool(masks.all()):
        return float("nan")
    lo, hi = float(maps.min()), float(maps.max())
    edges = torch.linspace(lo, hi, steps + 1)[1:-1]  # thresholds, low to high
    bins = torch.bucketize(maps.flatten(), edges)  # a score above k edges lands in bin k
    flat_regions = regions.flatten()
    good = bins[~masks.flatten()]
    # pixels at or above threshold edges[j] are those in bins > j: reverse cumulative counts
    good_hist = torch.bincount(good, minlength=steps).double()
    fpr = good_hist.flip(0).cumsum(0).flip(0)[1:] / good.numel()  # (steps - 1,) per threshold
    inside = flat_regions > 0
    hist = torch.zeros(count, steps, dtype=torch.float64)
    hist.index_put_((flat_regions[inside] - 1, bins[inside]), torch.ones(int(inside.sum()), dtype=torch.float64),
                    accumulate=True)  # fmt: skip
    sizes = hist.sum(1, keepdim=True)
    overlap = (hist.flip(1).cumsum(1).flip(1)[:, 1:] / sizes).mean(0)  # (steps - 1,)
    # from the lowest FPR up: thresholds high to low
    fpr, overlap = fpr.flip(0), overlap.flip(0)
    # ends: above every score nothing is flagged; below every score everything is
    one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    fpr, overlap = torch.cat([zero, fpr, one]), torch.cat([zero, overlap, one])
    keep = fpr <= max_fpr
    x, y = fpr[keep], overlap[keep]
    beyond = (~keep).nonzero()
    if len(beyond):  # close the curve at exactly max_fpr by linear interpolation
        j = int(beyond[0])
        x0, x1, y0, y1 = float(fpr[j - 1]), float(fpr[j]), float(overlap[j - 1]), float(overlap[j])
        yi = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0) if x1 > x0 else y1
        x = torch.cat([x, torch.tensor([max_fpr], dtype=torch.float64)])
        y = torch.cat([y, torch.tensor([yi], dtype=torch.float64)])
    return float(torch.trapezoid(y, x)) / max_fpr


class InspectionMetric:
    """Collects anomaly maps and ground truth over a split (maps kept on the CPU, float32) and computes
    image_auroc, pixel_auroc, pro and, with a threshold, f1 / false_reject / escape at it."""

    def __init__(self, threshold: float | None = None):
        self.threshold = threshold
        self.reset()

    def reset(self) -> None:
        self.maps: list[Tensor] = []
        self.masks: list[Tensor] = []

    def to(self, device) -> InspectionMetric:
        return self

    def update(self, maps: Tensor, masks: Tensor) -> None:
        maps = maps.detach().float().cpu()
        if maps.ndim == 4:
            maps = maps[:, 0]
        masks = masks.detach().cpu().as_subclass(Tensor) > 0
        if maps.shape != masks.shape:
            raise ParvisError(f"anomaly maps {tuple(maps.shape)} and masks {tuple(masks.shape)} differ in size")
        self.maps.append(maps)
        self.masks.append(masks)

    def image_scores(self) -> tuple[Tensor, Tensor]:
        maps, masks = torch.cat(self.maps), torch.cat(self.masks)
        return maps.flatten(1).amax(1), masks.flatten(1).any(1)

    def compute(self) -> dict[str, float]:
        if not self.maps:
            return {}
        maps, masks = torch.cat(self.maps), torch.cat(self.masks)
        scores, defective = maps.flatten(1).amax(1), masks.flatten(1).any(1)
        out = {
            "image_auroc": auroc(scores, defective),
            "pixel_auroc": auroc(maps, masks),
            "pro": pro_score(maps, masks),
        }
        if self.threshold is not None:
            rates = decision_rates(scores, defective, self.threshold)
            out.update({k: float(v) for k, v in rates.items()})
            out["threshold"] = float(self.threshold)
        return out
