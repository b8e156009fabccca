"""Inspection: fit a PatchCore memory bank on good parts, wrap a segmentation network as a defect
segmenter, and choose the OK/NG threshold on validation images.

    model, record = fit_patchcore(cfg)                 # anomaly mode: train/good only, no gradient steps
    calibrate(model, cfg)                              # threshold from the val split, into model.meta.extra

The threshold rule (`choose_threshold`): with `max_false_reject` R, the lowest threshold that rejects at
most R of the val split's good parts; with `min_recall` r, the highest one that still catches r of its
defective parts. What it achieved there is stored next to it (`meta.extra["threshold_rule"]`) and printed.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from parvis import runtime
from parvis.config import TrainConfig, config_to_dict
from parvis.data.inspection import InspectionDataset
from parvis.data.loader import DevicePrefetcher, build_loader
from parvis.data.transforms import build_transform
from parvis.engine.checkpoint import load_checkpoint, save_checkpoint
from parvis.engine.inspection_metrics import InspectionMetric, choose_threshold
from parvis.engine.loading import load_model, load_trained
from parvis.errors import ParvisError
from parvis.models.base import ModelMeta, VisionModel
from parvis.models.inspection import INSPECTION_CLASSES, DefectSegmenter, PatchCore, backbone_spec, stride_layers

# PatchCore's feature dimension for the coreset search (a random projection; Roth et al. use 128).
CORESET_PROJECTION = 128
# Patches per greedy coreset search (1,024 images of 32 x 32 patches, 512 MB of 128-dim features): one
# search over every patch up to there. Searching per group of 16 images instead was 20x faster (1.7 s vs
# 32 s for 200 images) but on a varied texture (grass) cost test image AUROC 0.88 -> 0.83.
CORESET_GROUP = 1 << 20


def greedy_coreset(features: torch.Tensor, count: int, seed: int = 0) -> torch.Tensor:
    """Indices of `count` rows chosen by greedy k-center (farthest point first) on a random projection
    of `features` to at most 128 dimensions: each pick is the row farthest from all picked so far, so
    the memory bank covers the good parts' patches with as few rows as possible."""
    n, dim = features.shape
    count = max(1, min(count, n))
    gen = torch.Generator().manual_seed(seed)
    x = features.float()
    if dim > CORESET_PROJECTION:
        projection = torch.randn(dim, CORESET_PROJECTION, generator=gen) / math.sqrt(CORESET_PROJECTION)
        x = x @ projection
    x_sq = (x * x).sum(1)
    nearest = torch.full((n,), float("inf"))
    picked = torch.empty(count, dtype=torch.long)
    current = int(torch.randint(n, (1,), generator=gen))
    for i in range(count):
        picked[i] = current
        c = x[current]
        torch.minimum(nearest, torch.addmv(x_sq, x, c, alpha=-2).add_(float(c @ c)), out=nearest)
        current = int(nearest.argmax())
    return picked


def grouped_coreset(features: torch.Tensor, count: int, seed: int = 0, group: int = CORESET_GROUP) -> torch.Tensor:
    """`greedy_coreset` over consecutive groups of at most `group` rows (one group below CORESET_GROUP
    patches), each giving its share of `count`: every greedy step scans one group instead of all rows,
    so the search costs (rows / group) times less, and the union still covers every group's patches
    (less evenly than one search over all of them)."""
    n = len(features)
    groups = max(1, math.ceil(n / group))
    bounds = [round(i * n / groups) for i in range(groups + 1)]
    picked = []
    for g in range(groups):
        lo, hi = bounds[g], bounds[g + 1]
        share = max(1, round(count * (hi - lo) / n))
        picked.append(lo + greedy_coreset(features[lo:hi], share, seed + g))
    return torch.cat(picked)


def inspection_meta(name: str, inner: ModelMeta, size: int, extra: dict) -> ModelMeta:
    return ModelMeta(
        name=name, task="inspection", num_classes=2, class_names=list(INSPECTION_CLASSES), input_size=size,
        mean=tuple(inner.mean), std=tuple(inner.std), extra=extra,
    )  # fmt: skip


