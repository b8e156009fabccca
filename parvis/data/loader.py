"""DataLoader factory and the device prefetcher that measures how long the model waits for data.

The loader produces uint8 batches (see transforms.py); :class:`DevicePrefetcher` moves each batch
to the device, converts and normalizes it there, and on CUDA does so on a side stream one batch
ahead so the host-to-device copy overlaps with the previous step's compute. It times everything
the consumer spends waiting on it, so every training/eval/bench loop can report its data-wait
fraction without instrumenting itself.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, SequentialSampler

from parvis import runtime
from parvis.data.stream import EpochSampler
from parvis.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Normalize
from parvis.errors import ParvisError


class Batch(NamedTuple):
    images: torch.Tensor  # (B, C, H, W) channels-last: uint8 from the loader, normalized float after the prefetcher
    targets: Any  # (B,) class ids | (B, H, W) masks | list of {"boxes", "labels", ...} dicts
    skipped: int  # samples dropped by on_bad_sample="skip" while forming this batch


def _in_worker() -> bool:
    return torch.utils.data.get_worker_info() is not None


def _empty_shared(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialized tensor in shared memory (what default_collate allocates in workers), so a
    batch made in a worker crosses to the main process without another copy."""
    numel = 1
    for d in shape:
        numel *= d
    storage = torch.empty(0, dtype=dtype)._typed_storage()._new_shared(numel, device="cpu")
    return torch.empty(0, dtype=dtype).new(storage).view(shape)


def _stack(tensors: list[torch.Tensor], shared: bool) -> torch.Tensor:
    if shared:
        return torch.stack(tensors, out=_empty_shared((len(tensors), *tensors[0].shape), tensors[0].dtype))
    return torch.stack(tensors)


def collate(samples: list, normalize: Normalize | None = None) -> Batch:
    """Stack (image, target) samples; None samples (skipped bad files) are dropped and counted.

    Images are stacked as (B, H, W, C) and returned as a (B, C, H, W) view: channels-last memory,
    which convolutions want on CPU and CUDA and which the decoders produce anyway. With `normalize`
    (the CPU path, see build_loader) the float conversion happens here, in the worker.
    """
    kept = [s for s in samples if s is not None]
    skipped = len(samples) - len(kept)
    if not kept:
        return Batch(torch.empty(0, dtype=torch.uint8), None, skipped)
    shared = _in_worker()
    hwc = [s[0].as_subclass(torch.Tensor).permute(1, 2, 0) for s in kept]
    images = _stack(hwc, shared=shared and normalize is None).permute(0, 3, 1, 2)
    if normalize is not None:
        out = _empty_shared(tuple(images.permute(0, 2, 3, 1).shape), normalize.dtype) if shared else None
        images = normalize(images, out=out)
    first = kept[0][1]
    if isinstance(first, dict):
        targets = [t for _, t in kept]
    elif isinstance(first, torch.Tensor):  # segmentation masks
        targets = _stack([t.as_subclass(torch.Tensor) for _, t in kept], shared=shared)
    else:  # class ids
        targets = torch.tensor([t for _, t in kept], dtype=torch.int64)
    return Batch(images, targets, skipped)


