"""Typed, strict configs: dataclass defaults, a YAML file, then command-line values, in that order.

Any flat dataclass works with :func:`load_config`. Every key is checked against the dataclass fields
(an unknown key is an error with a "did you mean" suggestion) and every value against the field's
type hint, so a typo or a wrong type ends in one line naming the key, the expected type, the bad value
and where it came from, instead of a silently ignored setting or a crash deep inside training.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from parvis.errors import ParvisError
from parvis.io import atomic_write_text

T = TypeVar("T")

COMMAND_LINE = "command line"
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")
_NONE = ("none", "null", "~")


class ConfigValueError(ParvisError):
    """A value that does not fit its key; `key` lets :func:`load_config` add where the value came from."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"{key}: {message}")


# --------------------------------------------------------------------------- the training config


@dataclass
class TrainConfig:
    """What a training run needs; each field is a key of the YAML recipes and of key=value overrides."""

    task: Literal["classification", "segmentation", "detection", "stereo", "inspection"] = (
        "classification"  # what the model predicts
    )
    model: str = "resnet18"  # registered model name, or torchvision:NAME / timm:NAME
    data: str = "data/shapes"  # dataset folder (a dataset.yaml layout, ImageFolder, or images + masks)
    epochs: int = 10  # passes over the training split
    size: int = 128  # input side in pixels (training crops and evaluation resize)
    batch: int = 32  # images per optimizer step per process, before gradient accumulation
    lr: float = 1e-3  # peak learning rate (scaled by nothing; the user's number is used as is)
    weight_decay: float = 0.05  # decoupled (adamw) or L2 (sgd) weight decay
    optimizer: Literal["adamw", "sgd"] = "adamw"  # optimizer family
    momentum: float = 0.9  # sgd momentum (unused by adamw)
    warmup_epochs: float = 1.0  # linear warmup length, in epochs (fractions allowed)
    min_lr_ratio: float = 0.01  # cosine decays to lr * min_lr_ratio
    grad_accum: int = 1  # batches whose gradients are summed before each optimizer step
    clip_grad: float | None = 1.0  # max global gradient norm; None: no clipping
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    ema: bool = False  # keep an exponential moving average of the weights and evaluate it
    ema_decay: float = 0.999  # EMA decay per optimizer step
    precision: Literal["auto", "fp32", "tf32", "bf16", "fp16"] = "auto"  # compute precision (auto: runtime policy)
    channels_last: Literal["auto", "on", "off"] = "auto"  # memory format (auto: what the device prefers)
    compile: bool = False  # torch.compile the model
    grad_checkpointing: bool = False  # recompute activations in backward to save memory
    on_bad_sample: Literal["error", "skip"] = "error"  # what a broken image or mask does: stop, or skip it
    deterministic: bool = False  # deterministic kernels (slower), for bit-reproducible runs
    seed: int = 0  # seed for python, numpy and torch
    workers: int | None = None  # None: runtime's recommendation
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:N" or "mps"
    out: str = "runs/train"  # run folder: checkpoints, resolved config, metrics
    strategy: Literal["ddp", "fsdp"] = "ddp"  # data-parallel strategy under torchrun
    sync_bn: bool = False  # synchronize batch-norm statistics across processes
    weights: str | None = None  # weights to start from (not a resume): parvis/torchvision/timm state dict or checkpoint
    weights_backbone: str | None = None  # only the encoder from this parvis checkpoint (e.g. a segmenter's)
    eval_every: int = 1  # evaluate every N epochs
    scales: tuple[float, ...] = (0.5, 1.0)  # HMSA inference scales (add 2.0 for objects small in the frame)
    crop_scale: tuple[float, ...] | None = None  # training crop area range [min, max] (none: the task's preset)
    max_steps: int | None = None  # stop after this many optimizer steps (smoke tests / benchmarks)
    # The recipe: `auto` chooses every key below and the learning keys above (size, batch, lr,
    # weight_decay, optimizer, warmup_epochs, label_smoothing, crop_scale, epochs) that the user did
    # not give, from the data and the model, and prints one `auto:` line per choice; `off` keeps the
    # defaults as written here.
    recipe: str = "auto"  # auto | off (a recipe FILE is read like --config, its keys count as given)
    time: str | None = None  # wall-clock budget for the run, e.g. 90s, 5m, 1h: auto plans epochs to fit it
    hflip: bool = True  # random horizontal flips in training (classification, segmentation)
    stem: Literal["imagenet", "small", "small_s2"] = "imagenet"  # parvis resnets: small = 3x3 stride 1, no max-pool
    stream: bool = False  # shapes data: train on fresh generator scenes every epoch (val stays on disk)
    cache: Literal["none", "ram"] = "none"  # ram: decode the train split once at 2x size and keep it (not with stream)
    freeze: Literal["none", "backbone"] = "none"  # backbone: hold pretrained layers still for freeze_epochs
    freeze_epochs: float = 1.0  # epochs the backbone stays frozen when freeze=backbone
    backbone_lr: float = 1.0  # backbone learning rate as a fraction of lr (fine-tuning: 0.1)
    log: str = "files"  # where epochs are logged: files (metrics.csv/.jsonl, always), tensorboard, mlflow
    mode: Literal["supervised", "anomaly"] = "supervised"  # inspection: learn from defect examples, or good parts only
    max_false_reject: float = 0.01  # inspection: the OK/NG threshold rejects at most this share of val's good parts
    min_recall: float | None = None  # inspection: instead, the threshold catches at least this share of val's defects
    coreset: float = 0.01  # inspection anomaly mode: memory-bank rows as a share of the good parts' patches
    layers: tuple[str, ...] | None = None  # inspection anomaly mode: backbone layers (none: last at stride 8 and 16)

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, "epochs", "at least 1", self.epochs)
        _require(self.size >= 16, "size", "at least 16", self.size)
        _require(self.batch >= 1, "batch", "at least 1", self.batch)
        _require(self.lr > 0, "lr", "greater than 0", self.lr)
        _require(self.grad_accum >= 1, "grad_accum", "at least 1", self.grad_accum)
        _require(0 <= self.label_smoothing < 1, "label_smoothing", "in [0, 1)", self.label_smoothing)
        _require(0 < self.ema_decay < 1, "ema_decay", "in (0, 1)", self.ema_decay)
        _require(self.clip_grad is None or self.clip_grad > 0, "clip_grad", "greater than 0 or none", self.clip_grad)
        _require(
            self.crop_scale is None
            or (len(self.crop_scale) == 2 and 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1),
            "crop_scale",
            "two fractions 0 < min <= max <= 1, e.g. [0.5, 1.0], or none",
            self.crop_scale,
        )
        _require(self.workers is None or self.workers >= 0, "workers", "at least 0 or none", self.workers)
        _require(self.freeze_epochs >= 0, "freeze_epochs", "at least 0", self.freeze_epochs)
        _require(0 <= self.backbone_lr <= 1, "backbone_lr", "in [0, 1]", self.backbone_lr)
        _require(
            self.weights is None or self.weights_backbone is None, "weights_backbone",
            "left out when weights is given (weights loads the whole model)", self.weights_backbone,
        )  # fmt: skip
        if self.time is not None:
            parse_duration(self.time, "time")
        _require(0 <= self.max_false_reject < 1, "max_false_reject", "in [0, 1), e.g. 0.01", self.max_false_reject)
        _require(
            self.min_recall is None or 0 < self.min_recall <= 1, "min_recall", "in (0, 1] or none", self.min_recall
        )
        _require(0 < self.coreset <= 1, "coreset", "in (0, 1], e.g. 0.01", self.coreset)


