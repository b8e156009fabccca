"""Model loading for everything PyTorch runs: parvis checkpoints, registry names and zoo names with weights.

    model = load_model("runs/train/best.pt")                                   # a parvis checkpoint
    model = load_model("torchvision:mobilenet_v2", weights="mobilenet_v2-b0353104.pth")
    model = load_model("resnet18")                                            # registered name, random init

Artifacts (.onnx, .pt2) and optimize folders are opened by the runtimes (`parvis.runtimes.open_predictor`),
which come after this module; their on-disk format is `parvis.artifact`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from parvis import runtime
from parvis.artifact import Preprocess, apply_given
from parvis.engine.checkpoint import load_checkpoint, save_checkpoint
from parvis.errors import ParvisError
from parvis.models import MODELS, ModelMeta, VisionModel, build_model
from parvis.models.build import build_from_meta, file_num_classes, resolve_weights
from parvis.models.zoo import is_zoo_name, zoo_task

# What a file given as MODEL may be besides an artifact: a parvis checkpoint.
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors")


def load_trained(path: str | Path, device: torch.device, use_ema: bool = False) -> VisionModel:
    """The model a parvis checkpoint describes, with its weights, in eval mode on `device`."""
    state = load_checkpoint(path)
    if not isinstance(state.get("meta"), dict) or "model" not in state:
        raise ParvisError(f"{path}: has no model metadata; it is not a checkpoint written by parvis train")
    meta = ModelMeta.from_dict(state["meta"])
    model = build_from_meta(meta)
    # The checkpoint's own metadata (zoo provenance, crop_pct, ...) wins over the rebuilt one.
    model.meta = meta
    weights = state["ema"] if use_ema and state.get("ema") else state["model"]
    if use_ema and not state.get("ema"):
        raise ParvisError(f"{path}: holds no EMA weights (trained without ema=true); drop --ema")
    # AveragedModel keeps a step counter next to the weights; the model does not want it.
    weights = {k: v for k, v in weights.items() if k != "n_averaged"}
    if state.get("pruned"):
        restore_structure(model, state["pruned"]["modules"], weights)
    model.load_state_dict(weights)
    return model.to(device, memory_format=runtime.preferred_memory_format(device)).eval()


def restore_structure(model: torch.nn.Module, modules: dict[str, dict], weights: dict[str, torch.Tensor]) -> None:
    """Give a freshly built `model` the layer shapes of a channel-pruned one (see `parvis.prune`).

    `modules` maps module names to the plain attributes pruning changed (in/out channels, num_features,
    ...); every parameter and buffer whose shape differs from `weights` is replaced by an empty one of
    the stored shape, which `load_state_dict` then fills. Only plain values and tensors are involved, so
    pruned checkpoints still load with weights_only=True.
    """
    named = dict(model.named_modules())
    for name, attrs in modules.items():
        if name not in named:
            raise ParvisError(f"pruned checkpoint names a layer {name!r} that {model.meta.name} does not have")
        for attr, value in attrs.items():
            setattr(named[name], attr, value)
    own = model.state_dict()
    for key, tensor in weights.items():
        if key not in own or own[key].shape == tensor.shape:
            continue
        owner, _, leaf = key.rpartition(".")
        module = named[owner]
        empty = torch.empty_like(tensor)
        if leaf in module._parameters:
            module._parameters[leaf] = torch.nn.Parameter(empty, requires_grad=module._parameters[leaf].requires_grad)
        else:
            module._buffers[leaf] = empty


def is_model_name(spec: str) -> bool:
    """A registered name or a zoo name (torchvision:NAME, timm:NAME)."""
    return spec in MODELS or is_zoo_name(spec)


def model_task(spec: str) -> str:
    return zoo_task(spec) if is_zoo_name(spec) else MODELS.info(spec)["task"]


def load_model(
    spec: str | Path,
    device: torch.device | None = None,
    weights: str | Path | None = None,
    given: Preprocess | None = None,
    use_ema: bool = False,
    num_classes: int | None = None,
) -> VisionModel:
    """A PyTorch model in eval mode on `device` from a parvis checkpoint, a registered name or a zoo name.

    `weights` (names only): a local state dict in parvis's, torchvision's or timm's key layout, or
    `default` / a tag for zoo weights already in the hub caches. A zoo name with a file whose
    classifier has another class count than the zoo's takes the file's count (names from `given`).
    Without weights a name builds random weights (`meta.extra["random_init"]` says so).
    """
    device = device or torch.device("cpu")
    spec = str(spec)
    given = given or Preprocess()
    if Path(spec).is_file():
        if weights is not None:
            raise ParvisError(f"{spec}: --weights applies to model names; a checkpoint brings its own weights")
        model = load_trained(spec, device, use_ema=use_ema)
        model.meta = apply_given(model.meta, given)
        return model
    if use_ema:
        raise ParvisError(f"{spec}: --ema applies to parvis checkpoints")
    if not is_model_name(spec):
        if Path(spec).suffix or "/" in spec:
            raise ParvisError(f"{spec}: no such file; check the path")
        raise ParvisError(MODELS._unknown(spec) + "; zoo models are named torchvision:NAME or timm:NAME")
    if given.task is not None and given.task != model_task(spec):
        raise ParvisError(f"--task {given.task} contradicts {spec}'s task {model_task(spec)}; drop --task")
    labels = given.labels
    if num_classes is None and labels is not None:
        num_classes = len(labels)
    if num_classes is None and weights is not None and is_zoo_name(spec):
        num_classes = file_num_classes(resolve_weights(spec, weights), spec)
    model = build_model(
        spec, num_classes, labels, given.size, weights=weights, mean=given.mean, std=given.std,
    )  # fmt: skip
    if weights is None:
        model.meta.extra["random_init"] = True
    for key in ("crop_pct", "interpolation"):
        if getattr(given, key) is not None:
            model.meta.extra[key] = getattr(given, key)
            model.meta.extra.setdefault("provenance", {})[key] = "flag"
    return model.to(device, memory_format=runtime.preferred_memory_format(device)).eval()


def as_checkpoint(
    spec: str | Path, workdir: str | Path, weights: str | Path | None = None, given: Preprocess | None = None
) -> str:
    """`spec` itself when it is a checkpoint file; else the named model (with `weights`, or random weights
    seeded 0) saved once as a parvis checkpoint in `workdir`, so every consumer (export, runtimes,
    candidates) runs the same weights and metadata."""
    if Path(spec).is_file() and weights is None and not (given and given.given()):
        return str(spec)
    torch.manual_seed(0)
    model = load_model(spec, weights=weights, given=given)
    path = Path(workdir) / "model.pt"
    save_checkpoint(path, {"model": model.state_dict(), "meta": model.meta.to_dict()})
    return str(path)
