"""What every model shares: its metadata, the VisionModel interface, building by name, loading weights.

A builder registered in `parvis.registry.MODELS` takes a `ModelMeta` (plus its own keyword options)
and returns a `VisionModel`. The meta carries the preprocessing the model needs (input size,
mean/std, class names, task), so it travels with checkpoints and exported artifacts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from parvis.data.transforms import build_transform
from parvis.errors import ParvisError
from parvis.models.centers import center_loss, decode_centers
from parvis.structures import Classification, Detections, SegmentationMask

TASKS = ("classification", "segmentation", "detection", "stereo", "inspection")
# The label value segmentation masks use for "do not score this pixel" (see parvis.data.synth).
SEGMENTATION_IGNORE_INDEX = 255


@dataclass
class ModelMeta:
    name: str
    task: str
    num_classes: int
    class_names: list[str]
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    ignore_index: int | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelMeta:
        """Rebuild from `to_dict()` output (e.g. read from a checkpoint); unknown or missing keys are errors."""
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.name not in ("ignore_index", "extra")}
        unknown, missing = sorted(set(d) - names), sorted(required - set(d))
        if unknown or missing:
            raise ParvisError(
                f"model metadata is not from this parvis version: unknown keys {unknown or 'none'}, "
                f"missing keys {missing or 'none'}"
            )
        values = dict(d)
        values["mean"], values["std"] = tuple(d["mean"]), tuple(d["std"])
        values["class_names"] = list(d["class_names"])
        values["extra"] = dict(d.get("extra") or {})
        return cls(**values)


def run_stage(stage: nn.Module, x: Tensor, checkpointed: bool) -> Tensor:
    """Run one stage, under activation checkpointing when asked and when there is a backward to save for.

    Non-reentrant checkpointing: works when `x` does not require grad (the first stage sees the raw
    images), replays autocast and the RNG state (dropout, stochastic depth) during recomputation.
    BatchNorm in training mode updates its running statistics again during the recomputation, as in
    every checkpointing implementation; the forward and gradients are unchanged.
    """
    if checkpointed and torch.is_grad_enabled():
        return checkpoint(stage, x, use_reentrant=False)
    return stage(x)


class VisionModel(nn.Module):
    """`forward(images) -> raw`, `postprocess(raw) -> structures`, `loss(raw, targets)`.

    Images are normalized float (B, 3, H, W) with `meta.mean`/`meta.std`.
    """

    def __init__(self, meta: ModelMeta):
        super().__init__()
        self.meta = meta

    def forward(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def postprocess(self, raw: Tensor) -> list:
        raise NotImplementedError

    def loss(self, raw: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
        raise NotImplementedError

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute encoder/backbone activations in backward instead of storing them."""
        raise ParvisError(f"model {self.meta.name!r} does not support gradient checkpointing; train without it")


