import json
from pathlib import Path

import pytest
import torch
from torchvision import tv_tensors

from parvis.data.check import open_dataset
from parvis.data.loader import Batch, DevicePrefetcher, build_loader, collate
from parvis.data.transforms import build_transform
from parvis.errors import ParvisError

HERE = Path(__file__).parent


def _img(v=0):
    return tv_tensors.Image(torch.full((3, 4, 4), v, dtype=torch.uint8))


def test_collate_drops_and_counts_skipped_samples():
    batch = collate([(_img(1), 0), None, (_img(2), 3), None])
    assert batch.skipped == 2
    assert batch.images.shape == (2, 3, 4, 4) and batch.images.dtype == torch.uint8
    assert batch.targets.tolist() == [0, 3]
    empty = collate([None, None])
    assert empty.skipped == 2 and empty.images.numel() == 0


def test_collate_masks_and_detection_targets():
    mask = tv_tensors.Mask(torch.ones(4, 4, dtype=torch.uint8))
    batch = collate([(_img(), mask), (_img(), mask)])
    assert batch.targets.shape == (2, 4, 4) and batch.targets.dtype == torch.uint8
    det = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    batch = collate([(_img(), det), (_img(), det)])
    assert isinstance(batch.targets, list) and len(batch.targets) == 2


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_and_prefetcher_on_cpu(shapes_dir, workers):
    ds = open_dataset(shapes_dir, "classification", "train", transform=build_transform("classification", True, 32))
    loader = build_loader(ds, 8, train=True, device=torch.device("cpu"), workers=workers)
    pre = DevicePrefetcher(loader, torch.device("cpu"))
    seen = 0
    for batch in pre:
        assert isinstance(batch, Batch)
        assert batch.images.dtype == torch.float32 and batch.images.shape[1:] == (3, 32, 32)
        assert batch.images.is_contiguous(memory_format=torch.channels_last)
        assert -3 < batch.images.mean().item() < 3
        seen += len(batch.images)
    assert seen == pre.stats.images == (len(ds) // 8) * 8  # drop_last in training
    assert pre.stats.batches == len(loader)
    assert 0 < pre.stats.wait_fraction <= 1 and pre.stats.images_per_s > 0


def test_segmentation_masks_arrive_as_int64(shapes_dir):
    ds = open_dataset(shapes_dir, "segmentation", "val", transform=build_transform("segmentation", False, 32))
    batch = next(iter(DevicePrefetcher(build_loader(ds, 4, train=False, workers=0), torch.device("cpu"))))
    assert batch.targets.dtype == torch.int64 and batch.targets.shape == (4, 32, 32)
    assert set(batch.targets.unique().tolist()) <= {0, 1, 2, 3, 4, 5, 255}


def test_skipped_bad_files_are_counted(tmp_path, shapes_dir):
    import shutil

    root = tmp_path / "cls"
    shutil.copytree(shapes_dir / "classification" / "val", root)
    victim = next(root.glob("*/*.jpg"))
    victim.write_bytes(b"")
    ds = open_dataset(
        root, "classification", "val", transform=build_transform("classification", False, 32), on_bad_sample="skip"
    )
    pre = DevicePrefetcher(build_loader(ds, 4, train=False, workers=0), torch.device("cpu"))
    total = sum(len(b.images) for b in pre)
    assert pre.stats.skipped == 1 and total == len(ds) - 1


def test_loader_rejects_bad_arguments(shapes_dir):
    ds = open_dataset(shapes_dir, "classification", "val")
    with pytest.raises(ParvisError, match="batch size"):
        build_loader(ds, 0, train=False)
    with pytest.raises(ParvisError, match="--workers"):
        build_loader(ds, 4, train=False, workers=-1)


@pytest.mark.distributed
def test_distributed_sampler_under_two_gloo_processes(tmp_path, shapes_dir, torchrun):
    """torchrun starts 2 processes; each loads its shard; together they cover the split exactly once."""
    out = tmp_path / "shards.json"
    torchrun(HERE / "dist_loader_worker.py", shapes_dir, out, timeout=240)
    shards = json.loads(out.read_text())
    assert len(shards) == 2
    a, b = (set(s["indices"]) for s in shards)
    assert a and b and not (a & b)
    assert a | b == set(range(shards[0]["dataset_len"]))
    assert {s["backend"] for s in shards} == {"gloo"}


@pytest.mark.cuda
def test_prefetcher_on_cuda_normalizes_uint8_on_the_gpu(shapes_dir):
    device = torch.device("cuda", 0)
    ds = open_dataset(shapes_dir, "classification", "train", transform=build_transform("classification", True, 32))
    loader = build_loader(ds, 8, train=True, device=device, workers=1)
    assert loader.pin_memory
    first = next(iter(loader))
    assert first.images.dtype == torch.uint8  # stays uint8 until the GPU
    pre = DevicePrefetcher(loader, device)
    for batch in pre:
        assert batch.images.is_cuda and batch.images.dtype == torch.float32
        assert batch.images.is_contiguous(memory_format=torch.channels_last)
        assert batch.targets.is_cuda
    assert pre.stats.batches == len(loader)
