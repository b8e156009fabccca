"""Building a model by name and loading weights into it: registry names, zoo names, weight files.

    model = build_model("resnet18", 5)                                   # parvis's own, random init
    model = build_model("torchvision:mobilenet_v2", weights="mobilenet_v2-b0353104.pth")
    model = build_model("timm:resnet18", 5, weights="timm.safetensors", replace_head=True)   # fine-tune

Weight files are read with `weights_only=True` (or as .safetensors) and may be in parvis's key layout
(`net.conv1.weight`), the zoo's own (`conv1.weight`), or carry a DDP / torch.compile prefix
(`module.`, `_orig_mod.`): the layout that matches most of the model's keys is used. A mismatch names
the missing and unexpected keys and what to do.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from parvis.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from parvis.errors import ParvisError
from parvis.models.base import SEGMENTATION_IGNORE_INDEX, ModelMeta, VisionModel
from parvis.models.zoo import build_zoo_model, cached_weights, is_zoo_name, zoo_meta
from parvis.registry import MODELS

# Prefixes other tools put before a model's own keys: DDP, torch.compile, Lightning-style wrappers.
FOREIGN_PREFIXES = ("module.", "_orig_mod.", "model.")


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
    if task == "stereo" and len(mean) == len(std) == 6:  # a stereo model's own meta (left, right)
        mean, std = tuple(mean[:3]), tuple(std[:3])
    if len(mean) != 3 or len(std) != 3:
        raise ParvisError(f"mean and std need 3 values (RGB), got mean={list(mean)} std={list(std)}")
    if task == "stereo":  # one (B, 6, H, W) input: left RGB then right RGB, normalized alike
        mean, std = tuple(mean) * 2, tuple(std) * 2
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
    num_classes: int | None = None,
    class_names: list[str] | None = None,
    input_size: int | None = None,
    weights: str | Path | None = None,
    mean=None,
    std=None,
    replace_head: bool = False,
    **kwargs,
) -> VisionModel:
    """Build `name` (a registered name or `torchvision:NAME` / `timm:NAME`), then load `weights`.

    `weights`: a local file, or for zoo models `default` / a weights tag found in the hub caches.
    Zoo models default to the zoo's classes, input size and normalization; given values win.
    `replace_head`: when the file's classifier does not fit `num_classes`, keep the new (random)
    head instead of refusing (fine-tuning). `kwargs` go to the family's builder (e.g. `scales=`).
    """
    path = resolve_weights(name, weights) if weights is not None else None
    if is_zoo_name(name):
        meta = zoo_meta(name, num_classes, class_names, input_size, weights_file=path)
        if mean is not None:
            meta.mean, meta.extra["provenance"]["mean"] = tuple(float(v) for v in mean), "given"
        if std is not None:
            meta.std, meta.extra["provenance"]["std"] = tuple(float(v) for v in std), "given"
        model = build_zoo_model(meta)
    else:
        task = MODELS.info(name)["task"]
        if task == "inspection" and class_names is None and num_classes in (None, 2):
            class_names = ["good", "defect"]  # every inspection model's two classes (models/inspection.py)
        if num_classes is None:
            num_classes = len(class_names) if class_names else (1000 if task == "classification" else 21)
        meta = make_meta(
            name, num_classes, class_names, input_size or 224, IMAGENET_MEAN if mean is None else mean,
            IMAGENET_STD if std is None else std,
        )  # fmt: skip
        model = MODELS.get(name)(meta, **kwargs)
    if path is not None:
        replaced = load_weights(model, path, replace_head=replace_head)
        model.meta.extra["weights"] = str(path)
        if replaced:
            model.meta.extra["head_replaced"] = replaced
    return model


# Builder options a model records in meta.extra, so a checkpoint rebuilds the same layers:
# HMSA's trained scale list, a resnet's small-input stem, a stereo network's disparity range, an
# inspection model's inner network (its own meta), feature layers and memory-bank size.
BUILD_OPTIONS = ("scales", "stem", "max_disp", "backbone", "segmenter", "layers", "memory_size")


def build_options(meta: ModelMeta) -> dict:
    return {key: meta.extra[key] for key in BUILD_OPTIONS if key in meta.extra}


def build_from_meta(meta: ModelMeta | dict) -> VisionModel:
    """The layers `meta` (a ModelMeta or its dict) describes, with fresh weights: what a checkpoint, a
    pruned model's reference or an inspection model's inner network is rebuilt from."""
    meta = meta if isinstance(meta, ModelMeta) else ModelMeta.from_dict(meta)
    return build_model(
        meta.name, meta.num_classes, meta.class_names, meta.input_size, mean=meta.mean, std=meta.std,
        **build_options(meta),
    )  # fmt: skip


def resolve_weights(name: str, weights: str | Path) -> Path:
    """A weights argument as a file: the path itself, or (zoo models) `default` / a tag in the caches."""
    path = Path(weights)
    if path.is_file():
        return path
    if is_zoo_name(name) and "/" not in str(weights) and not path.suffix:
        return cached_weights(name, str(weights))
    raise ParvisError(f"weights file {weights} does not exist; check the path")


def read_state_dict(path: str | Path) -> tuple[dict[str, Tensor], dict | None]:
    """(state dict, meta dict or None) from a .safetensors file, a raw torch state dict, or a parvis checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise ParvisError(f"weights file {path} does not exist; check the path")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path), device="cpu"), None
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated zip, a pickle that needs arbitrary code, not a weights file at all
        raise ParvisError(f"{path}: cannot read weights ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
    meta = None
    if isinstance(obj, dict):
        meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else None
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ParvisError(f"{path}: not a state dict (name -> tensor), nor a checkpoint with a 'model' entry")
    return {k: v for k, v in obj.items() if k != "n_averaged"}, meta


def adapt_layout(state: dict[str, Tensor], own: set[str]) -> dict[str, Tensor]:
    """`state` with its keys in the model's layout: the candidate (as is, foreign prefixes stripped,
    `net.` added or removed) that matches most of the model's keys."""
    candidates = [state]
    for prefix in FOREIGN_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            stripped = {k[len(prefix) :]: v for k, v in state.items()}
            candidates.append(stripped)
    for cand in list(candidates):
        candidates.append({f"net.{k}": v for k, v in cand.items()})
        if all(k.startswith("net.") for k in cand):
            candidates.append({k[4:]: v for k, v in cand.items()})
    return max(candidates, key=lambda c: len(own & set(c)))


def load_weights(model: VisionModel, path: str | Path, replace_head: bool = False) -> list[str]:
    """Load a local weights file into `model`: every key present, every shape equal, except that
    with `replace_head` the classifier tensors whose shapes do not fit stay as built (returned)."""
    state, file_meta = read_state_dict(path)
    own = model.state_dict()
    state = adapt_layout(state, set(own))
    # torchvision's segmentation weights carry an auxiliary head parvis builds without.
    if not any(k.startswith("net.aux_classifier.") for k in own):
        state = {k: v for k, v in state.items() if not k.startswith("net.aux_classifier.")}
    mismatched = {
        k: (tuple(v.shape), tuple(own[k].shape)) for k, v in state.items() if k in own and v.shape != own[k].shape
    }
    replaced: list[str] = []
    if mismatched and replace_head and _only_head(mismatched, model.meta.num_classes):
        replaced = sorted(mismatched)
        state = {k: v for k, v in state.items() if k not in mismatched}
        state.update({k: own[k] for k in replaced})
        mismatched = {}
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
            f"{len(unexpected)} unexpected keys {unexpected[:3]}; is it a weights file of another model?"
        )
    model.load_state_dict(state)
    return replaced


