"""`parvis bench inspection`: parvis's PatchCore against anomalib's on the same images and backbone weights.

Both fit on DIR/train/good and are scored on the whole test split (test/good and test/<defect>, with
MVTec AD's masks) by the same metric code (`parvis.engine.inspection_metrics`): image AUROC, pixel AUROC
and PRO, with the same thread count, image size (resized to a square, ImageNet normalization),
backbone weights, feature layers (stride 8 and 16) and memory-bank share (`coreset`, 1% by default:
anomalib's own default of 10% makes its greedy search run for about an hour on 200 images on a 2-core
CPU). fit_s is feature extraction plus the coreset search, images already decoded; ms_per_image is the
mean over the test images of one forward at batch 1 in eager PyTorch fp32, after 3 warm-up images,
decoding excluded. Both score an image as PatchCore does (the top patch's distance reweighted by its
memory neighbourhood) and search the coreset over all patches at once; `seed` seeds both searches
(their random starts and projections). What differs is each implementation's own: parvis searches on
the features themselves up to 128 dimensions and on a dense Gaussian projection to 128 above that,
anomalib on a sparse projection to the Johnson-Lindenstrauss dimension (eps 0.9); parvis computes
distances in chunks of the memory bank, scales its map so that the maximum is the image score, and
smooths before that scaling.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset

from parvis.bench.inspection_peer import run_anomalib_patchcore
from parvis.config import TrainConfig
from parvis.data.inspection import InspectionDataset, has_split
from parvis.data.loader import DevicePrefetcher, build_loader
from parvis.data.transforms import build_transform
from parvis.engine.inspection import build_patchcore, fit_memory
from parvis.engine.inspection_metrics import InspectionMetric, roc_points
from parvis.errors import ParvisError
from parvis.models.inspection import backbone_spec
from parvis.runtime import result_header
from parvis.runtimes.torch_eager import torch_threads

WARMUP = 3
# torchvision mobilenet_v2's features index of each default PatchCore layer (the peer's layer names).
PEER_LAYERS = {"net.features.6": 6, "net.features.13": 13}


def whole_test(root: str | Path, transform) -> torch.utils.data.Dataset:
    """Every image of DIR/test (an MVTec AD folder without val/ splits test in two halves for
    thresholds; a benchmark scores both halves)."""
    if has_split(root, "val"):
        return InspectionDataset(root, "test", transform=transform)
    return ConcatDataset([InspectionDataset(root, "val", transform=transform),
                          InspectionDataset(root, "test", transform=transform)])  # fmt: skip


def _decoded(dataset, batch: int, mean, std) -> list:
    """Every batch of `dataset`, decoded and normalized up front (the timings leave decoding out)."""
    cpu = torch.device("cpu")
    return list(DevicePrefetcher(build_loader(dataset, batch, train=False, device=cpu, workers=0), cpu, mean, std))


@torch.no_grad()
def bench_parvis(data, backbone: str, weights, size: int, coreset: float, threads: int | None, seed: int = 0) -> dict:
    """parvis's PatchCore: fit on train/good, score the whole test split (see the module docstring)."""
    cfg = TrainConfig(task="inspection", mode="anomaly", model=backbone, weights=weights, size=size, batch=8,
                      coreset=coreset, device="cpu", workers=0, seed=seed)  # fmt: skip
    transform = build_transform("inspection", False, size)
    with torch_threads(threads):
        model = build_patchcore(cfg).eval()
        mean, std = model.meta.mean, model.meta.std
        good = InspectionDataset(data, "train", transform=transform, good_only=True)
        batches = _decoded(good, 8, mean, std)
        fit = fit_memory(model, batches, coreset, seed)
        test = whole_test(data, transform)
        images = _decoded(test, 1, mean, std)
        metric = InspectionMetric(None)
        times = []
        for batch in images[:WARMUP]:
            model(batch.images)
        for batch in images:
            start = time.perf_counter()
            raw = model(batch.images)
            times.append(time.perf_counter() - start)
            metric.update(raw, batch.targets)
        scores = metric.compute()
        image_scores, defective = metric.image_scores()
        maps, masks = torch.cat(metric.maps), torch.cat(metric.masks)
    return {
        "method": "parvis PatchCore",
        "image_auroc": scores["image_auroc"],
        "pixel_auroc": scores["pixel_auroc"],
        "pro": scores["pro"],
        "fit_s": fit["embed_s"] + fit["coreset_s"],
        "ms_per_image": 1000 * sum(times) / len(times),
        "ms_per_image_median": 1000 * sorted(times)[len(times) // 2],  # robust to a busy machine's stalls
        "memory_bank": fit["memory"],
        "layers": model.layers,
        "n_train": len(good),
        "n_test": len(images),
        "image_roc": roc_points(image_scores, defective),
        "pixel_roc": roc_points(maps, masks),
    }


def bench_inspection(
    data: str | Path,
    backbone: str = "mobilenet_v2",
    weights: str | Path | None = None,
    size: int = 256,
    coreset: float = 0.01,
    threads: int | None = None,
    peer: bool = True,
    progress: Callable[[str], None] | None = None,
    seed: int = 0,
) -> dict:
    """Both methods on `data` (see the module docstring); rows, settings and notes as JSON-ready values."""
    if weights is None:
        raise ParvisError("bench inspection compares pretrained features: give --weights FILE for the backbone")
    threads = threads or torch.get_num_threads()
    say = progress or (lambda _m: None)
    say("parvis PatchCore: fit and score")
    ours = bench_parvis(data, backbone, weights, size, coreset, threads, seed)
    rows, notes = [ours], []
    if peer:
        if importlib.util.find_spec("anomalib") is None:
            notes.append("anomalib is not installed, so its row is missing: pip install anomalib (or the peers extra)")
        elif backbone_spec(backbone) != "torchvision:mobilenet_v2":
            notes.append(f"anomalib's row needs the same weights in timm's layout, mapped here for mobilenet_v2 only; "
                         f"{backbone} runs without a peer")  # fmt: skip
        else:
            say("anomalib PatchCore: fit and score (slow: its coreset search scans every patch per pick)")
            layers = tuple(PEER_LAYERS[name] for name in ours["layers"])
            theirs = run_anomalib_patchcore(data, weights, layers=layers, image_size=size, coreset_ratio=coreset,
                                            threads=threads, seed=seed)  # fmt: skip
            theirs = {"method": "anomalib PatchCore", "pro": None, **theirs}
            rows.append(theirs)
            ours["vs_anomalib"] = {
                "image_auroc_diff": ours["image_auroc"] - theirs["image_auroc"],
                "pixel_auroc_diff": ours["pixel_auroc"] - theirs["pixel_auroc"],
                "ms_ratio": ours["ms_per_image"] / theirs["ms_per_image"],
                "fit_ratio": ours["fit_s"] / theirs["fit_s"],
            }
    return {
        "benchmark": "inspection",
        "model": f"PatchCore on {backbone_spec(backbone)}",
        **result_header(torch.device("cpu")),
        "data": str(data),
        "backbone": backbone_spec(backbone),
        "weights": str(weights),
        "image_size": size,
        "coreset": coreset,
        "seed": seed,
        "threads": threads,
        "precision": "fp32",
        "rows": rows,
        "notes": notes,
    }
