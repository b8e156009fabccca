"""Under torchrun (2 gloo processes): every registered model trains one step under FSDP2 as parvis
prepares it (`prepare_model`, strategy=fsdp) and must end with the weights one process gets.

Each process takes half of a 4-image batch; the single-process reference, computed on every rank
without FSDP, steps on the mean of the two half-batch losses (what FSDP's averaged gradients are).
Normalization layers run in eval mode for the step (batch statistics differ between one batch and
two halves by construction). Writes OUT/<model>.json on rank 0: the largest weight difference.
Usage: fsdp_worker.py OUT [MODEL ...]
"""

import copy
import json
import sys
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from parvis import runtime
from parvis.config import TrainConfig
from parvis.engine.trainer import prepare_model
from parvis.models import MODELS, build_model

SIZE = 64


def batch_for(task: str, num_classes: int, g: torch.Generator):
    if task == "stereo":  # a pair as 6 channels, disparity in pixels (0: no ground truth)
        disparity = torch.rand(4, SIZE, 2 * SIZE, generator=g) * 40
        return torch.randn(4, 6, SIZE, 2 * SIZE, generator=g), disparity * (disparity > 2)
    images = torch.randn(4, 3, SIZE, SIZE, generator=g)
    if task == "classification":
        return images, torch.randint(0, num_classes, (4,), generator=g)
    if task == "segmentation":
        return images, torch.randint(0, num_classes, (4, SIZE, SIZE), generator=g)
    targets = []
    for _ in range(4):
        xy = torch.rand(2, 2, generator=g) * (SIZE / 2)
        boxes = torch.cat([xy, xy + 8 + torch.rand(2, 2, generator=g) * (SIZE / 2 - 8)], dim=1)
        targets.append({"boxes": boxes, "labels": torch.randint(0, num_classes, (2,), generator=g)})
    return images, targets


def trained_models() -> list[str]:
    """Every registered model trained with gradients: not the inspection wrappers (patchcore is fitted
    without gradients; defect_segmenter trains its segmentation trunk, which is in this list)."""
    return [name for name in MODELS.names() if MODELS.info(name)["task"] != "inspection"]


def half(targets, rank: int):
    return targets[2 * rank : 2 * rank + 2]


def main(out: Path, names: list[str]) -> None:
    dist = runtime.init_distributed("cpu")
    cfg = TrainConfig(strategy="fsdp", device="cpu", precision="fp32", channels_last="off", recipe="off")
    for name in names:
        task = MODELS.info(name)["task"]
        torch.manual_seed(0)
        model = build_model(name, 3, input_size=SIZE)
        reference = copy.deepcopy(model)
        images, targets = batch_for(task, 3, torch.Generator().manual_seed(1))

        # one process: the mean of both halves' losses
        reference.eval()
        loss = sum(reference.loss(reference(half(images, r)), half(targets, r)) for r in (0, 1)) / 2
        loss.backward()
        with torch.no_grad():
            for p in reference.parameters():
                if p.grad is not None:
                    p -= 0.1 * p.grad
        want = reference.state_dict()

        # two processes under FSDP2, as the trainer prepares the model
        sharded = prepare_model(model, cfg, dist)
        sharded.eval()
        mine = half(images, dist.rank)
        loss = sharded.loss(sharded(mine), half(targets, dist.rank))
        loss.backward()
        torch.optim.SGD(sharded.parameters(), lr=0.1).step()
        got = get_model_state_dict(sharded, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if dist.rank == 0:
            diff = max((got[k].float() - want[k].float()).abs().max().item() for k in want if k in got)
            scale = max(want[k].float().abs().max().item() for k in want)
            missing = sorted(set(want) - set(got))
            result = {"max_abs_diff": diff, "max_abs_weight": scale, "missing": missing[:3]}
            (out / f"{name}.json").write_text(json.dumps(result))
    runtime.teardown_distributed()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(Path(sys.argv[1]), sys.argv[2:] or trained_models())