def build_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    train: bool,
    device: torch.device | None = None,
    workers: int | None = None,
    dist: runtime.DistInfo | None = None,
    seed: int = 0,
    prefetch_factor: int = 4,
    drop_last: bool | None = None,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    persistent: bool = True,
) -> DataLoader:
    """A DataLoader set up for `device`: workers from runtime (unless given), persistent workers,
    pinned memory on CUDA, a DistributedSampler when running under torchrun.

    Where batches go: for an accelerator they stay uint8 (a quarter of the bytes to copy) and
    DevicePrefetcher normalizes them there. For the CPU the workers normalize (with `mean`/`std`)
    into shared memory, so the main process, which runs the model, does no pixel work at all:
    normalizing in the main process measured 1.5-2x slower end to end on 2 busy cores, because its
    multi-threaded ops waited for cores the workers held.
    """
    if batch_size < 1:
        raise ParvisError(f"batch size {batch_size} must be at least 1")
    if len(dataset) == 0:
        raise ParvisError("the dataset is empty: no samples to load; check the data path")
    device = device or runtime.default_device()
    local_world = dist.local_world_size if dist else None
    workers = runtime.recommended_workers(device, local_world) if workers is None else workers
    if workers < 0:
        raise ParvisError(f"--workers {workers} must be 0 (load in the main process) or more")
    if train or (dist is not None and dist.enabled):
        # Training always draws its order from DistributedSampler's (seed, epoch) permutation, one
        # replica or many: N processes with batch B then see exactly the samples one process sees
        # with batch N*B, which is what makes multi-process runs comparable with single ones.
        replicas, rank = (dist.world_size, dist.rank) if dist is not None else (1, 0)
        # A stream (ShapesStream) makes a new sample for every index: epoch e asks for e * len + i.
        kind = EpochSampler if getattr(dataset, "indexed_by_epoch", False) else DistributedSampler
        sampler = kind(dataset, num_replicas=replicas, rank=rank, shuffle=train, seed=seed)
    else:
        sampler = SequentialSampler(dataset)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate
        if device.type != "cpu"
        else functools.partial(collate, normalize=Normalize(mean, std, memory_format=torch.channels_last)),
        pin_memory=runtime.pin_memory(device),
        drop_last=train if drop_last is None else drop_last,
        persistent_workers=persistent and workers > 0,
        prefetch_factor=prefetch_factor if workers > 0 else None,
        worker_init_fn=runtime.worker_seed_init,
        generator=torch.Generator().manual_seed(seed),
    )
    loader.parvis_seed = seed
    return loader


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Make epoch `epoch`'s order and augmentation a function of (seed, epoch) alone.

    So a run resumed at an epoch boundary sees the same data as one that never stopped: the
    sampler's permutation is seeded by epoch, and so is the loader's generator, from which
    non-persistent workers draw their base seed each epoch.
    """
    seed = getattr(loader, "parvis_seed", 0)
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    if loader.generator is not None:
        loader.generator.manual_seed(seed + 1_000_003 * (epoch + 1))


@dataclass
class LoaderStats:
    batches: int = 0
    images: int = 0
    skipped: int = 0
    wait_s: float = 0.0  # time the consumer spent blocked on the loader (incl. copy + normalize on CPU)
    total_s: float = 0.0  # wall time from the first request to the last batch handed out

    @property
    def wait_fraction(self) -> float:
        return self.wait_s / self.total_s if self.total_s > 0 else 0.0

    @property
    def images_per_s(self) -> float:
        return self.images / self.total_s if self.total_s > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            "batches": self.batches,
            "images": self.images,
            "skipped": self.skipped,
            "wait_s": round(self.wait_s, 4),
            "total_s": round(self.total_s, 4),
            "wait_fraction": round(self.wait_fraction, 4),
            "images_per_s": round(self.images_per_s, 1),
        }


class DevicePrefetcher:
    """Iterate a loader's batches on `device`, normalized, in `memory_format`, timing the data wait.

    CUDA: batch k+1 is copied (non_blocking, from pinned memory) and normalized on a side stream
    while the consumer works on batch k; the compute stream waits on that stream only when it
    takes the batch. MPS: the same conversion, done synchronously. CPU: batches arrive normalized
    from build_loader's workers and pass through. `mean`/`std` must match the loader's.
    """

    def __init__(
        self,
        loader,
        device: torch.device,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        dtype: torch.dtype = torch.float32,
        memory_format: torch.memory_format | None = None,
        mask_dtype: torch.dtype = torch.int64,
    ):
        self.loader = loader
        self.device = torch.device(device)
        memory_format = memory_format or runtime.preferred_memory_format(self.device)
        self.normalize = Normalize(mean, std, dtype, memory_format).to(self.device)
        self.mask_dtype = mask_dtype
        self.stats = LoaderStats()

    def __len__(self) -> int:
        return len(self.loader)

    def _to_device(self, batch: Batch) -> Batch:
        nb = self.device.type == "cuda"
        images = batch.images
        if images.dtype == torch.uint8 and images.numel():
            images = self.normalize(images.to(self.device, non_blocking=nb))
        elif images.numel():  # normalized by the loader's workers (the CPU path)
            images = images.to(self.device, self.normalize.dtype, non_blocking=nb)
        targets = batch.targets
        if isinstance(targets, torch.Tensor):
            targets = targets.to(self.device, non_blocking=nb)
            if targets.dim() == 3 and not targets.is_floating_point():  # masks: uint8 -> int64 (ignore_index)
                targets = targets.to(self.mask_dtype)  # (stereo disparity maps stay float)
        elif isinstance(targets, list):
            targets = [
                {k: v.to(self.device, non_blocking=nb) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
                for t in targets
            ]
        return Batch(images, targets, batch.skipped)

    def _fetch(self, it, stream) -> Batch | None:
        try:
            batch = next(it)
        except StopIteration:
            return None
        if stream is None:
            return self._to_device(batch)
        with torch.cuda.stream(stream):
            return self._to_device(batch)

    def __iter__(self):
        self.stats = LoaderStats()
        stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        start = time.perf_counter()
        it = iter(self.loader)
        batch = self._fetch(it, stream)
        self.stats.wait_s += time.perf_counter() - start
        while batch is not None:
            t0 = time.perf_counter()
            if stream is not None:
                current = torch.cuda.current_stream(self.device)
                current.wait_stream(stream)
                # Tensors made on the side stream are used on the compute stream: tell the caching
                # allocator, or it may hand their memory out again while compute still reads it.
                for t in _tensors(batch):
                    t.record_stream(current)
            self.stats.batches += 1
            self.stats.images += len(batch.images)
            self.stats.skipped += batch.skipped
            self.stats.wait_s += time.perf_counter() - t0
            self.stats.total_s = time.perf_counter() - start
            yield batch
            t0 = time.perf_counter()
            batch = self._fetch(it, stream)
            self.stats.wait_s += time.perf_counter() - t0
        self.stats.total_s = time.perf_counter() - start


def _tensors(batch: Batch):
    yield batch.images
    if isinstance(batch.targets, torch.Tensor):
        yield batch.targets
    elif isinstance(batch.targets, list):
        for t in batch.targets:
            yield from (v for v in t.values() if isinstance(v, torch.Tensor))
