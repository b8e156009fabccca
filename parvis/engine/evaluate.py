"""Evaluation: task metrics with torchmetrics, reduced across ranks, plus loss and throughput."""

from __future__ import annotations

import importlib.util
import time

import torch
from torch import nn

from parvis import runtime
from parvis.data.check import open_dataset
from parvis.data.loader import DevicePrefetcher, build_loader
from parvis.engine.inspection_metrics import InspectionMetric
from parvis.engine.loading import load_trained
from parvis.engine.stereo_metrics import StereoMetric, eval_planes
from parvis.errors import ParvisError
from parvis.models import eval_transform

PER_CLASS_MAX = 100  # classification: acc_<class> up to this many classes


def make_metrics(task: str, num_classes: int, class_names: list[str], ignore_index: int | None, device):
    """top-1/top-5 accuracy for classification; mIoU, per-class IoU and pixel accuracy for segmentation;
    COCO box mAP for detection (see :func:`detection_metric`).

    torchmetrics synchronizes its states across ranks in compute() when a process group is up,
    so every rank gets the metric of the whole validation split.
    """
    from torchmetrics import MetricCollection  # noqa: PLC0415 - heavy import (seconds): only metrics need it
    from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex  # noqa: PLC0415 - as above

    if task == "detection":
        return detection_metric().to(device)
    if task == "stereo":
        return StereoMetric().to(device)
    if task == "classification":
        metrics = {"top1": MulticlassAccuracy(num_classes, top_k=1, average="micro")}
        if num_classes <= PER_CLASS_MAX:  # per class (recall); not a thousand keys for an ImageNet model
            metrics["acc"] = MulticlassAccuracy(num_classes, top_k=1, average="none")
        if num_classes > 5:
            metrics["top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
        # compute_groups=False: torchmetrics groups metrics whose states are equal after the first
        # update and computes them from one state from then on; a first batch that is all right makes
        # top-1 and top-5 equal there, and top-5 was then reported equal to top-1 for the whole split.
        return MetricCollection(metrics, compute_groups=False).to(device)
    ignore = ignore_index if ignore_index is not None else None
    return MetricCollection(
        {
            "miou": MulticlassJaccardIndex(num_classes, average="macro", ignore_index=ignore),
            "iou": MulticlassJaccardIndex(num_classes, average="none", ignore_index=ignore),
            "pixel_acc": MulticlassAccuracy(num_classes, average="micro", ignore_index=ignore),
        }
    ).to(device)


# COCO evaluation backends torchmetrics can use, fastest first.
COCO_BACKENDS = (("faster_coco_eval", "faster_coco_eval"), ("pycocotools", "pycocotools"))


def detection_metric():
    """torchmetrics' MeanAveragePrecision on xyxy boxes, with the COCO evaluation backend installed
    (faster-coco-eval, else pycocotools); extended_summary keeps the precision table that per-class
    AP@0.5 is read from."""
    from torchmetrics.detection import MeanAveragePrecision  # noqa: PLC0415 - heavy import, detection only

    backend = next((name for name, module in COCO_BACKENDS if importlib.util.find_spec(module)), None)
    if backend is None:
        raise ParvisError("detection mAP needs a COCO evaluation backend: pip install pycocotools")
    return MeanAveragePrecision(box_format="xyxy", iou_type="bbox", extended_summary=True, backend=backend)


def _detection_update(metric, detections: list, targets: list[dict]) -> None:
    preds = [{"boxes": d.boxes, "scores": d.scores, "labels": d.labels} for d in detections]
    truth = [
        {"boxes": t["boxes"].as_subclass(torch.Tensor).float().reshape(-1, 4), "labels": t["labels"]} for t in targets
    ]
    metric.update(preds, truth)


def _detection_values(values: dict, class_names: list[str]) -> dict[str, float]:
    """map (IoU 0.5:0.95), map50, map75, mar100 and ap50_<class>: the area under class k's
    precision-recall curve at IoU 0.5 (all areas, 100 detections) from COCO's precision table."""
    out = {
        "map": float(values["map"]),
        "map50": float(values["map_50"]),
        "map75": float(values["map_75"]),
        "mar100": float(values["mar_100"]),
    }
    precision = values.get("precision")  # (IoU thresholds, recall points, classes seen, areas, max dets)
    classes = values.get("classes")
    if precision is None or classes is None or precision.ndim != 5:
        return out
    for k, label in enumerate(classes.reshape(-1).tolist()):
        curve = precision[0, :, k, 0, -1]
        curve = curve[curve > -1]  # -1: a class without ground truth in this split
        if 0 <= label < len(class_names) and curve.numel():
            out[f"ap50_{class_names[label]}"] = float(curve.mean())
    return out


@torch.no_grad()
def evaluate(model: nn.Module, batches, meta, precision: runtime.Precision, device: torch.device) -> dict:
    """Run `model` over `batches` (a DevicePrefetcher) and return plain-float metrics.

    Keys: classification -> top1 (and top5 when there are more than 5 classes) and acc_<class> (the
    share of each class's images predicted right, up to 100 classes); segmentation ->
    miou, pixel_acc and iou_<class> per class; detection -> map (COCO, IoU 0.5:0.95), map50, map75,
    mar100 and ap50_<class> per class; stereo -> epe, bad1/2/3, d1 (see stereo_metrics) and, for a
    model with a plane head, plane_acc / plane_iou; inspection -> image_auroc, pixel_auroc, pro and, with
    the model's threshold, f1, false_reject, escape (see inspection_metrics); always loss, images,
    images_per_s, data_wait.
    """
    was_training = model.training
    model.eval()
    if meta.task == "inspection":  # the decision's rates need the model's own threshold
        metrics = InspectionMetric(meta.extra.get("threshold"))
    else:
        metrics = make_metrics(meta.task, meta.num_classes, meta.class_names, meta.ignore_index, device)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    count = torch.zeros((), device=device, dtype=torch.float64)
    loss_fn = _unwrap(model).loss
    detection = meta.task == "detection"
    stereo = meta.task == "stereo"
    # The plane head: a PyTorch model's forward_planes, or a runtime's plane_logits (None without one)
    inner = _unwrap(model)
    planes_of = (getattr(inner, "forward_planes", None) or getattr(inner, "plane_logits", None)) if stereo else None
    if planes_of is not None:
        metrics.planes = eval_planes(meta.extra.get("max_disp", 48))
        metrics.reset()
    start = time.perf_counter()
    both = getattr(inner, "disparity_and_planes", None) if planes_of is not None else None
    for batch in batches:
        if batch.images.numel() == 0:
            continue
        plane_logits = None
        with runtime.autocast(precision):
            if both is not None:  # a stereo model's features once for its disparity and its planes
                raw, plane_logits = both(batch.images, metrics.planes)
            else:
                raw = model(batch.images)
        loss_sum += loss_fn(raw, batch.targets).double() * len(batch.images)
        count += len(batch.images)
        if detection:
            _detection_update(metrics, _unwrap(model).postprocess(raw), batch.targets)
        elif stereo:
            if plane_logits is None and planes_of is not None:
                with runtime.autocast(precision):
                    plane_logits = planes_of(batch.images, metrics.planes)
            probs = None if plane_logits is None else plane_logits.float().sigmoid()
            metrics.update(raw.float(), batch.targets, probs)
        else:
            metrics.update(raw.float(), batch.targets)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(loss_sum)
        torch.distributed.all_reduce(count)
    values = metrics.compute()
    elapsed = time.perf_counter() - start
    out: dict[str, float] = {}
    if detection:
        out.update(_detection_values(values, meta.class_names))
    elif stereo or meta.task == "inspection":
        out.update(values)
    else:
        for key, value in values.items():
            if value.numel() == 1:
                out[key] = float(value)
            else:  # per-class IoU (segmentation) or accuracy (classification)
                for name, v in zip(meta.class_names, value.tolist(), strict=True):
                    out[f"{key}_{name}"] = float(v)
    out["loss"] = float(loss_sum / count.clamp(min=1))
    out["images"] = int(count)
    out["images_per_s"] = float(count) / elapsed if elapsed > 0 else 0.0
    stats = getattr(batches, "stats", None)
    if stats is not None:
        out["data_wait"] = stats.wait_fraction
    model.train(was_training)
    return out


def _unwrap(model: nn.Module) -> nn.Module:
    """The VisionModel inside DDP / torch.compile / AveragedModel wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def evaluate_checkpoint(
    checkpoint,
    data,
    split: str = "val",
    device: torch.device | None = None,
    precision: runtime.Precision | None = None,
    batch: int = 64,
    workers: int | None = None,
    use_ema: bool = False,
) -> tuple[dict, object]:
    """(metrics, the model's ModelMeta) of a parvis checkpoint on a dataset split, preprocessed by the
    checkpoint's own metadata, in eager PyTorch at `precision`. Any other model source (artifacts,
    zoo names, optimize folders) is evaluated by `parvis.api.evaluate`, above the runtimes."""
    device = device or runtime.default_device()
    precision = precision or runtime.resolve_precision("auto", device, "infer")
    model = load_trained(checkpoint, device, use_ema=use_ema)
    meta = model.meta
    ds = open_dataset(data, meta.task, split, transform=eval_transform(meta))
    loader = build_loader(ds, batch, train=False, device=device, workers=workers, mean=meta.mean, std=meta.std)
    return evaluate(model, DevicePrefetcher(loader, device, meta.mean, meta.std), meta, precision, device), meta
