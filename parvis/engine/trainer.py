"""The training engine: small `build_*` functions make the parts, :class:`Trainer` runs the step loop.

    trainer = build_trainer(cfg)                            # the parts `cfg` describes (what `train` does)
    trainer = Trainer(model, loaders, optimizer, cfg=cfg)   # or parts of your own (detectron2's SimpleTrainer)
    trainer.fit()

The loop is fetch -> autocast forward -> backward (scaled if fp16) -> clip -> step -> schedule ->
log; evaluation, checkpoints, metrics files and the progress display are hooks called at a few
fixed points. Hardware decisions (device, precision, memory format, workers, collective backend)
come from `runtime`; data comes through the `DevicePrefetcher`, which also measures data wait.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader

from parvis import runtime
from parvis.config import TrainConfig, config_to_dict, given_keys, load_config, parse_duration, save_config
from parvis.data.cache import DecodedCache, cache_side
from parvis.data.check import load_config as load_data_config
from parvis.data.check import open_dataset
from parvis.data.loader import DevicePrefetcher, build_loader, set_epoch
from parvis.data.stream import ShapesStream
from parvis.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transform
from parvis.engine.checkpoint import CheckpointManager, capture_rng_state, load_checkpoint, restore_rng_state
from parvis.engine.evaluate import _unwrap, evaluate
from parvis.engine.hooks import (
    CheckpointHook,
    EvalHook,
    Hook,
    MetricsFileHook,
    ProgressHook,
    TimeBudgetHook,
    logger_hooks,
)
from parvis.engine.inspection import calibrate_checkpoint, fit_anomaly, wrap_segmenter
from parvis.engine.loading import model_task as model_task_of
from parvis.engine.recipe import Choice, resolve_recipe, supports_small_stem
from parvis.errors import ParvisError
from parvis.models import VisionModel
from parvis.models import build_model as build_named_model
from parvis.models.build import ENCODER_PREFIX, load_backbone
from parvis.models.inspection import INSPECTION_CLASSES

# The validation metric that picks best.pt, per task: higher is better, except the tasks in LOWER_IS_BETTER.
MONITOR = {"classification": "top1", "segmentation": "miou", "detection": "map50", "stereo": "epe", "inspection": "pro"}
LOWER_IS_BETTER = {"stereo"}
# The model a task trains when the user names none (TrainConfig's written default is the classifier's).
TASK_MODELS = {
    "classification": "resnet18",
    "segmentation": "unet_small",
    "detection": "centernet_small",
    "stereo": "stereonet_small",
    "inspection": "unet_small",  # the supervised mode's segmenter; the anomaly mode's backbone is ANOMALY_BACKBONE
}
ANOMALY_BACKBONE = "mobilenet_v2"


class NonFiniteLoss(ParvisError):
    exit_code = 3


def head_parameter_names(model: nn.Module) -> set[str]:
    """The parameters of a model's output layer: those `parvis train` replaced for new classes, else
    the last Linear / Conv2d whose output size is the class count (what fine-tuning trains fastest)."""
    inner = _unwrap(model)
    replaced = inner.meta.extra.get("head_replaced")
    loaded = getattr(inner, "backbone_names", None)
    if loaded is not None:  # --weights-backbone: everything it did not load is new and learns at the full rate
        return {name for name, _ in inner.named_parameters() if name not in loaded}
    if replaced:
        owners = {name.rpartition(".")[0] for name in replaced}
    else:
        n = inner.meta.num_classes
        outputs = [
            name for name, m in inner.named_modules()
            if (isinstance(m, nn.Linear) and m.out_features == n) or (isinstance(m, nn.Conv2d) and m.out_channels == n)
        ]  # fmt: skip
        owners = set(outputs[-1:])
    return {name for name, _ in inner.named_parameters() if name.rpartition(".")[0] in owners}


def _param_groups(model: nn.Module, weight_decay: float, lr: float, backbone_lr: float = 1.0) -> list[dict]:
    """No weight decay on biases and normalization weights (1-d tensors), as timm and torchvision do;
    with backbone_lr < 1 (fine-tuning) everything but the head learns at lr * backbone_lr. Each group
    says whether it is the backbone (for freeze=backbone)."""
    head = head_parameter_names(model) if backbone_lr < 1 else None
    inner = _unwrap(model)
    names = {id(p): name for name, p in inner.named_parameters()}
    groups: dict[tuple[bool, bool], list] = {}
    for p in model.parameters():
        if p.requires_grad:
            backbone = head is not None and names.get(id(p), "") not in head
            groups.setdefault((backbone, p.ndim <= 1), []).append(p)
    return [
        {"params": params, "weight_decay": 0.0 if flat else weight_decay, "lr": lr * (backbone_lr if backbone else 1.0),
         "backbone": backbone}
        for (backbone, flat), params in sorted(groups.items())
    ]  # fmt: skip


class CosineSchedule:
    """LR multiplier per optimizer step: linear warmup from ~0, then cosine down to min_ratio; held
    at 0 for the first `hold` steps (a frozen backbone). A callable object, so LambdaLR's state dict
    carries `total` (which a time budget re-plans) and a resumed run continues the same curve."""

    def __init__(self, total: int, warmup: int, min_ratio: float, hold: int = 0):
        self.total, self.warmup, self.min_ratio, self.hold = total, warmup, min_ratio, hold

    def __call__(self, step: int) -> float:
        step -= self.hold
        if step < 0:
            return 0.0
        if step < self.warmup:
            return (step + 1) / self.warmup
        span = self.total - self.hold - self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, span))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def apply_gradients(optimizer, scaler, parameters, clip_grad: float | None) -> None:
    """Unscale (fp16), clip, step and clear: the end of every training step, with or without a GradScaler."""
    if scaler:
        scaler.unscale_(optimizer)
    if clip_grad:
        torch.nn.utils.clip_grad_norm_(parameters, clip_grad)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


class Loaders(NamedTuple):
    """What a Trainer draws batches from (`parvis.data.loader.Batch`es, as `build_loader` makes them):
    `train` for the steps, `val` for evaluation (None: the run is not evaluated)."""

    train: DataLoader
    val: DataLoader | None = None


def memory_format_for(cfg: TrainConfig, device: torch.device) -> torch.memory_format:
    return {
        "auto": runtime.preferred_memory_format(device),
        "on": torch.channels_last,
        "off": torch.contiguous_format,
    }[cfg.channels_last]


def check_model_task(cfg: TrainConfig) -> None:
    """Fail before any work when `cfg.model` is unknown or made for another task than `cfg.task`."""
    model_task = model_task_of(cfg.model)  # an unknown name fails here, listing the registered ones
    if cfg.task == "inspection":  # the supervised mode trains a segmenter with two classes (good, defect)
        if model_task != "segmentation":
            raise ParvisError(
                f"--model {cfg.model} is a {model_task} model; --mode supervised trains a segmentation model "
                f"(e.g. unet_small), --mode anomaly takes a backbone"
            )
        return
    if model_task != cfg.task:
        raise ParvisError(
            f"--model {cfg.model} is a {model_task} model but --task is {cfg.task}; "
            f"pass --task {model_task} or a {cfg.task} model"
        )


def build_loaders(cfg: TrainConfig, dist: runtime.DistInfo) -> Loaders:
    """The train and val splits of `cfg.data` with the task's presets; workers normalize on the CPU, the
    device does it on CUDA."""
    task, size = cfg.task, cfg.size
    kw = {"on_bad_sample": cfg.on_bad_sample}
    train_tf = build_transform(task, True, size, cfg.crop_scale, hflip=cfg.hflip)
    train_set = open_dataset(cfg.data, task, "train", transform=train_tf, **kw)
    if cfg.stream:
        if (load_data_config(cfg.data) or {}).get("generator") != "parvis.data.synth":
            raise ParvisError(
                f"stream=true: {cfg.data} was not made by `parvis data synth` (its dataset.yaml names no "
                "generator); only the shapes data can stream. Drop stream=true"
            )
        # Fresh scenes, as many per epoch as the on-disk train split holds; val stays on disk.
        disk = int((load_data_config(cfg.data) or {}).get("image_size", 2 * size))
        train_set = ShapesStream(task, len(train_set), min(disk, 2 * size), seed=cfg.seed, transform=train_tf)
    elif cfg.cache == "ram":
        train_set = DecodedCache(train_set, cache_side(task, size))
    val_set = open_dataset(cfg.data, task, "val", transform=build_transform(task, False, size), **kw)
    loader_kw = {"device": dist.device, "workers": cfg.workers, "dist": dist, "seed": cfg.seed}
    if task == "stereo":  # (6, H, W) pairs: both views normalized like the models' meta (make_meta)
        loader_kw["mean"], loader_kw["std"] = IMAGENET_MEAN * 2, IMAGENET_STD * 2
    if cfg.deterministic:
        # Persistent workers keep their RNG across epochs, so a resumed run would augment differently.
        loader_kw["persistent"] = False
    train = build_loader(train_set, cfg.batch, train=True, **loader_kw)
    if len(train) == 0:
        raise ParvisError(
            f"{cfg.data}: the train split has {len(train_set)} images, fewer than one batch of {cfg.batch} "
            f"per process; lower --batch"
        )
    return Loaders(train, build_loader(val_set, cfg.batch, train=False, **loader_kw))


def build_model(cfg: TrainConfig, class_names: list[str], dist: runtime.DistInfo) -> VisionModel:
    """`cfg.model` (registered or zoo name) for `class_names`, from `cfg.weights` when given."""
    # Fine-tuning: a pretrained classifier whose head does not fit these classes gets a new one.
    options = {}
    if cfg.task == "stereo":  # the cost volume spans the data's disparity range
        max_disp = (load_data_config(cfg.data) or {}).get("max_disp")
        if max_disp:
            options["max_disp"] = int(max_disp)
    if cfg.stem != "imagenet":
        if not supports_small_stem(cfg.model):
            raise ParvisError(
                f"stem={cfg.stem}: {cfg.model} has no stem option; it applies to parvis's resnet18/34/50 from scratch"
            )
        options["stem"] = cfg.stem
    model = build_named_model(
        cfg.model, len(class_names), class_names, input_size=cfg.size, weights=cfg.weights, replace_head=True,
        **options,
    )  # fmt: skip
    loaded: set[int] = set()
    if cfg.weights_backbone:
        names = load_backbone(model, cfg.weights_backbone)
        loaded = {id(p) for n, p in model.named_parameters() if n in names}
        if dist.rank == 0:
            encoder = [k for k in model.state_dict() if k.startswith(ENCODER_PREFIX)]
            print(f"{cfg.weights_backbone}: loaded {len(names)} of the {len(encoder)} encoder tensors of "
                  f"{cfg.model}; the rest of the model starts fresh", flush=True)  # fmt: skip
    if cfg.task == "inspection":  # a two-class segmenter whose defect probability is the anomaly map
        model = wrap_segmenter(model, cfg.size)
    if cfg.weights_backbone:  # the loaded parameters by their names in the (wrapped) model: the lr groups
        model.backbone_names = {n for n, p in model.named_parameters() if id(p) in loaded}
        model.meta.extra["weights_backbone"] = str(cfg.weights_backbone)
    replaced = model.meta.extra.get("head_replaced")
    if replaced and dist.rank == 0:
        print(f"{cfg.weights}: the classifier head ({', '.join(replaced)}) does not fit {len(class_names)} "
              f"classes; replaced it with a new one (random init) for {class_names}", flush=True)  # fmt: skip
    focal_baseline = (load_data_config(cfg.data) or {}).get("focal_baseline") if cfg.task == "stereo" else None
    if focal_baseline:  # the camera's focal length (px) x baseline (m): depth in metres downstream
        model.meta.extra["focal_baseline"] = float(focal_baseline)
    if cfg.model.startswith("hmsa_"):
        model.set_scales(cfg.scales)
    # The trained model is evaluated as training validated it (the task's eval preset at cfg.size),
    # not with a zoo's own crop ratio: eval, predict and serve then score what best.pt was picked by.
    prov = model.meta.extra.get("provenance")
    for key in ("crop_pct", "interpolation"):
        if model.meta.extra.pop(key, None) is not None and prov is not None:
            prov[key] = "parvis train (the task's eval preset)"
    return model


def prepare_model(model: VisionModel, cfg: TrainConfig, dist: runtime.DistInfo) -> nn.Module:
    """The model as the loop runs it: gradient checkpointing, on the device in the memory format,
    SyncBN, then the parallel wrapper (DDP or FSDP2) and torch.compile, as `cfg` asks."""
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    fsdp = dist.enabled and cfg.strategy == "fsdp"
    # FSDP2 shards flat, contiguous parameters only; under it, inputs stay channels-last but the
    # weights keep the default layout.
    layout = torch.contiguous_format if fsdp else memory_format_for(cfg, dist.device)
    model = model.to(dist.device, memory_format=layout)
    if cfg.sync_bn and dist.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if fsdp:
        from torch.distributed.fsdp import fully_shard  # noqa: PLC0415 - torch.distributed piece, FSDP runs only

        # Shard the largest modules that the forward actually calls, then the root: each one's
        # parameters are gathered just before it runs and freed after, so peak memory is one block,
        # not the model. A module the forward never calls (torchvision's ResNet kept whole under
        # `net` while parvis calls its layers) would keep sharded DTensor weights; the root gathers
        # whatever no sharded block owns.
        for block in fsdp_units(model, dist.device):
            fully_shard(block)
        model = fully_shard(model)
    elif dist.enabled:
        ids = [dist.device.index] if dist.device.type == "cuda" else None
        model = DDP(model, device_ids=ids)
    if cfg.compile:
        model = torch.compile(model)
    return model


def fsdp_units(model: VisionModel, device: torch.device, min_fraction: float = 0.02) -> list[nn.Module]:
    """The modules FSDP2 shards one by one: walking down from the root, the first modules a forward
    pass calls that hold at least `min_fraction` of the trainable parameters (found by one forward of
    a dummy batch with call hooks)."""
    called: set[int] = set()
    handles = [m.register_forward_pre_hook(lambda mod, _: called.add(id(mod))) for m in model.modules()]
    size = min(int(model.meta.input_size), 128)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            # a stereo model takes a pair: 6 channels, twice as wide
            shape = (6, size, 2 * size) if model.meta.task == "stereo" else (3, size, size)
            model(torch.zeros(1, *shape, device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    total = sum(p.numel() for p in model.parameters() if p.requires_grad) or 1
    units: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        for child in module.children():
            own = sum(p.numel() for p in child.parameters() if p.requires_grad)
            if own / total < min_fraction:
                continue
            if id(child) in called:
                units.append(child)
            else:
                visit(child)

    visit(model)
    return units


def build_optimizer(cfg: TrainConfig, model: nn.Module, dist: runtime.DistInfo) -> torch.optim.Optimizer:
    """AdamW (or SGD with Nesterov momentum) over the prepared model's parameters."""
    backbone_lr = cfg.backbone_lr if cfg.weights or cfg.weights_backbone else 1.0
    groups = _param_groups(model, cfg.weight_decay, cfg.lr, backbone_lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    # fused AdamW is a single kernel per step on CUDA; foreach elsewhere.
    fused = dist.device.type == "cuda" and not dist.enabled or None
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused)