ENCODER_PREFIX = "encoder."  # where every parvis family keeps its encoder (conv_encoder.py, resnet_encoder.py)


def load_backbone(model: VisionModel, path: str | Path) -> list[str]:
    """Load the encoder of the weights in `path` (a checkpoint or state dict of any parvis model with
    the same encoder, e.g. unet_small into convnet_small or centernet_small) into `model`'s encoder, as
    torchvision's `weights_backbone` does for its detectors. Levels the file lacks stay as built; the
    file's extra levels and everything outside its encoder are left out. Returns the loaded names."""
    if not Path(path).is_file():
        raise ParvisError(f"--weights-backbone {path}: no such file; give a checkpoint such as a run's best.pt")
    state, _ = read_state_dict(path)
    own = model.state_dict()
    if not any(k.startswith(ENCODER_PREFIX) for k in own):
        raise ParvisError(
            f"--weights-backbone: {model.meta.name} has no parvis encoder to load into; use --weights for a "
            f"checkpoint of the same model"
        )
    state = {k: v for k, v in adapt_layout(state, set(own)).items() if k.startswith(ENCODER_PREFIX)}
    shared = sorted(k for k in state if k in own)
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in shared if state[k].shape != own[k].shape
    ]
    if mismatched:
        raise ParvisError(
            f"{path}: its encoder does not fit {model.meta.name}'s ({len(mismatched)} tensors differ, file vs "
            f"model: {', '.join(mismatched[:3])}); use a checkpoint of a model with the same encoder widths"
        )
    if not shared:
        raise ParvisError(
            f"{path}: no encoder tensor of it fits {model.meta.name} ({len(state)} encoder tensors in the file); "
            f"use a checkpoint of a model with the same encoder (e.g. unet_small, convnet_small, centernet_small)"
        )
    model.load_state_dict({k: state[k] for k in shared}, strict=False)
    return shared


def _only_head(mismatched: dict[str, tuple], num_classes: int) -> bool:
    """Every mismatching tensor has the model's class count as its first dim: a classifier head."""
    return all(m and m[0] == num_classes for _, m in mismatched.values())


def file_num_classes(path: str | Path, name: str) -> int | None:
    """The class count of a weights file's classifier for model `name` (None when it cannot tell)."""
    state, file_meta = read_state_dict(path)
    if file_meta and file_meta.get("num_classes"):
        return int(file_meta["num_classes"])
    probe = build_model(name, 7) if not is_zoo_name(name) else build_zoo_model(zoo_meta(name, 7))
    own = probe.state_dict()
    state = adapt_layout(state, set(own))
    firsts = {tuple(v.shape)[0] for k, v in state.items() if k in own and v.shape != own[k].shape and v.ndim}
    return firsts.pop() if len(firsts) == 1 else None