def build_patchcore(cfg: TrainConfig) -> PatchCore:
    """The PatchCore of `cfg.model` (a registered or zoo classifier, or a parvis checkpoint) with
    `cfg.weights`, its memory bank still empty."""
    spec = cfg.model if Path(cfg.model).is_file() else backbone_spec(cfg.model)
    if cfg.weights is None and not Path(cfg.model).is_file():
        raise ParvisError(
            f"--mode anomaly compares features of a pretrained backbone: give --weights FILE for {cfg.model} "
            "(e.g. torchvision's ImageNet weights) or a trained parvis checkpoint as --model"
        )
    backbone = load_model(spec, weights=cfg.weights)
    backbone.meta.extra.pop("random_init", None)
    layers = list(cfg.layers) if cfg.layers else stride_layers(backbone)
    extra = {"backbone": backbone.meta.to_dict(), "layers": layers, "mode": "anomaly", "coreset": cfg.coreset}
    return PatchCore(inspection_meta("patchcore", backbone.meta, cfg.size, extra), backbone, layers)


def _loader(cfg: TrainConfig, dataset, device: torch.device, mean, std):
    return DevicePrefetcher(
        build_loader(dataset, cfg.batch, train=False, device=device, workers=cfg.workers, mean=mean, std=std),
        device, mean, std,
    )  # fmt: skip


@torch.no_grad()
def fit_memory(model: PatchCore, batches, coreset: float, seed: int = 0, progress=None) -> dict:
    """Fill `model`'s memory bank from the good images in `batches`: every patch embedding, then the
    greedy coreset of `coreset` x their number. Returns counts and timings."""
    start = time.perf_counter()
    parts = []
    for batch in batches:
        if batch.images.numel():
            e = model.embed(batch.images)
            parts.append(e.permute(0, 2, 3, 1).reshape(-1, e.shape[1]).cpu())
            if progress:
                progress(len(batch.images))
    if not parts:
        raise ParvisError("no good training images to fit the memory bank")
    features = torch.cat(parts)
    embed_s = time.perf_counter() - start
    count = max(1, math.ceil(coreset * len(features)))
    rows = grouped_coreset(features, count, seed)
    model.set_memory(features[rows])
    return {"patches": len(features), "memory": len(rows), "embed_s": embed_s,
            "coreset_s": time.perf_counter() - start - embed_s}  # fmt: skip


@torch.no_grad()
def split_scores(model: VisionModel, dataset, cfg: TrainConfig, device, precision) -> dict:
    """Inspection metrics of `model` on `dataset` (no threshold), and the image scores and labels."""
    metric = InspectionMetric(None)
    model.eval()
    for batch in _loader(cfg, dataset, device, model.meta.mean, model.meta.std):
        if batch.images.numel():
            with runtime.autocast(precision):
                metric.update(model(batch.images).float(), batch.targets)
    scores, defective = metric.image_scores()
    return {"metrics": metric.compute(), "scores": scores, "defective": defective}


def calibrate(model: VisionModel, cfg: TrainConfig, device, precision, quiet: bool = False) -> dict:
    """Choose the threshold on the val split (MVTec layouts without val/: half of test, said so) and
    store it with the rule and what it achieved in `model.meta.extra`."""
    data = InspectionDataset(cfg.data, "val", transform=build_transform("inspection", False, cfg.size))
    note = getattr(data, "split_note", None)
    if note and not quiet:
        print(note, flush=True)
    found = split_scores(model, data, cfg, device, precision)
    target = {"max_false_reject": cfg.max_false_reject} if cfg.min_recall is None else {"min_recall": cfg.min_recall}
    threshold, achieved = choose_threshold(found["scores"], found["defective"], **target)
    rule = {"split": "val", **achieved, "image_auroc": found["metrics"].get("image_auroc")}
    model.meta.extra["threshold"] = threshold
    model.meta.extra["threshold_rule"] = rule
    if not quiet:
        goal = (f"at most {cfg.max_false_reject:.1%} false rejects" if cfg.min_recall is None
                else f"at least {cfg.min_recall:.1%} of defects caught")  # fmt: skip
        print(f"threshold {threshold:.4g} chosen on val for {goal} ({achieved['good_images']} good, "
              f"{achieved['defective_images']} defective images): false-reject {achieved['false_reject']:.1%}, "
              f"escape {achieved['escape']:.1%}", flush=True)  # fmt: skip
    return rule


