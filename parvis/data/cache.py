"""A training split decoded once and kept in RAM, downscaled to what the training crops can use.

    train = open_dataset(root, "segmentation", "train", transform=train_tf)
    cached = DecodedCache(train, side=128)    # decodes every image now (threads), keeps uint8 tensors
    cached[i]                                 # the cached sample through train_tf: fresh crops every epoch

A file reader decodes and resizes every image every epoch; for small models on small inputs that
costs as much CPU as the model (a 256 px JPEG and its PNG mask: ~4 ms, a U-Net step at 64 px: ~4 ms
per image on one core). The cache pays it once. Each image keeps its short side at `side` (never
upscaled) with its target resized alike (masks nearest, boxes scaled), and the random augmentation
still runs per sample, per epoch: only the deterministic decode and downscale are shared. A training
crop keeping a fraction s of the image at `size` px reads ~size/sqrt(s) px of it, so `side` =
2 x size loses nothing for crops keeping >= 25% (recipe=auto's are >= 35% except ImageNet's
100-epoch 8%, where auto does not cache); detection resizes to size x size first, so it keeps `size`.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as F

from parvis.data.datasets import BadSampleError


def cache_side(task: str, size: int, image_side: int | None = None) -> int:
    """The short side cached images keep for training at `size` px, at most the images' own: 2 x size for
    the crops of classification and segmentation, `size` for detection (its preset resizes to size x
    size before any random step), the pairs' own for stereo (resizing would rescale the disparities)."""
    if task == "stereo":
        return int(image_side) if image_side is not None else 1 << 30
    side = int(size) if task == "detection" else 2 * int(size)
    return side if image_side is None else min(int(image_side), side)


class DecodedCache(Dataset):
    """`base` (a FileDataset) decoded and downscaled once; `base.transform` still runs per sample."""

    def __init__(self, base, side: int, threads: int | None = None):
        self.base, self.side, self.transform = base, int(side), base.transform
        self.classes = getattr(base, "classes", None)
        # JPEGs decode straight at 1/2..1/8 scale when that still covers `side` (DCT scaling).
        previous, base.min_size = base.min_size, self.side
        try:
            with ThreadPoolExecutor(threads or min(8, os.cpu_count() or 1)) as pool:
                self.items = list(pool.map(self._decode, range(len(base))))
        finally:
            base.min_size = previous
        self.nbytes = sum(item[0].numel() for item in self.items if item is not None)

    def _decode(self, index: int):
        try:
            image, target = self.base.load(index)
        except BadSampleError:
            if self.base.on_bad_sample == "skip":
                return None  # as the reader would: the loader's collate drops and counts it
            raise
        if min(image.shape[-2:]) > self.side:
            image = F.resize(image, self.side, antialias=True)
            if isinstance(target, dict):
                target = {k: F.resize(v, self.side) if k == "boxes" else v for k, v in target.items()}
            elif not isinstance(target, int):
                target = F.resize(target, self.side)  # a Mask: nearest, ids intact
        return image, target

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        item = self.items[index]
        if item is None:
            return None
        image, target = item
        if isinstance(target, dict):
            target = dict(target)  # transforms may replace entries; the cached dict stays as it was
        return self.transform(image, target) if self.transform is not None else (image, target)
