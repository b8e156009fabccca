"""The shapes data as a stream: fresh scenes every epoch, rendered in the loader workers.

    train = ShapesStream(task="classification", length=3200, size=64, seed=7, transform=...)
    loader = build_loader(train, 64, train=True)     # build_loader gives it an EpochSampler
    set_epoch(loader, epoch)                          # epoch e draws scenes e * length ... (e + 1) * length - 1

Sample `k` of the stream is scene `k` of the generator under the stream's own seed, so a stream
never repeats a scene of the on-disk dataset (different seed) nor one of its own earlier epochs
(different index), and what step s of epoch e sees depends only on (seed, e, s): the sampler
permutes `range(length)` by (seed, epoch) and adds `epoch * length`. Scenes are rendered at
twice the training size, at most the on-disk size (7 ms at 128 px on one core; 22 ms
at 256), so sensor noise and edges are close to the on-disk scenes' after their downscale.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, DistributedSampler
from torchvision import tv_tensors

from parvis.data.synth import CLASSES, dominant_class, render_scene

# Added to the dataset's seed: the stream's scenes are not the on-disk ones.
STREAM_SEED_OFFSET = 1_000_003


class ShapesStream(Dataset):
    """`length` scenes per epoch for `task`, in the readers' (image, target) form."""

    indexed_by_epoch = True  # build_loader: sample indices run past len(self), epoch by epoch

    def __init__(self, task: str, length: int, size: int, seed: int = 0, transform=None):
        # `size`: the render size (>= 32 px); the training transform resizes to the model's input.
        self.task, self.length, self.size, self.transform = task, int(length), max(32, int(size)), transform
        self.seed = int(seed) + STREAM_SEED_OFFSET
        self.classes = list(CLASSES) if task != "segmentation" else ["background", *CLASSES]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        image, mask, instances = render_scene(int(index), self.size, self.seed)
        picture = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1))
        if self.task == "classification":
            target = dominant_class(int(index), self.seed)
        elif self.task == "segmentation":
            target = tv_tensors.Mask(torch.from_numpy(mask))
        else:
            boxes = [(x, y, x + w, y + h) for x, y, w, h in (inst["bbox"] for inst in instances)]
            target = {
                "boxes": tv_tensors.BoundingBoxes(
                    torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                    format="XYXY",
                    canvas_size=(self.size, self.size),
                ),  # fmt: skip
                "labels": torch.tensor([inst["category_id"] - 1 for inst in instances], dtype=torch.int64),
                "image_id": int(index) + 1,
            }
        if self.transform is not None:
            picture, target = self.transform(picture, target)
        return picture, target


class EpochSampler(DistributedSampler):
    """DistributedSampler whose indices of epoch e are offset by e * len(dataset): for datasets that
    make a new sample for every index (ShapesStream)."""

    def __iter__(self):
        offset = self.epoch * len(self.dataset)
        return (offset + i for i in super().__iter__())
