"""Models from other zoos behind the VisionModel interface: `torchvision:NAME` and `timm:NAME`.

    build_zoo_model("torchvision:mobilenet_v2")             # ImageNet classes, 224 px, resize 256 + crop
    build_zoo_model("timm:resnet18", num_classes=5)         # timm's pretrained_cfg carried, head for 5 classes

The zoo's own metadata travels offline: torchvision's weights enums hold the category names and the
eval transform (crop size, resize size, mean/std, interpolation); timm's `pretrained_cfg` holds input
size, mean/std, interpolation and crop_pct, and timm ships ImageNet's label names. Only the weight
file itself is not here: `--weights FILE` gives a local one, `--weights default` (or a tag such as
`IMAGENET1K_V2`, `a1_in1k`) finds it in torch's hub cache (`$TORCH_HOME/hub/checkpoints`) or Hugging
Face's cache when it is already there. Nothing downloads.

Each wrapper keeps the zoo's module whole under `net`, so a state dict in the zoo's own key layout
loads with a `net.` prefix (see `parvis.models.base.load_weights`). Where each preprocessing value
came from is recorded in `meta.extra["provenance"]` (shown by `parvis inspect`).
"""

from __future__ import annotations

import difflib
import os
from functools import lru_cache
from pathlib import Path

import torch
import torchvision.models as tvm
from torch import Tensor, nn

from parvis.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from parvis.errors import ParvisError
from parvis.models.base import (
    SEGMENTATION_IGNORE_INDEX,
    ClassificationModel,
    DetectionModel,
    ModelMeta,
    SegmentationModel,
)

ZOOS = ("torchvision", "timm")
# Padded detection output of torchvision's detectors: per image up to this many rows of
# (x0, y0, x1, y1, score, label); unused rows have score -1.
MAX_DETECTIONS = 100


def is_zoo_name(spec: str) -> bool:
    return isinstance(spec, str) and spec.partition(":")[0] in ZOOS and ":" in spec


def split_name(spec: str) -> tuple[str, str]:
    zoo, _, name = spec.partition(":")
    if zoo not in ZOOS or not name:
        raise ParvisError(f"{spec!r}: a zoo model is named torchvision:NAME or timm:NAME")
    return zoo, name


# ----------------------------------------------------------------------------------------------
# torchvision


def _tv():
    return tvm


@lru_cache(maxsize=1)
def torchvision_names() -> dict[str, str]:
    """name -> task for every torchvision builder of the tasks parvis knows."""
    tvm = _tv()
    names = {n: "classification" for n in tvm.list_models(module=tvm)}
    names.update({n: "segmentation" for n in tvm.list_models(module=tvm.segmentation)})
    # Keypoint and instance-mask heads answer more than boxes; their boxes alone would mislead.
    names.update(
        {n: "detection" for n in tvm.list_models(module=tvm.detection) if not n.startswith(("keypoint", "mask"))}
    )
    return names


def _unknown(zoo: str, name: str, known) -> ParvisError:
    close = difflib.get_close_matches(name, list(known), n=3)
    hint = f" (did you mean {', '.join(f'{zoo}:{c}' for c in close)}?)" if close else ""
    return ParvisError(f"{zoo}:{name} is not a {zoo} model{hint}; `parvis models --source {zoo}` lists them")


def _torchvision_weights(name: str, tag: str | None = None, weights_file: str | Path | None = None):
    """The weights enum entry of a torchvision builder: the one whose published file is `weights_file`
    (same file name), else `tag`, else DEFAULT; None when the builder has no weights at all."""
    tvm = _tv()
    try:
        enum = tvm.get_model_weights(name)
    except (ValueError, KeyError):
        return None
    if weights_file is not None:
        for entry in enum:
            if Path(entry.url).name == Path(weights_file).name:
                return entry
    if tag in (None, "default", "DEFAULT"):
        return enum.DEFAULT
    try:
        return enum[tag]
    except KeyError:
        raise ParvisError(
            f"torchvision:{name} has no weights {tag!r}; choose one of {', '.join(e.name for e in enum)}"
        ) from None