def parse_duration(text: str, key: str = "time") -> float:
    """Seconds in "90", "90s", "5m", "1.5h" or "1h30m"; a ConfigValueError naming `key` otherwise."""
    spec = str(text).strip().lower()
    parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?", spec)
    if not spec or parts is None or not any(parts.groups()):
        raise ConfigValueError(key, f"must be a duration such as 90s, 5m or 1h, got {text!r}")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in parts.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise ConfigValueError(key, f"must be a positive duration such as 90s, 5m or 1h, got {text!r}")
    return total


def _require(ok: bool, key: str, rule: str, value: Any) -> None:
    if not ok:
        raise ConfigValueError(key, f"must be {rule}, got {value!r}")


# --------------------------------------------------------------------------- loading


def load_config(
    cls: type[T],
    yaml_path: str | Path | Sequence[str | Path] | None = None,
    overrides: Sequence[str] = (),
    values: Mapping[str, Any] | None = None,
) -> T:
    """Build `cls` from its defaults, then `yaml_path` (one file or several, later ones win), then
    `values`, then `overrides` ("key=value").

    `values` holds already-typed values, e.g. the argparse flags the user actually set; `overrides`
    are strings coerced to each field's type. A later source wins over an earlier one.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"load_config needs a dataclass, got {cls!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}

    chosen: dict[str, Any] = {}
    source_of: dict[str, str] = {}

    def take(items: Mapping[Any, Any], source: str) -> None:
        for key, value in items.items():
            name = str(key)
            if name not in fields:
                raise ParvisError(f"unknown key {name!r} (from {source}); {_suggest(name, fields)}")
            chosen[name] = _convert(value, fields[name], name, source)
            source_of[name] = source

    paths = [yaml_path] if isinstance(yaml_path, (str, Path)) else list(yaml_path or ())
    for path in paths:
        take(_read_yaml(Path(path)), str(path))
    if values:
        take(values, COMMAND_LINE)
    take(_parse_overrides(overrides), COMMAND_LINE)

    try:
        cfg = cls(**chosen)
    except ConfigValueError as exc:
        if exc.key in source_of:
            raise ParvisError(f"{exc} (from {source_of[exc.key]})") from None
        raise
    # Which keys a source set (even to the default value): what `recipe=auto` must leave alone.
    object.__setattr__(cfg, "_given", frozenset(chosen))
    return cfg


def given_keys(cfg: Any) -> frozenset[str]:
    """The keys of `cfg` some source set: those load_config saw, or for a config built in Python,
    the keys whose value differs from the default."""
    given = getattr(cfg, "_given", None)
    if given is not None:
        return given
    return frozenset(
        f.name
        for f in dataclasses.fields(cfg)
        if f.init and f.default is not dataclasses.MISSING and getattr(cfg, f.name) != f.default
    )


def _read_yaml(path: Path) -> Mapping[Any, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParvisError(f"config file {path} not found; check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ParvisError(f"cannot read config file {path}: {reason}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ParvisError(f"config file {path} is not valid YAML: {problem}{where}") from None
    if data is None:  # an empty file: every default stands
        return {}
    if not isinstance(data, dict):
        raise ParvisError(f"config file {path} must be a mapping of key: value lines, got a {type(data).__name__}")
    return data


def _parse_overrides(overrides: Sequence[str]) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ParvisError(f"override {item!r} (from {COMMAND_LINE}) is not key=value, e.g. lr=0.001")
        # Flags are spelled with dashes on the command line; accept that spelling for keys too.
        parsed[key.replace("-", "_")] = value.strip()
    return parsed


def _suggest(name: str, fields: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(name, list(fields), n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]!r}?"
    return "valid keys: " + ", ".join(fields)


# --------------------------------------------------------------------------- type coercion


class _Mismatch(Exception):
    """Raised inside _coerce; _convert turns it into one message naming key, type, value and source."""


def _convert(value: Any, tp: Any, key: str, source: str) -> Any:
    try:
        return _coerce(value, tp)
    except _Mismatch:
        raise ParvisError(f"{key}: expected {_describe(tp)}, got {value!r} (from {source})") from None


def _coerce(value: Any, tp: Any) -> Any:
    """`value` as type `tp`. Strings are parsed (command line, or YAML such as `1e-3`, which YAML reads as text)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in _NONE)):
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg)
            except _Mismatch:
                pass
        raise _Mismatch
    if origin is Literal:
        for choice in args:
            if value == choice and type(value) is type(choice):
                return choice
            if isinstance(value, str) and isinstance(choice, str) and value.lower() == choice.lower():
                return choice
        raise _Mismatch
    if origin in (tuple, list):
        items = _split_list(value)
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(items) != len(args):
                raise _Mismatch
            return tuple(_coerce(item, arg) for item, arg in zip(items, args, strict=True))
        element = args[0] if args else Any
        converted = [_coerce(item, element) for item in items]
        return tuple(converted) if origin is tuple else converted
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    raise TypeError(f"config fields of type {tp!r} are not supported")


