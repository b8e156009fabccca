"""`parvis bench data`: loader throughput of parvis's pipeline vs a plain torchvision baseline.

Both pipelines read the same ImageFolder files, make the same random-resized crops of the same
size in batches of the same size, and hand the consumer normalized float32 (B, 3, S, S) tensors:
  baseline: torchvision.datasets.ImageFolder + PIL + classic transforms (RandomResizedCrop,
            RandomHorizontalFlip, ToTensor, Normalize) + a default DataLoader;
  parvis:   the fastest correct decoder, v2 transforms on uint8, uint8 batches through shared
            memory, normalization once per batch in the DevicePrefetcher.
They run alternately, several times, in one process, and the median of each is reported, so a
noisy machine affects both alike.
"""

from __future__ import annotations

import itertools
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torchvision import datasets
from torchvision import transforms as T

from parvis import runtime
from parvis.bench.micro import jpeg_decode_rate
from parvis.data import decode as decode_mod
from parvis.data.check import open_dataset
from parvis.data.loader import DevicePrefetcher, build_loader
from parvis.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transform
from parvis.errors import ParvisError


def _baseline_loader(root: Path, size: int, batch_size: int, workers: int, seed: int):
    transform = T.Compose(
        [
            T.RandomResizedCrop(size),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    dataset = datasets.ImageFolder(str(root), transform=transform)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        persistent_workers=False,
        generator=torch.Generator().manual_seed(seed),
    )


def _time_epoch(batches, max_images: int) -> tuple[float, int]:
    """Images/s over one pass, not counting the first batch (worker start-up is not throughput)."""
    it = iter(batches)
    first = next(it)
    images, t0 = 0, time.perf_counter()
    for batch in it:
        images += len(batch[0])
        if images + len(first[0]) >= max_images:
            break
    elapsed = time.perf_counter() - t0
    return (images / elapsed if elapsed > 0 else 0.0), images


def compare_decoders(paths: list[Path], min_size: int | None = None, seconds: float = 2.0) -> list[dict]:
    """Single-core decode rate of each decoder on real files, and its pixel error against PIL."""
    datas = [p.read_bytes() for p in paths]
    reference = [decode_mod.decode(d, "pil") for d in datas]
    rows = []
    for name in decode_mod.DECODERS:
        try:
            outs = [decode_mod.decode(d, name) for d in datas]
        except Exception as exc:  # a decoder missing on this machine is a row, not a failure
            rows.append({"decoder": name, "error": str(exc)})
            continue
        err = max(
            float(np.abs(o.astype(np.int16) - r.astype(np.int16)).mean()) for o, r in zip(outs, reference, strict=True)
        )
        rate = statistics.median(jpeg_decode_rate(d, name, seconds / len(datas), warmup_s=0.02) for d in datas)
        row = {"decoder": name, "img_s_per_core": round(rate, 1), "mean_abs_diff_vs_pil": round(err, 3)}
        if min_size and name in ("simplejpeg", "pil-draft"):
            small = [decode_mod.decode(d, name, min_size=min_size) for d in datas]
            row["reduced_shape"] = list(small[0].shape)
            row["reduced_img_s_per_core"] = round(
                statistics.median(jpeg_decode_rate(d, name, seconds / len(datas), min_size, 0.02) for d in datas), 1
            )
        rows.append(row)
    return rows


def bench_data(
    root: str | Path,
    size: int = 224,
    workers: list[int] | None = None,
    batch_size: int = 64,
    max_images: int = 1024,
    repeats: int = 3,
    split: str = "train",
    seed: int = 0,
    progress=None,
) -> dict:
    """Run the comparison; returns the JSON-serializable result (rows per worker count + headline)."""
    device = torch.device("cpu")  # loader throughput is a host-side measurement
    transform = build_transform("classification", train=True, size=size)
    dataset = open_dataset(root, "classification", split, transform=transform)
    if workers is None:
        workers = list(range(0, runtime.inventory().cpu.usable_cores + 1))
    if any(w < 0 for w in workers):
        raise ParvisError(f"--workers {workers}: worker counts must be 0 or more")
    max_images = min(max_images, len(dataset))
    if max_images < 2 * batch_size:
        raise ParvisError(
            f"{root}: only {len(dataset)} images in the {split} split; need at least {2 * batch_size} "
            f"for --batch-size {batch_size} (lower --batch-size or generate more data)"
        )

    rows = []
    for w in workers:
        results: dict[str, list[float]] = {"baseline": [], "parvis": []}
        for rep, name in itertools.product(range(repeats), ("baseline", "parvis")):
            if progress:
                progress(f"workers={w} {name} run {rep + 1}/{repeats}")
            if name == "baseline":
                loader = _baseline_loader(dataset.root, size, batch_size, w, seed + rep)
                rate, _ = _time_epoch(loader, max_images)
            else:
                loader = build_loader(dataset, batch_size, train=True, device=device, workers=w, seed=seed + rep)
                rate, _ = _time_epoch(DevicePrefetcher(loader, device), max_images)
            del loader  # persistent workers exit with their loader
            results[name].append(rate)
        base, ours = statistics.median(results["baseline"]), statistics.median(results["parvis"])
        rows.append(
            {
                "workers": w,
                "baseline_img_s": round(base, 1),
                "parvis_img_s": round(ours, 1),
                "speedup": round(ours / base, 2) if base else None,
                "baseline_runs": [round(r, 1) for r in results["baseline"]],
                "parvis_runs": [round(r, 1) for r in results["parvis"]],
            }
        )

    sample_paths = [p for p, _ in dataset.samples[:8]]
    headline = rows[-1]
    return {
        "benchmark": "data",
        "dataset": str(root),
        "split": split,
        "images_in_split": len(dataset),
        "images_per_run": max_images,
        "crop": size,
        "batch_size": batch_size,
        "repeats": repeats,
        "decoder": decode_mod.default_decoder(),
        "source_image_shape": list(decode_mod.read_image(sample_paths[0]).shape),
        "workers": headline["workers"],
        "parvis_img_s": headline["parvis_img_s"],
        "baseline_img_s": headline["baseline_img_s"],
        "speedup": headline["speedup"],
        "rows": rows,
        "decoders": compare_decoders(sample_paths, min_size=size),
        **runtime.result_header("cpu"),
    }