def torchvision_meta(
    name: str, num_classes: int | None = None, class_names=None, input_size=None, weights_file=None
) -> ModelMeta:
    names = torchvision_names()
    if name not in names:
        raise _unknown("torchvision", name, names)
    task = names[name]
    weights = _torchvision_weights(name, weights_file=weights_file)
    prov: dict[str, str] = {}
    categories = list(weights.meta.get("categories") or []) if weights is not None else []
    transforms = weights.transforms() if weights is not None else None
    extra: dict = {"source": "torchvision", "interpolation": "bilinear"}
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    size = 224
    if transforms is not None:
        src = f"torchvision {weights}"
        if getattr(transforms, "mean", None) is not None:
            mean, std = tuple(transforms.mean), tuple(transforms.std)
            prov["mean"] = prov["std"] = src
        crop = getattr(transforms, "crop_size", None)
        resize = getattr(transforms, "resize_size", None)
        if crop:
            size = int(crop[0])
            prov["input_size"] = src
            if resize:
                extra["crop_pct"] = round(size / int(resize[0]), 6)
                prov["crop_pct"] = src
        elif resize:
            size = int(resize[0])
            prov["input_size"] = src
        interp = getattr(transforms, "interpolation", None)
        if interp is not None:
            extra["interpolation"] = str(interp.value)
            prov["interpolation"] = src
    if task == "detection":
        # torchvision detectors take images in [0, 1] and normalize and resize inside the model.
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        prov["mean"] = prov["std"] = "torchvision detectors normalize inside the model"
        extra["output_format"] = "boxes"
        size = 640
        prov["input_size"] = "parvis default for torchvision detectors (they resize inside)"
    if categories:
        prov["class_names"] = f"torchvision {weights}"
    if input_size:
        prov["input_size"] = "given"
    return _meta(f"torchvision:{name}", task, categories, num_classes, class_names, input_size or size,
                 mean, std, extra, prov)  # fmt: skip


def _meta(full, task, zoo_classes, num_classes, class_names, size, mean, std, extra, prov) -> ModelMeta:
    """ModelMeta from a zoo's facts and what the caller asks for (caller wins, and provenance says so)."""
    if class_names is not None:
        classes = list(class_names)
        prov["class_names"] = "given"
    elif num_classes is not None and num_classes != len(zoo_classes):
        classes = [f"class_{i}" for i in range(num_classes)]
        prov["class_names"] = "numbered (no names for this class count)"
    elif zoo_classes:
        classes = list(zoo_classes)
    else:
        n = num_classes or 1000
        classes = [f"class_{i}" for i in range(n)]
        prov["class_names"] = "numbered (the zoo names none)"
    if num_classes is not None and num_classes != len(classes):
        raise ParvisError(f"{len(classes)} class names given for {num_classes} classes")
    prov.setdefault("input_size", "parvis default")
    prov.setdefault("mean", "parvis default (ImageNet)")
    prov.setdefault("std", "parvis default (ImageNet)")
    return ModelMeta(
        name=full,
        task=task,
        num_classes=len(classes),
        class_names=classes,
        input_size=int(size),
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        ignore_index=SEGMENTATION_IGNORE_INDEX if task == "segmentation" else None,
        extra={**extra, "provenance": prov},
    )


class ZooClassifier(ClassificationModel):
    """A zoo classifier kept whole under `net`: raw = net(images), (B, K) logits."""

    def __init__(self, meta: ModelMeta, net: nn.Module):
        super().__init__(meta)
        self.net = net

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if hasattr(self.net, "set_grad_checkpointing"):  # timm models implement it
            self.net.set_grad_checkpointing(enable)
        else:
            super().set_grad_checkpointing(enable)


