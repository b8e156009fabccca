"""The peer of `parvis bench learn`: a plain PyTorch + torchvision training loop, as a user would write it.

    python benchmarks/peer_train.py --task classification --model resnet18 --data DIR --size 32 \
        --batch 32 --time 180 --threads 2 --workers 1 --json peer.json

Classification follows torchvision's classification reference (references/classification/train.py):
SGD with momentum 0.9, lr 0.1 x batch / 256 (the reference's 0.1 at 256), weight decay 1e-4, a
cosine schedule over the run, RandomResizedCrop(size) + RandomHorizontalFlip for training,
Resize(size / 0.875) + CenterCrop(size) for evaluation, ImageNet normalization, torchvision's
ImageFolder with PIL decoding. Segmentation follows the segmentation reference
(references/segmentation/train.py): SGD lr 0.01 x batch / 8... here lr 0.01, momentum 0.9, weight
decay 1e-4, the "poly" schedule (1 - step / total) ** 0.9, random resize 0.5-2x of the base size +
horizontal flip + random crop, cross-entropy with the dataset's ignore index, mIoU on the val split.

The network is built by name through parvis's registry (`parvis.models.build_model`), so both sides
train the same architecture; nothing else comes from parvis. With --time the number of epochs is
planned from the first epoch's speed, as a user with a deadline would; after every epoch the val
metric is recorded with the training seconds so far (evaluation time excluded, as for parvis).
Precision and layout are flags (default: what parvis's `auto` would use here, so the comparison is
of recipe and engine, not of bf16).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets, tv_tensors
from torchvision.transforms import v2

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def classification_sets(root: Path, size: int):
    train_tf = v2.Compose([v2.PILToTensor(), v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(),
                           v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])  # fmt: skip
    eval_tf = v2.Compose([v2.PILToTensor(), v2.Resize(int(round(size / 0.875)), antialias=True), v2.CenterCrop(size),
                          v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])  # fmt: skip
    meta = yaml.safe_load((root / "dataset.yaml").read_text()) if (root / "dataset.yaml").exists() else None
    if meta:  # parvis's shapes layout: the ImageFolder splits it names
        train_dir, val_dir = root / meta["classification"]["train"], root / meta["classification"]["val"]
    else:
        train_dir, val_dir = root / "train", root / "val"
    rgb = lambda path: Image.open(path).convert("RGB")  # noqa: E731 - the reference's loader
    train = datasets.ImageFolder(train_dir, transform=train_tf, loader=rgb)
    val = datasets.ImageFolder(val_dir, transform=eval_tf, loader=rgb)
    return train, val, len(train.classes), None


class MaskPairs(Dataset):
    def __init__(self, images: Path, masks: Path, transform):
        self.items = sorted(images.glob("*.jpg")) + sorted(images.glob("*.png"))
        self.masks, self.transform = masks, transform

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path = self.items[i]
        image = tv_tensors.Image(v2.functional.pil_to_tensor(Image.open(path).convert("RGB")))
        mask = tv_tensors.Mask(torch.from_numpy(np.array(Image.open(self.masks / (path.stem + ".png")))))
        return self.transform(image, mask)


def segmentation_sets(root: Path, size: int):
    meta = yaml.safe_load((root / "dataset.yaml").read_text())["segmentation"]
    fill = {tv_tensors.Image: 0, tv_tensors.Mask: meta.get("ignore_index", 255)}
    train_tf = v2.Compose([v2.RandomResize(int(0.5 * size), int(2.0 * size), antialias=True), v2.RandomHorizontalFlip(),
                           v2.RandomCrop(size, pad_if_needed=True, fill=fill), v2.ToDtype(torch.float32, scale=True),
                           v2.Normalize(MEAN, STD)])  # fmt: skip
    eval_tf = v2.Compose([v2.Resize((size, size), antialias=True), v2.ToDtype(torch.float32, scale=True),
                          v2.Normalize(MEAN, STD)])  # fmt: skip
    train = MaskPairs(root / meta["train"]["images"], root / meta["train"]["masks"], train_tf)
    val = MaskPairs(root / meta["val"]["images"], root / meta["val"]["masks"], eval_tf)
    return train, val, len(meta["classes"]), meta.get("ignore_index", 255)


def evaluate(model, loader, task, num_classes, ignore, autocast, memory_format) -> float:
    model.eval()
    correct = total = 0
    inter = torch.zeros(num_classes)
    union = torch.zeros(num_classes)
    with torch.no_grad(), autocast():
        for images, targets in loader:
            logits = model(images.contiguous(memory_format=memory_format)).float()
            if task == "classification":
                correct += (logits.argmax(1) == targets).sum().item()
                total += len(targets)
            else:
                pred, t = logits.argmax(1), targets.long()
                keep = t != ignore
                for c in range(num_classes):
                    p, g = (pred == c) & keep, (t == c) & keep
                    inter[c] += (p & g).sum()
                    union[c] += (p | g).sum()
    model.train()
    if task == "classification":
        return correct / max(1, total)
    present = union > 0
    return float((inter[present] / union[present]).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=("classification", "segmentation"), default="classification")
    ap.add_argument("--model", required=True, help="a parvis registry name (the same network parvis trains)")
    ap.add_argument("--data", required=True)
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--time", type=float, default=None, help="seconds of training (epochs planned to fit)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--stem", default=None, help="a parvis resnet's stem (the network parvis trained)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if (args.epochs is None) == (args.time is None):
        ap.error("give exactly one of --epochs and --time")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    root = Path(args.data)
    make_sets = classification_sets if args.task == "classification" else segmentation_sets
    train_set, val_set, num_classes, ignore = make_sets(root, args.size)

    from parvis.models import build_model  # the same architecture as parvis trains, nothing more

    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    options = {"stem": args.stem} if args.stem else {}
    model = build_model(args.model, num_classes, input_size=args.size, **options).to(memory_format=memory_format)
    loader = DataLoader(train_set, batch_size=args.batch, shuffle=True, num_workers=args.workers, drop_last=True,
                        persistent_workers=args.workers > 0)  # fmt: skip
    val_loader = DataLoader(val_set, batch_size=64, num_workers=args.workers)
    if args.task == "classification":
        lr, momentum, wd = 0.1 * args.batch / 256, 0.9, 1e-4
    else:
        lr, momentum, wd = 0.01, 0.9, 1e-4
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=wd)

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")

    steps_per_epoch = len(loader)
    epochs = args.epochs or 10**6
    total = epochs * steps_per_epoch

    def factor(step: int) -> float:
        progress = min(1.0, step / max(1, total))
        if args.task == "segmentation":
            return (1 - progress) ** 0.9
        return 0.5 * (1 + math.cos(math.pi * progress))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    curve, train_s, step, images = [], 0.0, 0, 0
    epoch = 0
    while epoch < epochs:
        t0 = time.perf_counter()
        for batch_images, targets in loader:
            with autocast():
                logits = model(batch_images.contiguous(memory_format=memory_format))
            if args.task == "classification":
                loss = F.cross_entropy(logits.float(), targets)
            else:
                loss = F.cross_entropy(logits.float(), targets.long(), ignore_index=ignore)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            images += len(targets)
        train_s += time.perf_counter() - t0
        epoch += 1
        if args.time is not None and epoch == 1:  # plan the run from the first epoch, as with a deadline
            epochs = max(1, int(args.time / train_s))
            total = epochs * steps_per_epoch
        metric = evaluate(model, val_loader, args.task, num_classes, ignore, autocast, memory_format)
        curve.append({"seconds": round(train_s, 2), "epoch": epoch, "metric": round(metric, 4)})
        print(f"peer epoch {epoch}/{epochs}  {train_s:.0f} s  {images / train_s:.0f} img/s  metric {metric:.4f}",
              flush=True)  # fmt: skip
    shape = "cosine" if args.task == "classification" else "poly 0.9"
    result = {
        "recipe": f"torchvision reference: SGD momentum 0.9, lr {lr:.4g}, wd {wd:g}, {shape} schedule",
        "model": args.model, "task": args.task, "size": args.size, "batch": args.batch, "epochs": epochs,
        "precision": args.precision, "channels_last": args.channels_last, "threads": args.threads,
        "workers": args.workers, "curve": curve, "final_metric": curve[-1]["metric"],
        "train_s": round(train_s, 2), "img_s": round(images / train_s, 1),
    }  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
