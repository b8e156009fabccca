"""Run by test_loader under torchrun: each rank loads its DistributedSampler shard and reports it."""

import json
import sys

import torch
import torch.distributed as dist

from parvis import runtime
from parvis.data.check import open_dataset
from parvis.data.loader import DevicePrefetcher, build_loader
from parvis.data.transforms import build_transform


class WithIndex(torch.utils.data.Dataset):
    """The real reader, with the sample index as the target so shards can be compared."""

    def __init__(self, inner):
        self.inner = inner

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        image, _ = self.inner[i]
        return image, i


def main(root: str, out: str) -> None:
    with runtime.distributed("cpu") as info:
        inner = open_dataset(root, "classification", "train", transform=build_transform("classification", False, 32))
        ds = WithIndex(inner)
        loader = build_loader(ds, 4, train=False, device=info.device, workers=1, dist=info)
        indices = [i for batch in DevicePrefetcher(loader, info.device) for i in batch.targets.tolist()]
        gathered = [None] * info.world_size
        dist.all_gather_object(
            gathered, {"rank": info.rank, "indices": indices, "backend": info.backend, "dataset_len": len(ds)}
        )
        if info.is_main:
            with open(out, "w") as f:
                json.dump(gathered, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
