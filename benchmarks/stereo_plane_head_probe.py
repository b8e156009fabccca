"""Candidate plane heads for stereonet_small, each trained alone on the frozen two-view features of a trained
checkpoint, then scored on the val pairs' three evaluation planes (accuracy over valid pixels, as
`parvis eval` scores them). It answers in minutes which head is worth a 10-minute end-to-end run.

    python benchmarks/stereo_plane_head_probe.py runs/stereo/best.pt --heads current,deep,gwc,gwc8 --crop
    python benchmarks/stereo_plane_head_probe.py runs/stereo/best.pt --heads current,gwc --batch 16

Heads: `current` (the model's: a 1x1 mix at 1/4 and two convs at 1/8 on 9 correlations); `deep` (a 3x3 mix
at 1/4, two convs at 1/8 and two at 1/16, the last dilated); `gwc` (deep on group-wise correlations, 4 groups
x 9 offsets); `gwc8` (a 3x3 mix at 1/4 and three convs at 1/8 on group-wise correlations). --crop trains on
64x128-pixel crops of the pairs as `parvis train --task stereo` does; without it, on whole pairs.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from parvis.data.check import open_dataset
from parvis.engine.loading import load_trained
from parvis.engine.stereo_metrics import eval_planes
from parvis.models import stereo as S


def group_correlation(left, right, offsets, groups=4):
    b, c, h, w = left.shape
    lo, hi = max(max(offsets), 0), max(-min(offsets), 0)
    padded = F.pad(right, (lo, hi))
    shifted = [padded[..., lo - o : lo - o + w] for o in offsets]
    return torch.cat([(left * r).view(b, groups, c // groups, h, w).mean(2) for r in shifted], 1)


class Deep(nn.Module):
    def __init__(self, cin, width=32, sixteenth=True):
        super().__init__()
        self.inp = S.conv(cin, width)
        eighth = [S.conv(width, width, stride=2), S.conv(width, width)]
        self.d8 = nn.Sequential(*eighth, *([] if sixteenth else [S.conv(width, width, dilation=2)]))
        self.d16 = (
            nn.Sequential(S.conv(width, width, stride=2), S.conv(width, width, dilation=2)) if sixteenth else None
        )
        self.out = nn.Conv2d(width, 1, 1)

    def forward(self, x):
        a = self.inp(x)
        b = self.d8(a)
        if self.d16 is not None:
            b = b + F.interpolate(self.d16(b), size=b.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(a + F.interpolate(b, size=a.shape[-2:], mode="bilinear", align_corners=False))


def make_head(name: str, channels: int):
    """(head, correlation function)"""
    n = len(S.PLANE_OFFSETS)
    plain = S.correlation_offsets
    return {
        "current": (S.PlaneHead(n + channels), plain),
        "deep": (Deep(n + channels), plain),
        "gwc": (Deep(4 * n + channels), group_correlation),
        "gwc8": (Deep(4 * n + channels, sixteenth=False), group_correlation),
    }[name]


def features(model, data: str, split: str, limit: int | None):
    mean = torch.tensor(model.meta.mean).view(1, -1, 1, 1)
    std = torch.tensor(model.meta.std).view(1, -1, 1, 1)
    dataset = open_dataset(data, "stereo", split)
    n = min(len(dataset), limit or len(dataset))
    lefts, rights, targets = [], [], []
    with torch.inference_mode():
        for start in range(0, n, 16):
            items = [dataset[i] for i in range(start, min(n, start + 16))]
            x = (torch.stack([im.as_subclass(torch.Tensor) for im, _ in items]).float() / 255 - mean) / std
            left, right = model.encode(model._pad(x)[0])
            lefts.append(left.contiguous())
            rights.append(right.contiguous())
            targets.append(torch.stack([t for _, t in items]))
    return torch.cat(lefts), torch.cat(rights), torch.cat(targets)


def logits(head, correlate, left, right, planes, size):
    out = []
    for k in range(planes.shape[1]):
        costs = correlate(left, S.shift_right_view(right, planes[:, k] / S.DOWN), S.PLANE_OFFSETS)
        out.append(F.interpolate(head(torch.cat([costs, left], 1)), size=size, mode="bilinear", align_corners=False))
    return torch.cat(out, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--data", default="data/stereo")
    ap.add_argument("--heads", default="current,gwc8")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--planes", type=int, default=2, help="random planes per pair and step")
    ap.add_argument("--crop", action="store_true", help="train on 64x128 crops, as parvis train does")
    ap.add_argument("--val", type=int, default=200, help="val pairs scored")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_trained(args.checkpoint, torch.device("cpu")).eval().to(memory_format=torch.contiguous_format)
    max_disp = float(model.max_disp)
    train, val = features(model, args.data, "train", None), features(model, args.data, "val", args.val)
    shape = "64x128 crops" if args.crop else "whole pairs"
    print(f"{args.checkpoint}: features of {len(train[0])} train and {len(val[0])} val pairs; {args.steps} steps of "
          f"batch {args.batch} on {shape}, {args.planes} planes per pair")  # fmt: skip
    planes_eval = eval_planes(max_disp)
    for name in args.heads.split(","):
        torch.manual_seed(0)
        head, correlate = make_head(name, train[0].shape[1])
        opt = torch.optim.AdamW(head.parameters(), 2e-3, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, 2e-3, total_steps=args.steps, pct_start=max(0.05, 2 / args.steps)
        )
        start = time.perf_counter()
        for _ in range(args.steps):
            idx = torch.randint(0, len(train[0]), (args.batch,))
            left, right, target = (t[idx] for t in train)
            if args.crop:
                fh, fw = 64 // S.DOWN, 128 // S.DOWN
                y = int(torch.randint(0, left.shape[-2] - fh + 1, ()))
                x = int(torch.randint(0, left.shape[-1] - fw + 1, ()))
                left, right = left[..., y : y + fh, x : x + fw], right[..., y : y + fh, x : x + fw]
                target = target[..., S.DOWN * y : S.DOWN * (y + fh), S.DOWN * x : S.DOWN * (x + fw)]
            planes = torch.rand(args.batch, args.planes) * (max_disp - 2) + 1
            out = logits(head, correlate, left, right, planes, target.shape[-2:])
            closer = (target[:, None] > planes.view(args.batch, args.planes, 1, 1)).float()
            valid = (target > 0)[:, None].expand_as(closer).float()
            loss = (F.binary_cross_entropy_with_logits(out, closer, reduction="none") * valid).sum() / valid.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        head.eval()
        agree = total = 0
        with torch.inference_mode():
            for i in range(0, len(val[0]), 20):
                left, right, target = (t[i : i + 20] for t in val)
                full = target.shape[-2:]
                out = logits(head, correlate, left, right, torch.tensor(planes_eval).expand(len(left), -1), full)
                valid = (target > 0)[:, None]
                truth = target[:, None] > torch.tensor(planes_eval).view(1, -1, 1, 1)
                agree += (((out > 0) == truth) & valid).sum().item()
                total += valid.sum().item() * len(planes_eval)
        print(f"{name}: val plane accuracy {agree / total:.4f} ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