class ClassificationModel(VisionModel):
    """raw: (B, K) logits."""

    def postprocess(self, raw: Tensor) -> list[Classification]:
        probs = raw.detach().float().softmax(dim=1).cpu()
        scores, labels = probs.max(dim=1)
        names = self.meta.class_names
        return [
            Classification(int(label), float(score), row, names)
            for label, score, row in zip(labels, scores, probs, strict=True)
        ]

    def loss(self, raw: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
        return F.cross_entropy(raw.float(), targets, label_smoothing=label_smoothing)


class SegmentationModel(VisionModel):
    """raw: (B, K, H, W) logits at the input resolution."""

    def postprocess(self, raw: Tensor) -> list[SegmentationMask]:
        masks = raw.detach().argmax(dim=1).cpu()
        return [SegmentationMask(mask, self.meta.class_names) for mask in masks]

    def loss(self, raw: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
        """Cross-entropy plus soft Dice (nnU-Net's default pair): cross-entropy counts pixels, so the
        background and large objects dominate it; Dice weighs every class by its own overlap, which is
        what mIoU scores (measured on the demo's U-Net: val mIoU 0.846 vs 0.827-0.836 with
        cross-entropy alone, same 10 epochs)."""
        ignore = -100 if self.meta.ignore_index is None else self.meta.ignore_index
        logits = raw.float()
        ce = F.cross_entropy(logits, targets, ignore_index=ignore, label_smoothing=label_smoothing)
        return ce + soft_dice_loss(logits, targets, ignore)


def soft_dice_loss(logits: Tensor, targets: Tensor, ignore_index: int = -100, smooth: float = 1.0) -> Tensor:
    """1 - the soft Dice coefficient per class over the batch (softmax probabilities against one-hot
    targets, pixels labelled `ignore_index` left out), averaged over classes."""
    k = logits.shape[1]
    valid = (targets != ignore_index).unsqueeze(1)
    probs = logits.softmax(dim=1) * valid
    onehot = F.one_hot(targets.clamp(0, k - 1), k).permute(0, 3, 1, 2).to(probs.dtype) * valid
    inter = (probs * onehot).sum(dim=(0, 2, 3))
    total = probs.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    return (1 - (2 * inter + smooth) / (total + smooth)).mean()


class DetectionModel(VisionModel):
    """raw: (B, C + 4, H / s, W / s) at output stride s = `meta.extra["output_stride"]`: class
    heatmap logits, box size and center offset per cell (the format of `parvis.models.centers`).

    postprocess: 3x3 max-pool peaks, the top `max_detections` per image, those scoring above
    `score_threshold` (low by default: mAP wants the whole ranking) -> Detections in input pixels.
    """

    score_threshold: float = 0.05
    max_detections: int = 100

    @property
    def output_stride(self) -> int:
        return int(self.meta.extra.get("output_stride", 4))

    def postprocess(self, raw: Tensor) -> list[Detections]:
        if self.meta.extra.get("output_format") == "boxes":
            return boxes_postprocess(raw, self.meta.class_names, self.score_threshold)
        boxes, scores, labels, keep = decode_centers(
            raw, self.meta.num_classes, self.output_stride, self.max_detections, self.score_threshold
        )
        names = self.meta.class_names
        return [Detections(b[k], s[k], c[k], names) for b, s, c, k in zip(boxes, scores, labels, keep, strict=True)]

    def loss(self, raw: Tensor, targets: list[dict], label_smoothing: float = 0.0) -> Tensor:
        """`targets`: the loader's per-image dicts with "boxes" (xyxy input pixels) and "labels"."""
        return center_loss(raw, targets, self.meta.num_classes, self.output_stride)


def boxes_postprocess(raw: Tensor, class_names: list[str], score_threshold: float) -> list[Detections]:
    """Detections from padded (B, N, 6) rows of (x0, y0, x1, y1, score, label); padding has score -1
    (the raw output of detectors that decode inside the model, e.g. torchvision's)."""
    out = []
    for rows in raw.detach().float().cpu():
        rows = rows[rows[:, 4] >= score_threshold]
        out.append(Detections(rows[:, :4], rows[:, 4], rows[:, 5].long(), class_names))
    return out


def eval_transform(meta: ModelMeta):
    """The eval preset a model's metadata describes (a zoo model's own crop_pct and interpolation)."""
    return build_transform(
        meta.task, False, meta.input_size, crop_pct=meta.extra.get("crop_pct"),
        interpolation=meta.extra.get("interpolation", "bilinear"),
    )  # fmt: skip


class SegmentationTrunk(SegmentationModel):
    """A segmentation model that also hands out the features its last layer reads.

    `forward_features(images) -> (logits, features)`: logits at the input resolution, features with
    `feature_channels` channels at the trunk's own resolution, so wrappers such as hierarchical
    multi-scale attention can put their own heads on them.
    """

    feature_channels: int

    def forward_features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def forward(self, images: Tensor) -> Tensor:
        return self.forward_features(images)[0]
