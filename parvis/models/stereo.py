"""Stereo depth: one small network with a dense disparity head and a Bi3D-style plane head.

Input: a rectified pair as one (B, 6, H, W) tensor (left RGB, then right RGB, each normalized with
the meta's mean/std), so that the loader, the prefetcher, batching in serve and every runtime see
one image tensor as for the other tasks. Disparity is in pixels of the input, on the left view.

Shared features: both views through the same 2D encoder down to 1/4 resolution (stride-2 convs,
residual blocks; StereoNet's observation that 1/4 or 1/8 resolution cost volumes lose little once
a full-resolution refinement follows).

Dense head (StereoNet-style): a correlation cost volume at 1/4 over max_disp / 4 disparities, a
2D aggregation network on the volume plus the left features (2D instead of StereoNet's 3D convs:
a CPU trains it in minutes), soft-argmin to a sub-pixel coarse disparity, bilinear upsampling and a
residual refinement at full resolution guided by the left image (dilated convs).

Plane head (Bi3D, Badki et al. 2020): for a plane at disparity D it shifts the right features by
D / 4, and a small 2D network on (left, shifted right, their product) answers per pixel "closer
than D?" (disparity > D) as a logit, upsampled to full resolution and refined by the left image.
One plane costs the shared features plus this head, a fraction of the dense head; N planes give
quantized depth, and the plane's disparity is an input, so any set of planes can be asked.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from parvis.models.base import VisionModel
from parvis.registry import MODELS
from parvis.structures import Disparity

DOWN = 4  # the features' default stride
LOCAL = 2  # px either side of the coarse disparity that the full-resolution refinement compares
PAD_TO = 8  # inputs are padded on the right/bottom to a multiple of this (and cropped back)


def conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.LeakyReLU(0.2, inplace=True),
    )


class ResBlock(nn.Module):
    def __init__(self, channels: int, dilation: int = 1):
        super().__init__()
        self.conv1 = conv(channels, channels, dilation=dilation)
        self.conv2 = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.leaky_relu(x + self.conv2(self.conv1(x)), 0.2)


class Features(nn.Module):
    """(N, 3, H, W) -> (N, C, H/down, W/down), down 2 or 4."""

    def __init__(self, channels: int = 32, down: int = DOWN, unshuffle: bool = False):
        super().__init__()
        if down == 4 and unshuffle:
            layers = [nn.PixelUnshuffle(4), nn.Conv2d(48, channels, 1), ResBlock(channels), ResBlock(channels)]
        elif down == 4:
            layers = [conv(3, 16, stride=2), conv(16, channels, stride=2), ResBlock(channels)]
        elif down == 2:
            layers = [conv(3, 16, stride=2), ResBlock(16), conv(16, channels)]
        else:
            raise ValueError(f"down must be 2 or 4, got {down}")
        self.net = nn.Sequential(*layers, nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def correlation_volume(left: Tensor, right: Tensor, levels: int) -> Tensor:
    """(B, levels, h, w): mean over channels of left(x) * right(x - d) for d = 0..levels-1 (0 where x < d)."""
    volume = []
    for d in range(levels):
        if d == 0:
            volume.append((left * right).mean(1, keepdim=True))
        else:
            shifted = F.pad(right[..., :-d], (d, 0))
            volume.append((left * shifted).mean(1, keepdim=True))
    return torch.cat(volume, 1)


def shift_right_view(right: Tensor, shift: Tensor) -> Tensor:
    """right sampled at x - shift (per sample, sub-pixel, linear; zeros outside): right aligned to the
    left view for a plane at that disparity. `shift`: (B,) in feature pixels."""
    b, _, h, w = right.shape
    xs = torch.arange(w, device=right.device, dtype=right.dtype).view(1, 1, w) - shift.to(right.dtype).view(b, 1, 1)
    gx = (2 * xs + 1) / w - 1  # align_corners=False pixel centres
    gy = (2 * torch.arange(h, device=right.device, dtype=right.dtype) + 1) / h - 1
    grid = torch.stack([gx.expand(b, h, w), gy.view(1, h, 1).expand(b, h, w)], dim=-1)
    return F.grid_sample(right, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def warp_by_disparity(right: Tensor, disparity: Tensor) -> Tensor:
    """right sampled at (x - disparity(x, y), y), bilinear, zeros outside: the right view seen from the left."""
    b, _, h, w = right.shape
    xs = torch.arange(w, device=right.device, dtype=right.dtype).view(1, 1, w) - disparity[:, 0].to(right.dtype)
    gx = (2 * xs + 1) / w - 1
    gy = ((2 * torch.arange(h, device=right.device, dtype=right.dtype) + 1) / h - 1).view(1, h, 1).expand(b, h, w)
    return F.grid_sample(right, torch.stack([gx, gy], -1), mode="bilinear", padding_mode="zeros", align_corners=False)


def correlation_window(left: Tensor, right: Tensor, radius: int) -> Tensor:
    """(B, 2 radius + 1, H, W): mean over channels of left(x) * right(x + k) for k = -radius..radius."""
    padded = F.pad(right, (radius, radius))
    w = left.shape[-1]
    return torch.cat([(left * padded[..., k : k + w]).mean(1, keepdim=True) for k in range(2 * radius + 1)], 1)


class StereoModel(VisionModel):
    """raw: (B, 1, H, W) disparity in pixels (eval); training adds the coarse disparity and plane logits."""

    def postprocess(self, raw: Tensor) -> list[Disparity]:
        return [Disparity(d[0].float(), self.meta.extra.get("focal_baseline")) for d in raw]

    def loss(self, raw, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
        return stereo_loss(raw, targets)


def stereo_loss(raw, targets: Tensor) -> Tensor:
    """Smooth L1 on valid pixels (disparity > 0) for the refined and (half weight) the coarse disparity,
    plus binary cross-entropy of the plane head against "disparity > plane" on valid pixels."""
    valid = targets > 0
    if isinstance(raw, Tensor):  # eval: the refined disparity only
        return _masked_mean(F.smooth_l1_loss(raw[:, 0].float(), targets, reduction="none"), valid)
    disparity, coarse, plane_logits, planes, volume = raw
    loss = _masked_mean(F.smooth_l1_loss(disparity[:, 0].float(), targets, reduction="none"), valid)
    loss = loss + 0.5 * _masked_mean(F.smooth_l1_loss(coarse[:, 0].float(), targets, reduction="none"), valid)
    down = -(-targets.shape[-1] // volume.shape[-1])
    loss = loss + volume_loss(volume, targets, down)
    closer = (targets[:, None] > planes.view(-1, planes.shape[-1], 1, 1)).float()
    bce = F.binary_cross_entropy_with_logits(plane_logits.float(), closer, reduction="none")
    return loss + _masked_mean(bce, valid[:, None].expand_as(bce))


def volume_loss(logits: Tensor, targets: Tensor, down: int) -> Tensor:
    """Cross-entropy of the 1/4-resolution cost volume against a "two-hot" target: the true disparity
    / 4 split between its two neighbouring levels so that the expectation is exact. A distribution
    target trains the volume far faster than a regression through soft-argmin alone."""
    b, levels, h, w = logits.shape
    truth = F.interpolate(targets[:, None], size=(h, w), mode="nearest")[:, 0]
    valid = truth > 0
    level = (truth / down).clamp(0, levels - 1 - 1e-4)
    low = level.floor().long()
    frac = level - low
    logp = logits.float().log_softmax(1)
    picked = logp.gather(1, low[:, None])[:, 0] * (1 - frac) + logp.gather(1, (low + 1)[:, None])[:, 0] * frac
    return _masked_mean(-picked, valid)


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


class StereoNetSmall(StereoModel):
    """The dense head and the plane head on shared 1/4-resolution features (see the module docstring)."""

    def __init__(
        self,
        meta,
        max_disp: int = 48,
        channels: int = 32,
        train_planes: int = 2,
        down: int = DOWN,
        agg: int = 64,
        plane_channels: int = 32,
        unshuffle: bool = False,
        local: bool = False,
    ):
        super().__init__(meta)
        self.max_disp = int(meta.extra.setdefault("max_disp", max_disp))
        self.down = down
        self.levels = -(-self.max_disp // down) + 1
        self.train_planes = train_planes
        self.features = Features(channels, down, unshuffle)
        self.aggregate = nn.Sequential(
            conv(self.levels + channels, agg),
            conv(agg, agg, dilation=2),
            conv(agg, agg),
            nn.Conv2d(agg, self.levels, 3, padding=1),
        )
        self.local = local
        if local:  # a residual from a local cost around the coarse disparity, at full resolution
            self.fine = nn.Sequential(conv(3, 16), conv(16, 16))
            self.refine = nn.Sequential(
                conv(2 * LOCAL + 1 + 1 + 16, 32),
                ResBlock(32, 1),
                ResBlock(32, 2),
                nn.Conv2d(32, 1, 3, padding=1),
            )
        else:
            self.refine = nn.Sequential(
                conv(4, 16),
                ResBlock(16, 1),
                ResBlock(16, 2),
                ResBlock(16, 4),
                nn.Conv2d(16, 1, 3, padding=1),
            )
        self.plane_head = nn.Sequential(
            conv(3 * channels, plane_channels),
            conv(plane_channels, plane_channels),
            nn.Conv2d(plane_channels, 1, 3, padding=1),
        )
        self.plane_refine = nn.Sequential(conv(4, 8), nn.Conv2d(8, 1, 3, padding=1))

    # ------------------------------------------------------------------ shared
    def _pad(self, images: Tensor) -> tuple[Tensor, int, int]:
        """Replicate-pad to a multiple of PAD_TO on the right and bottom (cropped back after). The
        ONNX graph computes the pad from the input's shape, so any pair size runs."""
        h, w = images.shape[-2:]
        ph, pw = (PAD_TO - h % PAD_TO) % PAD_TO, (PAD_TO - w % PAD_TO) % PAD_TO
        # Always padded (by 0 when it fits): a branch on the size would be traced one way only.
        return F.pad(images, (0, pw, 0, ph), mode="replicate"), h, w

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Left and right features of (B, 6, H, W) padded images: one encoder pass over both views."""
        b = images.shape[0]
        both = torch.cat([images[:, :3], images[:, 3:]], 0)
        feats = self.features(both)
        return feats[:b], feats[b:]

    # ------------------------------------------------------------------ dense
    def dense(self, images: Tensor, left: Tensor, right: Tensor) -> tuple[Tensor, Tensor]:
        volume = correlation_volume(left, right, self.levels)
        logits = self.aggregate(torch.cat([volume, left], 1))
        probs = logits.softmax(1)
        candidates = torch.arange(self.levels, device=probs.device, dtype=probs.dtype).view(1, -1, 1, 1)
        coarse = (probs * candidates).sum(1, keepdim=True) * self.down
        up = F.interpolate(coarse, size=images.shape[-2:], mode="bilinear", align_corners=False)
        if self.local:
            b = images.shape[0]
            fine = self.fine(torch.cat([images[:, :3], images[:, 3:]], 0))
            fine_left = fine[:b]
            warped = warp_by_disparity(fine[b:], up)  # right features where the coarse disparity says
            costs = correlation_window(fine_left, warped, LOCAL)
            residual = self.refine(torch.cat([costs, up / self.max_disp, fine_left], 1))
        else:
            residual = self.refine(torch.cat([up / self.max_disp, images[:, :3]], 1))
        return F.relu(up + residual), up, logits

    def forward(self, images: Tensor):
        padded, h, w = self._pad(images)
        left, right = self.encode(padded)
        disparity, coarse, volume = self.dense(padded, left, right)
        disparity = disparity[..., :h, :w]
        if not self.training:
            return disparity
        # Random planes per sample (the head learns "closer than D" for any D in the range).
        planes = torch.rand(images.shape[0], self.train_planes, device=images.device) * (self.max_disp - 2) + 1
        logits = self._planes(padded, left, right, planes)[..., :h, :w]
        volume = volume[..., : -(-h // self.down), : -(-w // self.down)]  # the padding's cells have no truth
        return disparity, coarse[..., :h, :w], logits, planes, volume

    # ------------------------------------------------------------------ planes
    def _planes(self, images: Tensor, left: Tensor, right: Tensor, planes: Tensor) -> Tensor:
        """(B, P, H, W) logits of "disparity > plane" for planes (B, P) in input pixels."""
        count = planes.shape[1]
        size = images.shape[-2:]
        out = []
        for k in range(count):
            shifted = shift_right_view(right, planes[:, k] / self.down)
            logit = self.plane_head(torch.cat([left, shifted, left * shifted], 1))
            logit = F.interpolate(logit, size=size, mode="bilinear", align_corners=False)
            out.append(logit + self.plane_refine(torch.cat([logit, images[:, :3]], 1)))
        return torch.cat(out, 1)

    def forward_planes(self, images: Tensor, planes: Tensor | list[float]) -> Tensor:
        """(B, P, H, W) logits of "closer than plane" (disparity > plane) for the given planes (pixels)."""
        padded, h, w = self._pad(images)
        left, right = self.encode(padded)
        planes = torch.as_tensor(planes, device=images.device, dtype=left.dtype)
        if planes.dim() == 1:
            planes = planes.expand(images.shape[0], -1)
        return self._planes(padded, left, right, planes)[..., :h, :w]


class PlaneModel(nn.Module):
    """A stereo network answering fixed planes only: forward(images) -> (B, P, H, W) probabilities that
    each pixel is closer than each plane. What export, optimize and serve run for proximity masks."""

    def __init__(self, net: StereoNetSmall, planes: list[float]):
        super().__init__()
        self.net = net
        self.meta = net.meta
        self.register_buffer("planes", torch.tensor([float(p) for p in planes]), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        return self.net.forward_planes(images, self.planes).sigmoid()


@MODELS.register("stereonet_small", task="stereo")
def stereonet_small(meta, **kw) -> StereoNetSmall:
    """StereoNet-style dense disparity and a Bi3D-style plane head on shared features (~0.2 M parameters)."""
    return StereoNetSmall(meta, **kw)
