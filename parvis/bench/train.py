"""`parvis bench train`: training images/s per precision x layout (x compile), and end to end vs model only.

Every configuration runs the same model (same init), batch and input size through forward, loss,
backward and an AdamW step. Configurations take turns within each round and the median of the
rounds is reported, so a noisy machine slows all of them alike. `auto` is what `parvis train`
picks with no flags. With `--data`, the auto configuration also runs on the real loader (decode,
augment, normalize, DevicePrefetcher) next to synthetic in-memory batches, which gives the
fraction of training time spent waiting for data.
"""

from __future__ import annotations

import statistics
import time

import torch

from parvis import runtime
from parvis.data.check import open_dataset
from parvis.data.loader import DevicePrefetcher, build_loader
from parvis.data.transforms import build_transform
from parvis.engine.trainer import apply_gradients
from parvis.errors import ParvisError
from parvis.models import MODELS, build_model


def _configs(device: torch.device, compile_too: bool) -> list[dict]:
    auto = runtime.resolve_precision("auto", device, "train")
    names = ["fp32"]
    if device.type == "cuda":
        gpu = runtime.gpu_for(device)
        names += (["tf32", "bf16"] if gpu and gpu.bf16 else []) + ["fp16"]
    elif device.type == "cpu":
        names += ["bf16"]
    configs = []
    for name in names:
        for layout in ("contiguous", "channels_last"):
            configs.append({"name": f"{name}/{layout}", "precision": name, "layout": layout, "compile": False})
    auto_layout = "channels_last" if runtime.preferred_memory_format(device) == torch.channels_last else "contiguous"
    configs.append(
        {
            "name": "auto",
            "precision": "auto",
            "layout": auto_layout,
            "compile": False,
            "resolved": f"{auto.name}/{auto_layout}",
        }
    )
    if compile_too:
        configs.append(
            {
                "name": "auto+compile",
                "precision": "auto",
                "layout": auto_layout,
                "compile": True,
                "resolved": f"{auto.name}/{auto_layout}+compile",
            }
        )
    return configs


class _Step:
    """One configuration's model, optimizer and train step on `device`."""

    def __init__(self, model_name: str, task: str, num_classes: int, size: int, cfg: dict, device: torch.device):
        torch.manual_seed(0)
        fmt = torch.channels_last if cfg["layout"] == "channels_last" else torch.contiguous_format
        self.model = build_model(model_name, num_classes, input_size=size).to(device, memory_format=fmt).train()
        self.precision = runtime.resolve_precision(cfg["precision"], device, "train")
        runtime.apply_precision(self.precision)
        self.scaler = runtime.grad_scaler(self.precision)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.forward = torch.compile(self.model) if cfg["compile"] else self.model
        self.fmt, self.device = fmt, device

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        images = images.contiguous(memory_format=self.fmt)
        with runtime.autocast(self.precision):
            raw = self.forward(images)
        loss = self.model.loss(raw, targets)
        (self.scaler.scale(loss) if self.scaler else loss).backward()
        apply_gradients(self.optimizer, self.scaler, self.model.parameters(), clip_grad=None)
        return loss


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _synthetic(task: str, num_classes: int, batch: int, size: int, device: torch.device):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=g).to(device)
    if task == "classification":
        targets = torch.randint(0, num_classes, (batch,), generator=g).to(device)
    elif task == "detection":  # three boxes per image, 8-50% of the side, as the loader gives them
        targets = []
        for _ in range(batch):
            xy = torch.rand(3, 2, generator=g) * size * 0.5
            wh = (0.08 + 0.42 * torch.rand(3, 2, generator=g)) * size
            boxes = torch.cat([xy, (xy + wh).clamp(max=size - 1)], 1)
            labels = torch.randint(0, num_classes, (3,), generator=g)
            targets.append({"boxes": boxes.to(device), "labels": labels.to(device)})
    else:
        targets = torch.randint(0, num_classes, (batch, size, size), generator=g).to(device)
    return images, targets


def _time_steps(step: _Step, batches, steps: int, warmup: int, device: torch.device) -> float:
    """Images/s over `steps` steps after `warmup` untimed ones; `batches` yields (images, targets)."""
    it = iter(batches)
    for _ in range(warmup):
        images, targets = next(it)
        step(images, targets)
    _sync(device)
    t0, n = time.perf_counter(), 0
    for _ in range(steps):
        images, targets = next(it)
        loss = step(images, targets)
        n += len(images)
    loss.item()  # the last step's work must be finished before the clock stops
    _sync(device)
    return n / (time.perf_counter() - t0)


