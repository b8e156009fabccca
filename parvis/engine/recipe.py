"""`recipe=auto`: the learning settings a run needs, chosen from its data and model, each one stated.

    survey = survey_data(cfg)                        # image count, size, channels, classes, balance
    cfg, choices = choose(cfg, survey, device)       # a pure function of (what the user gave, survey, device)
    for c in choices: print(c.line())                # auto: crop_scale [0.6, 1.0] (images are 32 px: ...)

Every key the user gave (a flag, key=value, a --config or --recipe file) is left alone; `auto` fills
the others. `recipe=off` keeps TrainConfig's written defaults. The rules, in one place so the docs
(docs/choices.md) can list them:

- input size: the images' median short side (multiple of 8, at least 32); capped at 128 px on the
  CPU (an epoch in minutes, not hours) and at 224 (classification) / 512 px elsewhere; fine-tuning
  stays at or below the weights' own size.
- stem: parvis resnets from scratch at <= 32 px get the small-input stem (3x3 stride 1, no max-pool,
  CIFAR recipes), which keeps the last stage at 4x4 instead of 1x1.
- augmentation: random-resized crops keep >= 60% of the image in runs under 30 epochs and of small
  (<= 64 px) images, >= 35% up to 100 epochs, ImageNet's 8% beyond; horizontal flips, except on small grey
  images (digits, characters: a mirrored symbol is another symbol); fine-tuning crops keep >= 50%.
- optimizer: AdamW (fastest to a good accuracy in short schedules), lr 2e-3 x sqrt(batch / 32) from
  scratch, 1e-3 fine-tuning with the backbone at 0.5x (0.1x and a frozen first epoch on <= 50 images
  per class); with only an encoder loaded (`weights_backbone`) the new layers at the from-scratch rate
  and the encoder at the fine-tuning fraction, with the fine-tuning epochs and crops; weight decay 0.05
  (classification) or 1e-4;
  label smoothing 0.1 for 3+ classes; warmup 5% of the run (at most one epoch), cosine to 1%.
- gradient clipping: none for classification and segmentation (as the reference recipes), norm 1.0
  for detection.
- epochs: enough to see ~12k training samples (8..40 epochs) from scratch, ~5k (2..10) fine-tuning;
  with `time` the trainer measures its first steps and plans the epochs that fit the budget.
- stream: on an accelerator the shapes data trains on fresh generator scenes each epoch (val stays on
  disk); on the CPU the on-disk split, since rendering takes cores from the model.
- cache: the train split decoded once and kept in RAM at 2x the input size (crops still random every
  epoch) when that takes at most a quarter of free RAM and 4 GB; not for crops down to 8%, which
  need the full image.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from parvis.config import TrainConfig, given_keys
from parvis.data.cache import cache_side
from parvis.data.check import load_config as load_data_config
from parvis.data.check import open_dataset
from parvis.data.datasets import DetectionDataset
from parvis.errors import ParvisError
from parvis.models.zoo import is_zoo_name, zoo_meta
from parvis.registry import MODELS
from parvis.runtime import available_ram_bytes as available_ram

SMALL_IMAGE = 64  # px: at or below, crops stay mild
SMALL_STEM_MAX = 32  # px: at or below, an ImageNet stem leaves the last stage at 1x1
SURVEY_SAMPLE = 64  # images whose headers are read for size and channels
CACHE_MAX_BYTES = 4 << 30  # decoded training images kept in RAM: at most this, and a quarter of what is free


@dataclass
class Choice:
    key: str
    value: Any
    reason: str

    def line(self) -> str:
        """`auto: KEY VALUE (why)`, VALUE spelled as on the command line (none, true, [0.6, 1.0])."""
        value = self.value
        if value is None or isinstance(value, bool):
            value = str(value).lower()
        elif isinstance(value, tuple):
            value = list(value)
        return f"auto: {self.key} {value} ({self.reason})"


@dataclass
class DataSurvey:
    """What `auto` looks at: counts, image size and channels of the train split, and the generator."""

    task: str
    n_train: int
    n_val: int
    class_counts: dict[str, int]
    side: int  # median short side of a sample of training images, px
    grey: bool  # every sampled image is single-channel
    generator: str | None = None  # "shapes" when parvis's generator wrote the data (it can stream)
    pixels: int = 0  # median width x height of the sampled images (0: not measured)

    @property
    def imbalance(self) -> float:
        counts = [c for c in self.class_counts.values() if c > 0]
        return max(counts) / min(counts) if counts else 1.0


def _image_paths(dataset) -> list[Path]:
    if isinstance(dataset, DetectionDataset):
        return [dataset.image_path(i) for i in range(len(dataset))]
    if hasattr(dataset, "pair_paths"):  # stereo: the left views
        return [dataset.pair_paths(i)[0] for i in range(len(dataset))]
    if hasattr(dataset, "paths"):  # inspection
        return list(dataset.paths)
    return [Path(sample[0]) for sample in dataset.samples]


def _class_counts(dataset) -> dict[str, int]:
    classes = list(getattr(dataset, "classes", None) or [])
    if hasattr(dataset, "targets"):  # ImageFolder: one label per image
        counts = Counter(dataset.targets)
        return {name: counts.get(i, 0) for i, name in enumerate(classes)}
    if isinstance(dataset, DetectionDataset):  # objects per class
        counts = dataset.label_counts()
        return {name: counts.get(i, 0) for i, name in enumerate(classes)}
    return {name: 0 for name in classes}  # masks: pixel counts would need every mask read


def survey_data(cfg: TrainConfig) -> DataSurvey:
    """Count the splits and read the headers of up to SURVEY_SAMPLE training images (no decoding)."""
    train = open_dataset(cfg.data, cfg.task, "train")
    try:
        n_val = len(open_dataset(cfg.data, cfg.task, "val"))
    except ParvisError:
        n_val = 0
    paths = _image_paths(train)
    step = max(1, len(paths) // SURVEY_SAMPLE)
    sides, grey, pixels = [], [], []
    for path in paths[::step][:SURVEY_SAMPLE]:
        try:
            with Image.open(path) as im:
                sides.append(min(im.size))
                pixels.append(im.size[0] * im.size[1])
                grey.append(im.mode in ("1", "L", "LA", "I", "I;16", "F"))
        except OSError:
            continue  # a broken file is for the loader's on_bad_sample to report
    data_cfg = load_data_config(cfg.data) or {}
    generator = "shapes" if data_cfg.get("generator") == "parvis.data.synth" else None
    return DataSurvey(
        task=cfg.task,
        n_train=len(train),
        n_val=n_val,
        class_counts=_class_counts(train),
        side=int(statistics.median(sides)) if sides else 224,
        grey=bool(grey) and all(grey),
        generator=generator,
        pixels=int(statistics.median(pixels)) if pixels else 0,
    )


def _round8(px: float) -> int:
    return max(32, int(round(px / 8)) * 8)


def _pretrained_size(cfg: TrainConfig) -> int | None:
    if cfg.weights is None:
        return None
    if is_zoo_name(cfg.model):
        return zoo_meta(cfg.model).input_size
    return 224


def supports_small_stem(model: str) -> bool:
    """A parvis model built with a `stem` option (its registration says small_stem=True)."""
    return model in MODELS and bool(MODELS.info(model).get("small_stem"))


def small_input_stem(size: int, cpu: bool) -> tuple[str, str]:
    """The resnet stem for `size` px inputs: (stem, why). The ImageNet stem divides by 32 in all; at or
    below 64 px that leaves a 2x2 or 1x1 last stage. A GPU affords the stride-1 stem (16x the compute);
    on a CPU the stride-2 one (4x) goes to <= 32 px inputs, where 1x1 would be all that is left."""
    last, s1, s2 = max(1, size // 32), size // 8, size // 16
    imagenet = f"{size} px input: the ImageNet stem would leave the last stage at {last}x{last}"
    if size > SMALL_IMAGE:
        return "imagenet", f"{size} px input leaves the last stage at {last}x{last}"
    if not cpu:
        return "small", f"{imagenet}; 3x3 stride 1 without max-pool keeps {s1}x{s1} (CIFAR recipes)"
    if size <= SMALL_STEM_MAX:
        gpu = f"stem=small: {s1}x{s1} at 16x, for a GPU"
        return "small_s2", f"{imagenet}; a 3x3 stride-2 stem without max-pool keeps {s2}x{s2} at 4x the compute ({gpu})"
    return "imagenet", f"{imagenet}; on the CPU stem=small_s2 ({s2}x{s2}) would cost 4x the compute, stem=small 16x"


def choose(
    cfg: TrainConfig, survey: DataSurvey, device: torch.device, given: frozenset[str] | None = None
) -> tuple[TrainConfig, list[Choice]]:
    """`cfg` with every key `auto` may choose and the user did not give set from `survey`; the choices."""
    given = given_keys(cfg) if given is None else given
    if cfg.recipe == "off":
        return cfg, []
    task, fine_tune = cfg.task, cfg.weights is not None or cfg.weights_backbone is not None
    cpu = device.type == "cpu"
    values: dict[str, Any] = {}
    choices: list[Choice] = []

    def pick(key: str, value: Any, reason: str) -> None:
        if key in given:
            return
        values[key] = value
        choices.append(Choice(key, value, reason))

    def now(key: str) -> Any:
        return values.get(key, getattr(cfg, key))

    if task == "stereo":
        return _choose_stereo(cfg, survey, cpu, pick, now, values, choices)

    # --- input size
    cap = 128 if cpu else (224 if task == "classification" else 512)
    native = _round8(survey.side)
    pretrained = _pretrained_size(cfg)
    if pretrained:
        size = min(pretrained, max(native, 64))
        why = f"images are {survey.side} px, the weights were trained at {pretrained} px"
    else:
        size = min(native, cap)
        why = f"images are {survey.side} px" + (f"; capped at {cap} px on the {device.type}" if native > cap else "")
    pick("size", size, why + "; --size to change")
    size = now("size")

    # --- stem: the last stage's map at this size, against what a smaller stem costs on this device
    if task == "classification" and not fine_tune and supports_small_stem(cfg.model):
        stem, why = small_input_stem(size, cpu)
        pick("stem", stem, why)

    # --- stream: fresh scenes need a renderer's worth of spare loader cores, which a GPU host has
    if survey.generator == "shapes":
        if cpu:
            pick("stream", False, "the on-disk shapes split: on the CPU, rendering scenes in the loader "
                 "takes cores from the model; stream=true renders fresh ones every epoch")  # fmt: skip
        else:
            pick("stream", True, "the shapes generator made this data: fresh scenes every epoch, rendered "
                 "in the loader workers; val stays the on-disk split")  # fmt: skip

    # --- batch: on a CPU throughput hardly grows with the batch, so small batches buy more steps
    if cpu:
        batch = 32 if size <= 128 else 16
    else:
        batch = 256 if size <= SMALL_IMAGE else 64
    if task in ("segmentation", "inspection"):  # a dense loss: half the images give as many labels per step
        batch = max(8, batch // 2)
    fit = max(1, survey.n_train // 8)  # at least ~8 steps per epoch on tiny datasets
    batch = min(batch, 1 << (fit.bit_length() - 1))
    tiny = f"; {survey.n_train} training images" if batch < 8 else ""
    pick("batch", batch, f"{size} px on the {device.type}{tiny}")
    batch = now("batch")

    # --- epochs
    n = max(1, survey.n_train)
    if fine_tune:
        epochs, why = min(10, max(2, math.ceil(5000 / n))), "~5k samples of fine-tuning"
    else:
        epochs, why = min(40, max(8, math.ceil(12000 / n))), "~12k training samples from scratch"
    if cfg.time is not None and "epochs" not in given:
        pick("epochs", epochs, f"provisional: the trainer measures its first steps and plans for time={cfg.time}")
    else:
        pick("epochs", epochs, f"{why} over {survey.n_train} images")
    epochs = now("epochs")

    # --- optimizer, lr, weight decay, schedule
    pick("optimizer", "adamw", "reaches a good accuracy fastest in short schedules")
    lr = round(2e-3 * math.sqrt(now("batch") / 32), 5)
    if cfg.weights is not None:
        pick("lr", 1e-3, "fine-tuning: the new head at 1e-3")
    elif fine_tune:
        pick("lr", lr, f"a loaded encoder, the rest new: the new layers at the from-scratch 2e-3 x sqrt(batch "
             f"{now('batch')} / 32)")  # fmt: skip
    else:
        pick("lr", lr, f"2e-3 x sqrt(batch {now('batch')} / 32)")
    if fine_tune:
        few = n / max(1, len(survey.class_counts)) <= 50
        if few:
            pick("backbone_lr", 0.1, "fine-tuning on few images per class: pretrained layers at 0.1x the head's rate")
        else:
            pick("backbone_lr", 0.5, "fine-tuning on more than 50 images per class: pretrained layers at 0.5x the "
                 "head's rate, enough to adapt to a new domain (0.1x measured 0.955 vs 0.991 top-1 after one "
                 "epoch of mobilenet_v2 on the shapes data)")  # fmt: skip
        why = "hold the backbone for the first epoch while the new head settles" if few else "train every layer"
        pick("freeze", "backbone" if few else "none", f"{n} images for {len(survey.class_counts)} classes: {why}")
    pick("weight_decay", 0.05 if task == "classification" else 1e-4,
         "AdamW's usual decay for classifiers" if task == "classification" else "dense heads: light decay")  # fmt: skip
    if task == "detection":
        pick("clip_grad", 1.0, "detection losses spike on crowded images: clip the gradient norm at 1")
    else:
        pick("clip_grad", None, "none, as torchvision's and timm's recipes: AdamW scales its own steps, and "
             "clipping at 1.0 kept a from-scratch classifier on its loss plateau 2-3x longer")  # fmt: skip
    warmup = round(min(1.0, 0.05 * epochs), 3)
    pick("warmup_epochs", warmup, "5% of the run, at most one epoch")

    # --- augmentation
    if task == "classification":
        classes = len(survey.class_counts)
        pick("label_smoothing", 0.1 if classes >= 3 else 0.0, f"{classes} classes")
    if task in ("classification", "segmentation"):
        if fine_tune:
            scale, why = (0.5, 1.0), "fine-tuning: pretrained features need the object in view"
        elif survey.side <= SMALL_IMAGE:
            scale, why = (0.6, 1.0), f"images are {survey.side} px: crops keep at least 60% of them"
        elif epochs >= 100:
            scale, why = (0.08, 1.0), f"{epochs} epochs: ImageNet's range"
        elif epochs >= 30:
            scale, why = (0.35, 1.0), f"{epochs} epochs: milder than ImageNet's 8%, which pays only in long runs"
        else:
            scale, why = (
                (0.6, 1.0),
                f"{epochs} epochs: crops keep at least 60% of the image (strong crops pay only in long runs)",
            )  # noqa: E501
        pick("crop_scale", scale, why)
        if survey.grey and survey.side <= SMALL_IMAGE:
            pick("hflip", False, f"small grey images ({survey.side} px, like digits or characters): a mirrored "
                 "symbol can be another symbol")  # fmt: skip
        else:
            pick("hflip", True, "mirrored scenes keep their labels")
    # --- cache: decode once when the decoded split fits comfortably in RAM (and is not streamed)
    if not now("stream"):
        side = cache_side(task, size, survey.side)
        need = int(survey.n_train * side * side * (1 if survey.grey else 3) * 4 / 3)  # 4/3: non-square images
        # Under torchrun every local process keeps its own copy: they share the quarter of free RAM.
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
        budget = min(CACHE_MAX_BYTES, available_ram() // 4 // local)
        scale = now("crop_scale")
        if scale is not None and task != "detection" and scale[0] < 0.25:  # reads more than 2x size px
            pick("cache", "none", f"crops down to {scale[0]:.0%} of the image need it at full resolution: decoded "
                 "every epoch")  # fmt: skip
        elif need <= budget:
            pick("cache", "ram", f"{survey.n_train:,} images decoded once at {side} px ({need / 2**20:,.0f} MB of "
                 f"{budget / 2**20:,.0f} MB allowed), not every epoch")  # fmt: skip
        else:
            pick("cache", "none", f"{survey.n_train:,} images at {side} px need {need / 2**30:.1f} GB, over "
                 f"{budget / 2**30:.1f} GB (a quarter of free RAM per node, at most 4 GB): decoded "
                 "every epoch")  # fmt: skip
    if survey.imbalance >= 3:
        choices.append(Choice("class balance", f"{survey.imbalance:.1f}:1", "imbalanced; top-1 is reported with "
                              "per-class accuracy in parvis eval"))  # fmt: skip
    return dataclasses.replace(cfg, **values), choices


def _choose_stereo(cfg, survey, cpu, pick, now, values, choices):
    """Stereo: crops of the pairs at their own scale (resizing would rescale disparity), AdamW."""
    size = min(64 if cpu else 128, _round8(survey.side))
    pick("size", size, f"crops of {size} x {2 * size} px from {survey.side} px pairs (no resize: disparity keeps "
         f"its pixels){'; small crops keep a CPU epoch short' if cpu else ''}; --size to change")  # fmt: skip
    pick("batch", 8 if cpu else 32, f"{now('size')} x {2 * now('size')} px crops on the {'cpu' if cpu else 'gpu'}")
    n = max(1, survey.n_train)
    epochs = min(60, max(8, math.ceil(12000 / n)))
    if cfg.time is not None and "epochs" not in given_keys(cfg):
        pick("epochs", epochs, f"provisional: the trainer measures its first steps and plans for time={cfg.time}")
    else:
        pick("epochs", epochs, f"~12k training crops over {survey.n_train} pairs")
    if cpu:
        pick("eval_every", 4, "every 4th epoch and the last: scoring the val pairs at full resolution costs a "
             "quarter of a CPU epoch")  # fmt: skip
    pick("optimizer", "adamw", "reaches a good accuracy fastest in short schedules")
    pick("lr", 2e-3, "AdamW at 2e-3; StereoNet-class networks train at 1e-3..4e-3")
    pick("weight_decay", 1e-4, "dense heads: light decay")
    pick("clip_grad", None, "none: the smooth-L1 disparity loss is bounded per pixel")
    pick("warmup_epochs", round(min(1.0, 0.05 * now("epochs")), 3), "5% of the run, at most one epoch")
    pick("hflip", False, "no horizontal flips: a mirrored pair would need its views swapped and the right view's "
         "disparity; vertical flips and per-view photometric jitter instead")  # fmt: skip
    # A decoded pair is both views (uint8) and its disparity (float32): 10 bytes per pixel, at full size.
    need = survey.n_train * (survey.pixels or 2 * survey.side**2) * 10
    budget = min(CACHE_MAX_BYTES, available_ram() // 4 // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
    if need <= budget:
        pick(
            "cache",
            "ram",
            f"{survey.n_train:,} pairs decoded once ({need / 2**20:,.0f} MB of "
            f"{budget / 2**20:,.0f} MB allowed): three PNGs a pair every epoch take a core from the model",
        )
    else:
        pick("cache", "none", f"{survey.n_train:,} pairs need {need / 2**30:.1f} GB decoded, over "
             f"{budget / 2**30:.1f} GB (a quarter of free RAM per node, at most 4 GB): decoded each epoch")  # fmt: skip
    return dataclasses.replace(cfg, **values), choices


def resolve_recipe(cfg: TrainConfig, device: torch.device) -> tuple[TrainConfig, list[Choice]]:
    """`choose` on this run's data; the resolved config keeps which keys the user gave."""
    if cfg.recipe == "off":
        return cfg, []
    if cfg.recipe != "auto":
        raise ParvisError(f"recipe={cfg.recipe!r}: use auto, off, or --recipe FILE (a YAML of TrainConfig keys)")
    given = given_keys(cfg)
    resolved, choices = choose(cfg, survey_data(cfg), device, given)
    object.__setattr__(resolved, "_given", given)
    return resolved, choices