def calibrate_checkpoint(path: Path, cfg: TrainConfig, quiet: bool = False) -> dict:
    """The supervised mode's last step: best.pt's threshold chosen on val (see `calibrate`), written back
    into best.pt atomically. Returns val_* keys of what the threshold achieved."""
    state = load_checkpoint(path)
    device = runtime.resolve_device(cfg.device)
    precision = runtime.resolve_precision("fp32", device, "infer")
    model = load_trained(path, device)
    rule = calibrate(model, cfg, device, precision, quiet)
    state["meta"] = model.meta.to_dict()
    save_checkpoint(path, state)
    return {
        f"val_{k}": v for k, v in rule.items() if isinstance(v, float) and k not in ("max_false_reject", "min_recall")
    }


def save_inspection(model: VisionModel, out: Path, cfg: TrainConfig, record: dict) -> Path:
    state = {"model": model.state_dict(), "meta": model.meta.to_dict(), "config": config_to_dict(cfg),
             "epoch": 1, "history": [record]}  # fmt: skip
    path = save_checkpoint(out / "best.pt", state)
    save_checkpoint(out / "last.pt", state)
    return path


def fit_anomaly(cfg: TrainConfig, quiet: bool = False) -> dict:
    """`parvis train --task inspection --mode anomaly`: PatchCore fitted on DIR/train/good, threshold on
    val, metrics on val; best.pt (and last.pt, the same) in cfg.out. Returns the record (val_* keys)."""
    out = Path(cfg.out)
    if (out / "best.pt").exists():
        raise ParvisError(f"{out} already holds a run; choose another --out")
    device = runtime.resolve_device(cfg.device)
    precision = runtime.resolve_precision("fp32" if cfg.precision == "auto" else cfg.precision, device, "infer")
    runtime.seed_everything(cfg.seed)
    model = build_patchcore(cfg).to(device).eval()
    size = cfg.size
    good = InspectionDataset(cfg.data, "train", transform=build_transform("inspection", False, size), good_only=True)
    if not quiet:
        print(f"anomaly mode: {model.meta.extra['backbone']['name']} layers {', '.join(model.layers)}, "
              f"{len(good)} good images at {size} px, coreset {cfg.coreset:.0%} of the patches",
              flush=True)  # fmt: skip
    fit = fit_memory(model, _loader(cfg, good, device, model.meta.mean, model.meta.std), cfg.coreset, cfg.seed)
    if not quiet:
        print(f"memory bank: {fit['memory']} of {fit['patches']} patch features ({model.feature_dim} dims); "
              f"embedding {fit['embed_s']:.1f} s, coreset {fit['coreset_s']:.1f} s", flush=True)  # fmt: skip
    rule = calibrate(model, cfg, device, precision, quiet)
    record = {"epoch": 1, "fit_s": fit["embed_s"] + fit["coreset_s"], "memory": fit["memory"]}
    record["patches"] = fit["patches"]
    record.update({f"val_{k}": v for k, v in rule.items() if isinstance(v, float)})
    out.mkdir(parents=True, exist_ok=True)
    save_inspection(model, out, cfg, record)
    return record


def wrap_segmenter(net: VisionModel, size: int) -> DefectSegmenter:
    """A two-class segmentation network as the supervised mode's inspection model."""
    extra = {"segmenter": net.meta.to_dict(), "mode": "supervised"}
    return DefectSegmenter(inspection_meta("defect_segmenter", net.meta, size, extra), net)