def bench_train(
    model: str,
    size: int = 224,
    batch: int = 32,
    steps: int = 5,
    warmup: int = 2,
    rounds: int = 2,
    device: str = "auto",
    data: str | None = None,
    compile_too: bool = False,
    workers: int | None = None,
    progress=None,
    only: tuple[str, ...] | None = None,
) -> dict:
    """`only`: run just these configuration names (e.g. ("fp32/contiguous", "auto")); fp32/contiguous,
    the reference of every speedup, is always run."""
    dev = runtime.resolve_device(device)
    task = MODELS.info(model)["task"]
    num_classes = 6 if task == "segmentation" else 5
    if steps < 1 or warmup < 0 or rounds < 1:
        raise ParvisError("--steps and --rounds must be at least 1, --warmup at least 0")
    configs = _configs(dev, compile_too)
    if only:
        configs = [c for c in configs if c["name"] in only or c["name"] == "fp32/contiguous"]
    images, targets = _synthetic(task, num_classes, batch, size, dev)

    def forever():
        while True:
            yield images, targets

    runs: dict[str, list[float]] = {c["name"]: [] for c in configs}
    for r in range(rounds):
        for cfg in configs:
            if progress:
                progress(f"round {r + 1}/{rounds}: {cfg['name']}")
            step = _Step(model, task, num_classes, size, cfg, dev)
            runs[cfg["name"]].append(_time_steps(step, forever(), steps, warmup + (3 if cfg["compile"] else 0), dev))
            del step
    fp32 = statistics.median(runs["fp32/contiguous"])
    rows = []
    for cfg in configs:
        img_s = statistics.median(runs[cfg["name"]])
        row = {
            "config": cfg["name"],
            "precision": cfg["precision"],
            "layout": cfg["layout"],
            "compile": cfg["compile"],
            "img_s": round(img_s, 2),
            "speedup_vs_fp32": round(img_s / fp32, 2),
            "runs": [round(v, 2) for v in runs[cfg["name"]]],
        }
        if "resolved" in cfg:
            row["resolved"] = cfg["resolved"]
        rows.append(row)

    result = {
        "benchmark": "train",
        "model": model,
        "task": task,
        "size": size,
        "batch": batch,
        "steps": steps,
        "warmup": warmup,
        "rounds": rounds,
        "threads": torch.get_num_threads(),
        **runtime.result_header(dev),
        "rows": rows,
        "auto": next(r for r in rows if r["config"] == "auto"),
    }
    if data:
        result["end_to_end"] = _end_to_end(model, task, data, size, batch, steps, warmup, dev, workers, progress)
    return result


def _end_to_end(model, task, data, size, batch, steps, warmup, device, workers, progress) -> dict:
    """The auto configuration on the real loader vs on synthetic batches, side by side."""
    ds = open_dataset(data, task, "train", transform=build_transform(task, True, size))
    num_classes = len(ds.classes)
    cfg = {
        "precision": "auto",
        "layout": "channels_last" if runtime.preferred_memory_format(device) == torch.channels_last else "contiguous",
        "compile": False,
    }
    loader = build_loader(ds, batch, train=True, device=device, workers=workers)
    need = steps + warmup
    if len(loader) < need:
        raise ParvisError(
            f"{data}: {len(loader)} batches of {batch} in the train split, need {need} for the "
            "end-to-end run; lower --batch or --steps"
        )
    prefetcher = DevicePrefetcher(loader, device)

    def real():
        for b in prefetcher:
            yield b.images, b.targets

    images, targets = _synthetic(task, num_classes, batch, size, device)

    def synthetic():
        while True:
            yield images, targets

    out = {}
    for name, source in (("model_only", synthetic), ("end_to_end", real)):
        if progress:
            progress(f"data: {name}")
        step = _Step(model, task, num_classes, size, cfg, device)
        out[f"{name}_img_s"] = round(_time_steps(step, source(), steps, warmup, device), 2)
    out["ratio"] = round(out["end_to_end_img_s"] / out["model_only_img_s"], 3)
    out["data_wait_fraction"] = round(prefetcher.stats.wait_fraction, 3)
    out["loader_workers"] = loader.num_workers
    out["data"] = data
    return out
