"""Run by test_trainer (directly or under torchrun): train a tiny model and save its final weights.

The model has no BatchNorm (per-process batch statistics would differ between 1 and 2 processes)
and training uses the eval transforms (no random augmentation), so one process with batch 2B and
two processes with batch B each must end with the same weights.
Usage: train_worker.py DATA OUT STRATEGY BATCH
"""

import sys

import torch
from torch import nn

import parvis.engine.trainer as trainer_mod
from parvis.config import TrainConfig
from parvis.models.base import ClassificationModel
from parvis.registry import MODELS


class TinyNet(ClassificationModel):
    def __init__(self, meta):
        super().__init__(meta)
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.GroupNorm(2, 8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.GroupNorm(4, 16),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(16, meta.num_classes)

    def forward(self, images):
        return self.head(self.body(images))


if "tiny_test_net" not in MODELS.names():
    MODELS.register("tiny_test_net", task="classification")(lambda meta, **kw: TinyNet(meta))

_build_transform = trainer_mod.build_transform
trainer_mod.build_transform = lambda task, train, size, crop_scale=None, **kw: _build_transform(task, False, size)


def main(data: str, out: str, strategy: str, batch: int) -> None:
    cfg = TrainConfig(
        task="classification",
        model="tiny_test_net",
        data=data,
        epochs=2,
        size=32,
        batch=batch,
        lr=0.01,
        workers=0,
        out=out,
        strategy=strategy,
        deterministic=True,
        precision="fp32",
        clip_grad=None,
        device="cpu",
        recipe="off",
    )
    trainer_mod.train(cfg, quiet=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