def _split_list(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        text = value.strip()
        if text[:1] in "[(" and text[-1:] in "])":
            text = text[1:-1]
        return [part.strip() for part in text.split(",") if part.strip()]
    raise _Mismatch


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        parts = [_describe(arg) for arg in args if arg is not type(None)]
        return " or ".join(parts) + (" or none" if type(None) in args else "")
    if origin is Literal:
        return "one of " + ", ".join(repr(choice) for choice in args)
    if origin in (tuple, list):
        element = args[0] if args else Any
        plural = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}.get(element, "values")
        return f"a list of {plural} (e.g. 1,2,3)"
    return {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
    }.get(tp, getattr(tp, "__name__", str(tp)))


# --------------------------------------------------------------------------- saving


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain JSON/YAML types (tuples become lists)."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"config_to_dict needs a dataclass instance, got {cfg!r}")
    return {f.name: _plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def save_config(cfg: Any, path: str | Path, comments: Sequence[str] = ()) -> Path:
    """Write the resolved config as YAML (atomically); :func:`load_config` reads it back to an equal config.
    `comments` go first, one `# ` line each (e.g. why recipe=auto chose each value)."""
    head = "".join(f"# {line}\n" for line in comments)
    text = head + yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)
    return atomic_write_text(path, text)
