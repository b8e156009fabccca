"""The result types every stage hands on: predict, serve, video and bench all speak these.

Tensors stay tensors (on whatever device produced them) until `to_dict()`, which makes plain JSON-ready
Python values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.ops import nms


def class_name(class_names: list[str], label: int) -> str:
    """The name of `label`, or the id as text when the list does not cover it."""
    return class_names[label] if 0 <= label < len(class_names) else str(label)


@dataclass
class Classification:
    """One image's class prediction: the top label and the probabilities of every class."""

    label: int
    score: float
    scores: list[float] | torch.Tensor
    class_names: list[str]

    def top(self, k: int = 5) -> list[tuple[int, float]]:
        probs = torch.as_tensor(self.scores, dtype=torch.float32).detach().cpu()
        values, labels = probs.topk(min(k, probs.numel()))
        return list(zip(labels.tolist(), values.tolist(), strict=True))

    def to_dict(self) -> dict:
        return {
            "label": int(self.label),
            "class_name": class_name(self.class_names, int(self.label)),
            "score": float(self.score),
            "top5": [
                {"label": label, "class_name": class_name(self.class_names, label), "score": score}
                for label, score in self.top(5)
            ],
        }


@dataclass
class SegmentationMask:
    """One image's per-pixel class ids, (H, W) int64. Callers write the mask itself as a PNG."""

    mask: torch.Tensor
    class_names: list[str]

    def __post_init__(self) -> None:
        if self.mask.ndim != 2:
            raise ValueError(f"mask must be (H, W), got shape {tuple(self.mask.shape)}")

    def to_dict(self) -> dict:
        """Image size and the share of pixels of each class; ids outside the class list count as unlabeled."""
        height, width = self.mask.shape
        ids = self.mask.detach().flatten().to("cpu", torch.int64)
        total = max(1, ids.numel())
        known = (ids >= 0) & (ids < len(self.class_names))
        counts = torch.bincount(ids[known], minlength=len(self.class_names))
        return {
            "height": int(height),
            "width": int(width),
            "class_shares": {name: counts[i].item() / total for i, name in enumerate(self.class_names)},
            "unlabeled_share": (ids.numel() - int(known.sum())) / total,
        }


# The IoU above which class-agnostic NMS (video, serving's ?agnostic=true) keeps only the higher score.
AGNOSTIC_NMS_IOU = 0.6


@dataclass
class Detections:
    """Boxes of one image: (N, 4) xyxy pixels, (N,) scores, (N,) int64 labels, optional (N,) track ids."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    track_ids: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = self.boxes.shape[0]
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 4:
            raise ValueError(f"boxes must be (N, 4) xyxy, got shape {tuple(self.boxes.shape)}")
        parts = {"scores": self.scores, "labels": self.labels}
        if self.track_ids is not None:
            parts["track_ids"] = self.track_ids
        for name, value in parts.items():
            if value.shape != (n,):
                raise ValueError(f"{name} must be ({n},) to match {n} boxes, got shape {tuple(value.shape)}")

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def agnostic_nms(self, iou: float = AGNOSTIC_NMS_IOU) -> Detections:
        """Class-agnostic non-maximum suppression: of boxes overlapping by more than `iou`, whatever their
        class, the highest score stays (a detector unsure between two classes puts a box in each)."""
        if len(self) < 2:
            return self
        kept = nms(self.boxes.float(), self.scores.float(), iou)
        tracks = self.track_ids[kept] if self.track_ids is not None else None
        return Detections(self.boxes[kept], self.scores[kept], self.labels[kept], self.class_names, tracks)

    def to_dict(self) -> dict:
        boxes = self.boxes.detach().cpu().tolist()
        scores = self.scores.detach().cpu().tolist()
        labels = self.labels.detach().cpu().tolist()
        tracks = self.track_ids.detach().cpu().tolist() if self.track_ids is not None else None
        detections = []
        for i, (box, score, label) in enumerate(zip(boxes, scores, labels, strict=True)):
            item = {"box": box, "score": score, "label": int(label), "class_name": class_name(self.class_names, label)}
            if tracks is not None:
                item["track_id"] = int(tracks[i])
            detections.append(item)
        return {"count": len(detections), "detections": detections}


@dataclass
class Disparity:
    """One left view's disparity in pixels, (H, W) float. With the camera's focal length x baseline
    (pixels x metres) known, depth = focal_baseline / disparity."""

    disparity: torch.Tensor
    focal_baseline: float | None = None

    def __post_init__(self) -> None:
        if self.disparity.ndim != 2:
            raise ValueError(f"disparity must be (H, W), got shape {tuple(self.disparity.shape)}")

    def depth(self) -> torch.Tensor:
        """Depth in metres (inf where disparity is 0); needs focal_baseline."""
        if not self.focal_baseline:
            raise ValueError("depth needs the camera's focal length x baseline (focal_baseline)")
        return self.focal_baseline / self.disparity.clamp(min=0)

    def closer_than(self, plane: float) -> torch.Tensor:
        """(H, W) bool: pixels closer than the plane at `plane` px disparity (disparity > plane)."""
        return self.disparity > plane

    def to_dict(self) -> dict:
        d = self.disparity.detach().float().cpu()
        height, width = d.shape
        out = {
            "height": int(height),
            "width": int(width),
            "disparity_min": float(d.min()) if d.numel() else 0.0,
            "disparity_max": float(d.max()) if d.numel() else 0.0,
            "disparity_mean": float(d.mean()) if d.numel() else 0.0,
        }
        if self.focal_baseline:
            out["focal_baseline"] = float(self.focal_baseline)
            out["nearest_m"] = float(self.focal_baseline / max(out["disparity_max"], 1e-6))
        return out


@dataclass
class AnomalyMap:
    """One image's inspection result: a (H, W) float anomaly map (higher: more likely a defect), the
    image score (the map's maximum) and, with the model's threshold, the OK/NG decision."""

    anomaly_map: torch.Tensor
    threshold: float | None = None

    def __post_init__(self) -> None:
        if self.anomaly_map.ndim != 2:
            raise ValueError(f"anomaly map must be (H, W), got shape {tuple(self.anomaly_map.shape)}")

    @property
    def score(self) -> float:
        return float(self.anomaly_map.detach().float().max()) if self.anomaly_map.numel() else 0.0

    @property
    def defective(self) -> bool | None:
        """True (NG) when the score reaches the threshold; None without a threshold."""
        return None if self.threshold is None else self.score >= self.threshold

    def defect_mask(self) -> torch.Tensor:
        """(H, W) bool: the pixels at or above the threshold (all False without one)."""
        if self.threshold is None:
            return torch.zeros_like(self.anomaly_map, dtype=torch.bool)
        return self.anomaly_map >= self.threshold

    def to_dict(self) -> dict:
        height, width = self.anomaly_map.shape
        out = {"height": int(height), "width": int(width), "score": self.score}
        if self.threshold is not None:
            out["threshold"] = float(self.threshold)
            out["decision"] = "NG" if self.defective else "OK"
            out["defect_share"] = float(self.defect_mask().float().mean()) if self.anomaly_map.numel() else 0.0
        return out
