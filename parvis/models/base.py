"""What every model shares: its metadata, the VisionModel interface, building by name, loading weights.

A builder registered in `parvis.registry.MODELS` takes a `ModelMeta` (plus its own keyword options)
and returns a `VisionModel`. The meta carries the preprocessing the model needs (input size,
mean/std, class names, task), so it travels with checkpoints and exported artifacts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from parvis.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from parvis.errors import ParvisError
from parvis.models.centers import center_loss, decode_centers
from parvis.registry import MODELS
from parvis.structures import Classification, Detections, SegmentationMask

TASKS = ("classification", "segmentation", "detection")
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
        ignore = -100 if self.meta.ignore_index is None else self.meta.ignore_index
        return F.cross_entropy(raw.float(), targets, ignore_index=ignore, label_smoothing=label_smoothing)


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
        boxes, scores, labels, keep = decode_centers(
            raw, self.meta.num_classes, self.output_stride, self.max_detections, self.score_threshold
        )
        names = self.meta.class_names
        return [Detections(b[k], s[k], c[k], names) for b, s, c, k in zip(boxes, scores, labels, keep, strict=True)]

    def loss(self, raw: Tensor, targets: list[dict], label_smoothing: float = 0.0) -> Tensor:
        """`targets`: the loader's per-image dicts with "boxes" (xyxy input pixels) and "labels"."""
        return center_loss(raw, targets, self.meta.num_classes, self.output_stride)


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


def make_meta(
    name: str,
    num_classes: int,
    class_names: list[str] | None = None,
    input_size: int = 224,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
) -> ModelMeta:
    """The metadata of registered model `name`, checking what a user can get wrong."""
    task = MODELS.info(name)["task"]
    if num_classes < 1:
        raise ParvisError(f"--num-classes must be at least 1, got {num_classes}")
    if class_names is None:
        class_names = [f"class_{i}" for i in range(num_classes)]
    if len(class_names) != num_classes:
        raise ParvisError(
            f"{len(class_names)} class names given for {num_classes} classes; pass --num-classes {len(class_names)}"
        )
    if len(mean) != 3 or len(std) != 3:
        raise ParvisError(f"mean and std need 3 values (RGB), got mean={list(mean)} std={list(std)}")
    return ModelMeta(
        name=name,
        task=task,
        num_classes=num_classes,
        class_names=list(class_names),
        input_size=input_size,
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        ignore_index=SEGMENTATION_IGNORE_INDEX if task == "segmentation" else None,
    )


def build_model(
    name: str,
    num_classes: int,
    class_names: list[str] | None = None,
    input_size: int = 224,
    weights: str | Path | None = None,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    **kwargs,
) -> VisionModel:
    """Build registered model `name` (random init), then load `weights` from a local file if given.

    `kwargs` go to the family's builder (e.g. `scales=` for hmsa_* models).
    """
    meta = make_meta(name, num_classes, class_names, input_size, mean, std)
    model = MODELS.get(name)(meta, **kwargs)
    if weights is not None:
        load_weights(model, weights)
    return model


def read_state_dict(path: str | Path) -> tuple[dict[str, Tensor], dict | None]:
    """(state dict, meta dict or None) from a .safetensors file, a raw torch state dict, or a parvis checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise ParvisError(f"weights file {path} does not exist; check the path")
    try:
        if path.suffix == ".safetensors":
            try:
                from safetensors.torch import load_file
            except ImportError as exc:
                raise ParvisError(f"{path}: reading .safetensors needs `pip install safetensors`") from exc
            return load_file(str(path), device="cpu"), None
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except ParvisError:
        raise
    except Exception as exc:  # a truncated zip, a pickle that needs arbitrary code, not a weights file at all
        raise ParvisError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from exc
    meta = None
    if isinstance(obj, dict):
        meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else None
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ParvisError(f"{path}: not a state dict (name -> tensor), nor a checkpoint with a 'model' entry")
    return obj, meta


def load_weights(model: VisionModel, path: str | Path) -> None:
    """Load a local weights file into `model`, strictly: every key present, every shape equal."""
    state, file_meta = read_state_dict(path)
    own = model.state_dict()
    mismatched = {
        k: (tuple(v.shape), tuple(own[k].shape)) for k, v in state.items() if k in own and v.shape != own[k].shape
    }
    if mismatched:
        listing = ", ".join(f"{k} {f} vs {m}" for k, (f, m) in list(mismatched.items())[:4])
        file_classes = (file_meta or {}).get("num_classes")
        if file_classes is None:
            # Every mismatching tensor is a head tensor whose first dim is the class count when only the head differs.
            firsts = {f[0] for f, _ in mismatched.values() if f}
            file_classes = firsts.pop() if len(firsts) == 1 else None
        hint = f"pass --num-classes {file_classes}" if file_classes is not None else "is it a different model?"
        raise ParvisError(
            f"{path}: {len(mismatched)} tensors do not fit {model.meta.name} with {model.meta.num_classes} classes "
            f"(file vs model: {listing}); {hint}"
        )
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ParvisError(
            f"{path}: does not match {model.meta.name}: {len(missing)} missing keys {missing[:3]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:3]}; is it a different model?"
        )
    model.load_state_dict(state)