def total_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    total = steps_per_epoch * cfg.epochs
    return min(total, cfg.max_steps) if cfg.max_steps else total


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """Linear warmup for `cfg.warmup_epochs`, then cosine down to `cfg.min_lr_ratio`, per optimizer step."""
    total = total_steps(cfg, steps_per_epoch)
    warmup = min(total, max(1, round(cfg.warmup_epochs * steps_per_epoch)))
    hold = round(cfg.freeze_epochs * steps_per_epoch) if cfg.freeze == "backbone" else 0
    # freeze=backbone: the backbone's groups wait `hold` steps, then warm up and decay with the head
    # (LR 0 rather than requires_grad=False, so DDP and FSDP see the same parameters throughout).
    lambdas = [
        CosineSchedule(total, warmup, cfg.min_lr_ratio, hold if group.get("backbone") else 0)
        for group in optimizer.param_groups
    ]  # fmt: skip
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)


class Trainer:
    """The step loop over built parts (see `build_trainer` for the ones `cfg` describes).

    `model`: a VisionModel on its device, possibly wrapped (`prepare_model`); `loaders`: `Loaders`;
    `optimizer` over the model's parameters; `scheduler`: `cfg`'s warmup + cosine unless given. `cfg`
    holds the loop's settings (epochs, grad_accum, clip_grad, label_smoothing, ema, max_steps,
    eval_every, precision, out). `dist` and `precision` default to what `cfg.device` and
    `cfg.precision` resolve to. A model handed in saves only its state dict in checkpoints, so a
    caller whose model cannot be rebuilt by name (a pruned one) saves its own.
    """

    def __init__(
        self,
        model: nn.Module,
        loaders: Loaders,
        optimizer: torch.optim.Optimizer,
        *,
        cfg: TrainConfig,
        scheduler=None,
        dist: runtime.DistInfo | None = None,
        precision: runtime.Precision | None = None,
        hooks: list[Hook] | None = None,
        quiet: bool = False,
        resume: bool | dict = False,
        choices: list[Choice] | None = None,
    ):
        self.cfg = cfg
        self.choices = list(choices or [])  # what recipe=auto chose, for config.yaml and the loggers
        self.dist = dist or runtime.init_distributed(cfg.device)
        self.device = self.dist.device
        self.precision = precision or runtime.resolve_precision(cfg.precision, self.device, "train")
        runtime.apply_precision(self.precision)
        self.memory_format = memory_format_for(cfg, self.device)
        self.out = Path(cfg.out)
        self.model, self.optimizer = model, optimizer
        self.train_loader, self.val_loader = loaders
        self.meta = _unwrap(model).meta
        self.steps_per_epoch = max(1, len(self.train_loader) // cfg.grad_accum)
        self.total_steps = total_steps(cfg, self.steps_per_epoch)
        self.scheduler = scheduler or build_scheduler(cfg, optimizer, self.steps_per_epoch)
        self.scaler = runtime.grad_scaler(self.precision)
        self.ema = None
        if cfg.ema:
            self.ema = AveragedModel(
                _unwrap(self.model), multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True
            )
        self.epoch, self.step = 0, 0
        self.monitor = MONITOR[self.meta.task]
        self.checkpoints = CheckpointManager(
            self.out, monitor=self.monitor, mode="min" if self.meta.task in LOWER_IS_BETTER else "max"
        )
        self.history: list[dict] = []
        if resume:
            self._resume(resume if isinstance(resume, dict) else None)
        # Epoch-end order matters: evaluate, save, write metrics files, log, then print the record.
        if hooks is None:
            hooks = [EvalHook(), CheckpointHook(), MetricsFileHook(), *logger_hooks(cfg.log), ProgressHook(quiet)]
            if cfg.time is not None and not resume:
                hooks.append(TimeBudgetHook(parse_duration(cfg.time), quiet or not self.dist.is_main))
        self.hooks = hooks
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            self.save_config()

    def save_config(self) -> None:
        """The resolved config as config.yaml, headed by one comment line per `auto` choice."""
        save_config(self.cfg, self.out / "config.yaml", [c.line() for c in self.choices])

    def set_epochs(self, epochs: int) -> None:
        """Re-plan the run's length (a time budget): the cosine horizon follows, config.yaml too."""
        self.cfg = dataclasses.replace(self.cfg, epochs=epochs)
        self.total_steps = total_steps(self.cfg, self.steps_per_epoch)
        for schedule in self.scheduler.lr_lambdas:
            if isinstance(schedule, CosineSchedule):
                schedule.total = self.total_steps
        if self.dist.is_main:
            self.save_config()

    def state_dict(self) -> dict:
        """Everything needed to continue exactly; full (unsharded) tensors, gathered on every rank."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict  # noqa: PLC0415

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_sd, optim_sd = get_state_dict(_unwrap_compiled(self.model), self.optimizer, options=opts)
        return {
            "model": model_sd,
            "meta": self.meta.to_dict(),
            "optimizer": optim_sd,
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "ema": self.ema.module.state_dict() if self.ema else None,
            "epoch": self.epoch,
            "step": self.step,
            "rng": capture_rng_state(),
            "config": config_to_dict(self.cfg),
            "history": self.history,
        }

    def _resume(self, state: dict | None = None) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict  # noqa: PLC0415

        state = state or read_last(self.out)
        opts = StateDictOptions(full_state_dict=True)
        set_state_dict(
            _unwrap_compiled(self.model),
            self.optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optimizer"],
            options=opts,
        )
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema and state.get("ema"):
            self.ema.module.load_state_dict(state["ema"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.history = list(state.get("history", []))
        restore_rng_state(state["rng"])

    # ----------------------------------------------------------------- the loop

    def _call(self, event: str, *args) -> None:
        for hook in self.hooks:
            getattr(hook, event)(self, *args)

    def fit(self) -> dict:
        model = self.model
        self._call("on_train_start")
        try:
            # self.cfg, not a local: a time budget re-plans the epochs while the loop runs.
            while self.epoch < self.cfg.epochs and not self._done():
                cfg = self.cfg
                set_epoch(self.train_loader, self.epoch)
                model.train()
                batches = DevicePrefetcher(
                    self.train_loader,
                    self.device,
                    mean=self.meta.mean,
                    std=self.meta.std,
                    memory_format=self.memory_format,
                )
                self.train_batches = batches
                for i, batch in enumerate(batches):
                    last_micro = (i + 1) % cfg.grad_accum == 0
                    sync = self.dist.enabled and not last_micro and hasattr(model, "no_sync")
                    with model.no_sync() if sync else contextlib.nullcontext():
                        with runtime.autocast(self.precision):
                            raw = model(batch.images)
                        loss = _unwrap(model).loss(raw, batch.targets, cfg.label_smoothing)
                        if not torch.isfinite(loss):
                            raise NonFiniteLoss(
                                f"loss is {loss.item()} at epoch {self.epoch + 1}, step {self.step}; stopped. "
                                f"The last good checkpoint is kept in {self.out}; lower --lr, or use --precision fp32"
                            )
                        (self.scaler.scale(loss / cfg.grad_accum) if self.scaler else loss / cfg.grad_accum).backward()
                    if last_micro:
                        self._optimizer_step()
                        self._call("on_step_end", loss.detach(), len(batch.images))
                        if self._done():
                            break
                self.epoch += 1
                self._call("on_epoch_end")
        finally:
            self._call("on_train_end")
        return self.history[-1] if self.history else {}

    def _optimizer_step(self) -> None:
        apply_gradients(self.optimizer, self.scaler, self.model.parameters(), self.cfg.clip_grad)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(_unwrap(self.model))
        self.step += 1

    @property
    def train_stats(self):
        """The current epoch's loader statistics (images, skipped samples, data wait)."""
        return self.train_batches.stats

    def _done(self) -> bool:
        return bool(self.cfg.max_steps) and self.step >= self.cfg.max_steps

    def evaluate(self) -> dict:
        if self.val_loader is None:
            return {}
        batches = DevicePrefetcher(
            self.val_loader, self.device, mean=self.meta.mean, std=self.meta.std, memory_format=self.memory_format
        )
        metrics = evaluate(self.model, batches, self.meta, self.precision, self.device)
        if self.ema is not None:
            ema_metrics = evaluate(self.ema, batches, self.meta, self.precision, self.device)
            metrics.update({f"ema_{k}": v for k, v in ema_metrics.items()})
        return metrics

    def close(self) -> None:
        runtime.teardown_distributed()


def _unwrap_compiled(model: nn.Module) -> nn.Module:
    """torch.compile's wrapper around the (possibly DDP/FSDP) model; state dicts want the inner one."""
    return getattr(model, "_orig_mod", model)


def build_trainer(
    cfg: TrainConfig,
    resume: bool = False,
    hooks: list[Hook] | None = None,
    quiet: bool = False,
    model: VisionModel | None = None,
) -> Trainer:
    """A Trainer with the parts `cfg` describes. `model`: train this built model instead of `cfg.model`
    (e.g. a pruned one, whose layer shapes differ from the registered architecture); its classes must
    be the dataset's."""
    if not resume and (Path(cfg.out) / "last.pt").exists():
        raise ParvisError(f"{cfg.out} already holds a run; pass --resume to continue it or choose another --out")
    dist = runtime.init_distributed(cfg.device)
    choices: list[Choice] = []
    state = None
    if resume:
        # The run continues with its own resolved config; keys given now (e.g. more epochs) win.
        state = read_last(Path(cfg.out))
        cfg = resumed_config(cfg, state)
        if dist.is_main:
            print(f"resumed from {Path(cfg.out) / 'last.pt'}: epoch {state['epoch']} of {cfg.epochs} done, "
                  f"step {state['step']}; continuing with epoch {state['epoch'] + 1}", flush=True)  # fmt: skip
    elif model is None:
        if "model" not in given_keys(cfg) and cfg.model != TASK_MODELS[cfg.task]:
            given = given_keys(cfg)
            cfg = dataclasses.replace(cfg, model=TASK_MODELS[cfg.task])
            object.__setattr__(cfg, "_given", given)
        check_model_task(cfg)
        cfg, choices = resolve_recipe(cfg, dist.device)
    # Every rank initializes the model from the same seed: FSDP shards each rank's own copy
    # without broadcasting, so different inits would stitch together a model nobody made.
    runtime.seed_everything(cfg.seed, deterministic=cfg.deterministic)
    precision = runtime.resolve_precision(cfg.precision, dist.device, "train")  # an unsupported one fails here
    loaders = build_loaders(cfg, dist)
    class_names = list(INSPECTION_CLASSES if cfg.task == "inspection" else loaders.train.dataset.classes)
    if model is None:
        model = build_model(cfg, class_names, dist)  # says first when it replaces a pretrained head
        if dist.is_main and not quiet:
            for choice in choices:
                print(choice.line(), flush=True)
    elif model.meta.class_names != class_names:
        raise ParvisError(
            f"{cfg.data}: classes {class_names} differ from the model's {model.meta.class_names}; "
            "use the dataset the model was trained on"
        )
    model = prepare_model(model, cfg, dist)
    # From here on randomness (main-process augmentation, dropout) should differ between ranks.
    runtime.seed_everything(cfg.seed + dist.rank, deterministic=cfg.deterministic)
    optimizer = build_optimizer(cfg, model, dist)
    return Trainer(
        model, loaders, optimizer, cfg=cfg, dist=dist, precision=precision, hooks=hooks, quiet=quiet,
        resume=state if state is not None else False, choices=choices,
    )  # fmt: skip


def read_last(out: Path) -> dict:
    """The state in OUT/last.pt, for --resume."""
    path = out / "last.pt"
    if not path.exists():
        raise ParvisError(f"--resume: {path} does not exist; train without --resume first")
    return load_checkpoint(path)


def resumed_config(cfg: TrainConfig, state: dict) -> TrainConfig:
    """The config the checkpoint was trained with, with the keys given for this call on top."""
    stored = state.get("config") or {}
    base = load_config(TrainConfig, values=stored)
    now = {k: getattr(cfg, k) for k in given_keys(cfg) if k != "recipe"}
    resolved = dataclasses.replace(base, **now)
    object.__setattr__(resolved, "_given", frozenset(stored) | frozenset(now))
    return resolved


def train(cfg: TrainConfig, resume: bool = False, quiet: bool = False) -> dict:
    """Train with `cfg`; returns the last epoch's record (metrics, images/s, data wait).

    Inspection: the anomaly mode fits PatchCore (no steps, `fit_anomaly`); the supervised mode trains
    its segmenter here, then chooses the OK/NG threshold on val with best.pt and stores it there."""
    if cfg.task == "inspection" and cfg.mode == "anomaly":
        if resume:
            raise ParvisError("--resume: the anomaly mode fits in one pass; run it again with another --out")
        if "model" not in given_keys(cfg):
            cfg = dataclasses.replace(cfg, model=ANOMALY_BACKBONE)
        return fit_anomaly(cfg, quiet=quiet)
    trainer = build_trainer(cfg, resume=resume, quiet=quiet)
    try:
        record = trainer.fit()
    finally:
        trainer.close()
    if cfg.task == "inspection" and trainer.dist.is_main:
        record.update(calibrate_checkpoint(Path(trainer.cfg.out) / "best.pt", trainer.cfg, quiet=quiet))
    return record