class ZooSegmenter(SegmentationModel):
    """torchvision's FCN / DeepLabV3 / LR-ASPP: raw = net(images)["out"], logits at the input size."""

    def __init__(self, meta: ModelMeta, net: nn.Module):
        super().__init__(meta)
        self.net = net

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)["out"]


class ZooDetector(DetectionModel):
    """torchvision's two-stage and single-shot detectors: they take images in [0, 1], resize and
    normalize inside, and answer per-image dicts. raw: (B, MAX_DETECTIONS, 6) rows of
    (x0, y0, x1, y1, score, label) in input pixels, padded with score -1, so the output is one
    tensor like every other model's. Labels are torchvision's category indices (0 = background)."""

    def __init__(self, meta: ModelMeta, net: nn.Module):
        super().__init__(meta)
        self.net = net

    def forward(self, images: Tensor) -> Tensor:
        if self.training:
            raise ParvisError(f"{self.meta.name}: training torchvision detectors is not supported; use centernet_*")
        results = self.net(list(images.float()))
        out = images.new_full((len(results), MAX_DETECTIONS, 6), -1.0, dtype=torch.float32)
        for i, r in enumerate(results):
            n = min(MAX_DETECTIONS, len(r["scores"]))
            out[i, :n, :4] = r["boxes"][:n].float()
            out[i, :n, 4] = r["scores"][:n].float()
            out[i, :n, 5] = r["labels"][:n].float()
        return out


def _build_torchvision(meta: ModelMeta) -> nn.Module:
    tvm = _tv()
    name = meta.name.partition(":")[2]
    task = meta.task
    kwargs: dict = {"weights": None, "num_classes": meta.num_classes}
    if task == "classification":
        return ZooClassifier(meta, tvm.get_model(name, **kwargs))
    if task == "segmentation":
        kwargs.update(weights_backbone=None, aux_loss=False)
        return ZooSegmenter(meta, tvm.get_model(name, **kwargs))
    kwargs.update(weights_backbone=None)
    return ZooDetector(meta, tvm.get_model(name, **kwargs))


# ----------------------------------------------------------------------------------------------
# timm


def _timm():
    try:
        import timm  # noqa: PLC0415 - optional: the timm: zoo
    except ImportError as exc:
        raise ParvisError('timm:NAME models need timm: pip install timm (or pip install ".[zoo]")') from exc
    return timm


@lru_cache(maxsize=1)
def timm_names() -> tuple[str, ...]:
    return tuple(_timm().list_models())


@lru_cache(maxsize=1)
def _imagenet_names() -> list[str]:
    from timm.data import ImageNetInfo  # noqa: PLC0415 - optional: the timm: zoo

    # "tench, Tinca tinca" -> "tench": the short name, as torchvision's categories spell them.
    return [d.split(",")[0].strip() for d in ImageNetInfo().label_descriptions()]


def timm_meta(
    name: str, num_classes: int | None = None, class_names=None, input_size=None, weights_file=None
) -> ModelMeta:
    timm = _timm()
    base = name.split(".")[0]
    if base not in timm_names():
        raise _unknown("timm", name, timm_names())
    cfg = timm.models.get_pretrained_cfg(name)
    prov: dict[str, str] = {}
    extra: dict = {"source": "timm", "interpolation": "bicubic"}
    mean, std, size = IMAGENET_MEAN, IMAGENET_STD, 224
    zoo_classes: list[str] = []
    if cfg is not None:
        src = f"timm pretrained_cfg {cfg.architecture}.{cfg.tag}" if cfg.tag else f"timm pretrained_cfg {name}"
        mean, std = tuple(cfg.mean), tuple(cfg.std)
        size = int(cfg.input_size[-1])
        extra.update(interpolation=cfg.interpolation or "bicubic", crop_pct=float(cfg.crop_pct or 0.875))
        for key in ("mean", "std", "input_size", "interpolation", "crop_pct"):
            prov[key] = src
        if cfg.label_names:
            zoo_classes = list(cfg.label_names)
            prov["class_names"] = src
        elif cfg.num_classes == 1000:
            zoo_classes = _imagenet_names()
            prov["class_names"] = "timm ImageNetInfo (1000 ImageNet classes)"
        if cfg.hf_hub_id:
            extra["hf_hub_id"] = cfg.hf_hub_id
        if cfg.url:
            extra["url"] = cfg.url
    if input_size:
        prov["input_size"] = "given"
    return _meta(f"timm:{name}", "classification", zoo_classes, num_classes, class_names, input_size or size,
                 mean, std, extra, prov)  # fmt: skip


def _build_timm(meta: ModelMeta) -> nn.Module:
    timm = _timm()
    name = meta.name.partition(":")[2]
    return ZooClassifier(meta, timm.create_model(name, pretrained=False, num_classes=meta.num_classes))


# ----------------------------------------------------------------------------------------------
# one entry point


def zoo_meta(
    spec: str, num_classes: int | None = None, class_names=None, input_size=None, weights_file=None
) -> ModelMeta:
    """The zoo's metadata for `spec`; `weights_file` picks the matching published weights' metadata
    (torchvision: the enum entry whose file has that name) when there are several."""
    zoo, name = split_name(spec)
    make = torchvision_meta if zoo == "torchvision" else timm_meta
    return make(name, num_classes, class_names, input_size, weights_file)


def build_zoo_model(meta: ModelMeta) -> nn.Module:
    """The zoo model `meta.name` describes (random init), with a head for `meta.num_classes`."""
    zoo, _ = split_name(meta.name)
    return _build_torchvision(meta) if zoo == "torchvision" else _build_timm(meta)


def zoo_task(spec: str) -> str:
    zoo, name = split_name(spec)
    if zoo == "timm":
        return "classification"
    names = torchvision_names()
    if name not in names:
        raise _unknown("torchvision", name, names)
    return names[name]


def cached_weights(spec: str, tag: str | None = None) -> Path:
    """The weight file of zoo model `spec` already in torch's hub cache or Hugging Face's cache.
    Never downloads: a file that is not there is an error saying where it was looked for."""
    zoo, name = split_name(spec)
    hub = Path(os.environ.get("TORCH_HOME") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "torch")
    hub = hub.expanduser() / "hub" / "checkpoints"
    looked = [str(hub)]
    if zoo == "torchvision":
        weights = _torchvision_weights(name, tag)
        if weights is None:
            raise ParvisError(f"torchvision:{name} has no published weights; pass --weights FILE")
        path = hub / Path(weights.url).name
        if path.is_file():
            return path
    else:
        timm = _timm()
        full = f"{name.split('.')[0]}.{tag}" if tag not in (None, "default", "DEFAULT") else name
        cfg = timm.models.get_pretrained_cfg(full)
        if cfg is None:
            raise ParvisError(f"timm:{full} has no pretrained configuration; pass --weights FILE")
        if cfg.hf_hub_id:
            from huggingface_hub import try_to_load_from_cache  # noqa: PLC0415 - comes with timm

            for filename in ("model.safetensors", "pytorch_model.bin"):
                found = try_to_load_from_cache(cfg.hf_hub_id, filename)
                if isinstance(found, str) and Path(found).is_file():
                    return Path(found)
            looked.append(f"Hugging Face cache ({cfg.hf_hub_id})")
        if cfg.url:
            path = hub / Path(cfg.url).name
            if path.is_file():
                return path
    raise ParvisError(
        f"{spec}: no cached weights found (looked in {', '.join(looked)}); nothing is downloaded at run time: "
        "pass --weights FILE with a local state dict"
    )


__all__ = [
    "MAX_DETECTIONS",
    "ZOOS",
    "ZooClassifier",
    "ZooDetector",
    "ZooSegmenter",
    "build_zoo_model",
    "cached_weights",
    "is_zoo_name",
    "timm_meta",
    "timm_names",
    "torchvision_meta",
    "torchvision_names",
    "zoo_meta",
    "zoo_task",
]
