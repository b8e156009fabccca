"""Stereo depth: one small network with a dense disparity head and a Bi3D-style plane head.

Input: a rectified pair as one (B, 6, H, W) tensor (left RGB, then right RGB, each normalized with
the meta's mean/std), so that the loader, the prefetcher, batching in serve and every runtime see
one image tensor as for the other tasks. Disparity is in pixels of the input, on the left view.

Shared features: both views through one encoder at 1/4 resolution: a 4x4 stride-4 convolution (a
space-to-depth of the pixels and a 1x1 projection in one: nothing a match needs is lost to strided
pooling) and two residual blocks.

Dense head (StereoNet-class): a correlation cost volume at 1/4 over max_disp / 4 + 1 disparities,
a 2D aggregation network (dilations 1, 2, 4) on the volume plus the left features (2D instead of
StereoNet's 3D convs: a CPU trains it in minutes), soft-argmin to a sub-pixel disparity, RAFT's
convex upsampling to full resolution (each pixel a learned mix of its 3x3 coarse neighbours), and
StereoNet's colour-guided refinement (a residual from the left image, computed at 1/2 resolution).

Plane head (Bi3D, Badki et al. 2020): for a plane at disparity D it shifts the right features by
D / 4 and correlates them with the left ones at 9 offsets around the plane (PLANE_OFFSETS); a small
two-level 2D network (1/4 and 1/8) on those and the left features answers per pixel "closer than
D?" (disparity > D) as a logit, upsampled to full resolution. One plane costs the shared features
plus this head, about a third of a dense inference; N planes give quantized depth, and the plane's
disparity is an input, so any set of planes can be asked.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from parvis.models.base import VisionModel
from parvis.registry import MODELS
from parvis.structures import Disparity

DOWN = 4  # the features' stride
# Where the plane head looks, in feature pixels (x 4 px of disparity) on either side of the plane: a match
# on the positive side means the pixel is closer than the plane. Spaced wider away from it, so the whole
# disparity range is seen with 9 correlations.
PLANE_OFFSETS = (-8, -4, -2, -1, 0, 1, 2, 4, 8)
PAD_TO = 16  # inputs are padded on the right/bottom to a multiple of this (and cropped back)


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
    """(N, 3, H, W) -> (N, C, H/4, W/4): space-to-depth, a 1x1 projection, residual blocks."""

    def __init__(self, channels: int = 32, blocks: int = 2):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, channels, DOWN, stride=DOWN),  # = space-to-depth then 1x1, without the copy
            *[ResBlock(channels) for _ in range(blocks)],
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def correlation_volume(left: Tensor, right: Tensor, levels: int) -> Tensor:
    """(B, levels, h, w): mean over channels of left(x) * right(x - d) for d = 0..levels-1 (0 where x < d,
    also when d exceeds the width: padding then cropping keeps every level w wide)."""
    return correlation_offsets(left, right, tuple(range(levels)))


def correlation_offsets(left: Tensor, right: Tensor, offsets: tuple[int, ...]) -> Tensor:
    """(B, len(offsets), H, W): mean over channels of left(x) * right(x - o) for each integer offset o
    (zeros where x - o leaves the image). One padded copy of `right`, then a slice per offset."""
    w = left.shape[-1]
    lo, hi = max(max(offsets), 0), max(-min(offsets), 0)
    padded = F.pad(right, (lo, hi))
    return torch.cat([(left * padded[..., lo - o : lo - o + w]).mean(1, keepdim=True) for o in offsets], 1)


def shift_right_view(right: Tensor, shift: Tensor) -> Tensor:
    """right sampled at x - shift (per sample, sub-pixel, linear; zeros outside): right aligned to the
    left view for a plane at that disparity. `shift`: (B,) in feature pixels."""
    b, _, h, w = right.shape
    xs = torch.arange(w, device=right.device, dtype=right.dtype).view(1, 1, w) - shift.to(right.dtype).view(b, 1, 1)
    gx = (2 * xs + 1) / w - 1  # align_corners=False pixel centres
    gy = (2 * torch.arange(h, device=right.device, dtype=right.dtype) + 1) / h - 1
    grid = torch.stack([gx.expand(b, h, w), gy.view(1, h, 1).expand(b, h, w)], dim=-1)
    return F.grid_sample(right, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def convex_upsample(coarse: Tensor, mask: Tensor, down: int) -> Tensor:
    """(B, 1, h, w) -> (B, 1, h down, w down): each fine pixel a convex combination (softmax weights
    from `mask`, (B, 9 down^2, h, w)) of its coarse pixel's 3x3 neighbourhood, as RAFT upsamples flow.
    Edges stay sharp where bilinear upsampling would blend the two sides."""
    b, _, h, w = coarse.shape
    weights = mask.view(b, 1, 9, down, down, h, w).softmax(2)
    patches = F.unfold(coarse, 3, padding=1).view(b, 1, 9, 1, 1, h, w)
    up = (weights * patches).sum(2)  # (B, 1, down, down, h, w)
    return up.permute(0, 1, 4, 2, 5, 3).reshape(b, 1, h * down, w * down)


class PlaneHead(nn.Module):
    """ "Closer than the plane?" logits at 1/4 from the plane's correlations and the left features: a 1x1
    mix at 1/4 plus a branch at 1/8 whose receptive field spans textureless regions that the
    correlations alone cannot decide. Widths are multiples of 16 (what the CPU's conv kernels block by)."""

    def __init__(self, cin: int, width: int = 32):
        super().__init__()
        self.inp = nn.Sequential(nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.LeakyReLU(0.2, True))
        self.down = nn.Sequential(conv(width, width, stride=2), conv(width, width))
        self.out = nn.Conv2d(width, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        a = self.inp(x)
        b = F.interpolate(self.down(a), size=a.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(a + b)


class Refine(nn.Module):
    """StereoNet's colour-guided refinement: a residual for the upsampled disparity from it and the left
    image, computed at 1/2 resolution (space-to-depth in, depth-to-space out) with dilated convolutions,
    so object edges follow the image's edges."""

    def __init__(self, width: int = 32, max_disp: int = 48):
        super().__init__()
        self.scale = float(max_disp)
        self.net = nn.Sequential(
            nn.PixelUnshuffle(2),
            conv(16, width),
            conv(width, width, dilation=2),
            conv(width, width, dilation=4),
            nn.Conv2d(width, 4, 3, padding=1),
            nn.PixelShuffle(2),
        )
        nn.init.zeros_(self.net[-2].weight)  # starts as the identity: no noise on top of a learning volume
        nn.init.zeros_(self.net[-2].bias)

    def forward(self, disparity: Tensor, left_image: Tensor) -> Tensor:
        x = torch.cat([disparity / self.scale, left_image], 1)
        return (disparity + self.net(x) * self.scale).clamp(min=0)


class StereoModel(VisionModel):
    """raw: (B, 1, H, W) disparity in pixels (eval); training adds the coarse disparity and plane logits."""

    def postprocess(self, raw: Tensor) -> list[Disparity]:
        return [Disparity(d[0].float(), self.meta.extra.get("focal_baseline")) for d in raw]

    def loss(self, raw, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
        return stereo_loss(raw, targets)


def stereo_loss(raw, targets: Tensor) -> Tensor:
    """Smooth L1 on valid pixels (disparity > 0), cross-entropy of the cost volume (volume_loss), and
    binary cross-entropy of the plane head against "disparity > plane" on valid pixels."""
    valid = targets > 0
    if isinstance(raw, Tensor):  # eval: the disparity only
        return _masked_mean(F.smooth_l1_loss(raw[:, 0].float(), targets, reduction="none"), valid)
    disparity, plane_logits, planes, volume, unrefined = raw
    loss = _masked_mean(F.smooth_l1_loss(disparity[:, 0].float(), targets, reduction="none"), valid)
    loss = loss + 0.5 * _masked_mean(F.smooth_l1_loss(unrefined[:, 0].float(), targets, reduction="none"), valid)
    loss = loss + volume_loss(volume, targets)
    closer = (targets[:, None] > planes.view(-1, planes.shape[-1], 1, 1)).float()
    bce = F.binary_cross_entropy_with_logits(plane_logits.float(), closer, reduction="none")
    return loss + _masked_mean(bce, valid[:, None].expand_as(bce))


def volume_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy of the 1/4-resolution cost volume against a "two-hot" target: the true disparity / 4
    split between its two neighbouring levels so that the expectation is exact. A distribution target
    trains the volume several times faster than regression through soft-argmin alone."""
    levels, h, w = logits.shape[1:]
    truth = F.interpolate(targets[:, None], size=(h, w), mode="nearest")[:, 0]
    valid = truth > 0
    level = (truth / DOWN).clamp(0, levels - 1 - 1e-4)
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
        aggregation: int = 64,
        plane_channels: int = 32,
        train_planes: int = 2,
        feature_blocks: int = 2,
    ):
        super().__init__(meta)
        self.max_disp = int(meta.extra.setdefault("max_disp", max_disp))
        self.levels = -(-self.max_disp // DOWN) + 1
        self.train_planes = train_planes
        self.features = Features(channels, feature_blocks)
        self.aggregate = nn.Sequential(
            conv(self.levels + channels, aggregation),
            conv(aggregation, aggregation, dilation=2),
            conv(aggregation, aggregation, dilation=4),
            conv(aggregation, aggregation),
            nn.Conv2d(aggregation, self.levels, 3, padding=1),
        )
        self.upmask = nn.Sequential(conv(channels, 64), nn.Conv2d(64, 9 * DOWN * DOWN, 1))
        self.plane_head = PlaneHead(len(PLANE_OFFSETS) + channels, plane_channels)
        self.refine = Refine(max_disp=self.max_disp)

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
    def dense(self, left: Tensor, right: Tensor, left_image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(refined full-resolution disparity, cost-volume logits at 1/4, the disparity before refinement)
        from the two views' features and the (normalized) left image."""
        volume = correlation_volume(left, right, self.levels)
        logits = self.aggregate(torch.cat([volume, left], 1))
        probs = logits.softmax(1)
        candidates = torch.arange(self.levels, device=probs.device, dtype=probs.dtype).view(1, -1, 1, 1)
        coarse = (probs * candidates).sum(1, keepdim=True) * DOWN
        upsampled = convex_upsample(coarse, self.upmask(left), DOWN)
        return self.refine(upsampled, left_image), logits, upsampled

    def forward(self, images: Tensor):
        padded, h, w = self._pad(images)
        left, right = self.encode(padded)
        disparity, volume, unrefined = self.dense(left, right, padded[:, :3])
        disparity = disparity[..., :h, :w]
        if not self.training:
            return disparity
        # Random planes per sample (the head learns "closer than D" for any D in the range).
        planes = torch.rand(images.shape[0], self.train_planes, device=images.device) * (self.max_disp - 2) + 1
        logits = self._planes(padded, left, right, planes)[..., :h, :w]
        volume = volume[..., : -(-h // DOWN), : -(-w // DOWN)]  # the padding's cells have no truth
        return disparity, logits, planes, volume, unrefined[..., :h, :w]

    # ------------------------------------------------------------------ planes
    def _planes(self, images: Tensor, left: Tensor, right: Tensor, planes: Tensor) -> Tensor:
        """(B, P, H, W) logits of "disparity > plane" for planes (B, P) in input pixels."""
        out = []
        for k in range(planes.shape[1]):
            shifted = shift_right_view(right, planes[:, k] / DOWN)  # aligned where disparity = the plane
            costs = correlation_offsets(left, shifted, PLANE_OFFSETS)
            logit = self.plane_head(torch.cat([costs, left], 1))
            out.append(F.interpolate(logit, size=images.shape[-2:], mode="bilinear", align_corners=False))
        return torch.cat(out, 1)

    def disparity_and_planes(self, images: Tensor, planes: Tensor | list[float]) -> tuple[Tensor, Tensor]:
        """(disparity (B, 1, H, W), plane logits (B, P, H, W)) with the features computed once: what
        evaluation and predict use when they want both."""
        padded, h, w = self._pad(images)
        left, right = self.encode(padded)
        disparity = self.dense(left, right, padded[:, :3])[0][..., :h, :w]
        planes = torch.as_tensor(planes, device=images.device, dtype=left.dtype)
        if planes.dim() == 1:
            planes = planes.expand(images.shape[0], -1)
        return disparity, self._planes(padded, left, right, planes)[..., :h, :w]

    def forward_planes(self, images: Tensor, planes: Tensor | list[float]) -> Tensor:
        """(B, P, H, W) logits of "closer than plane" (disparity > plane) for the given planes (pixels)."""
        padded, h, w = self._pad(images)
        left, right = self.encode(padded)
        planes = torch.as_tensor(planes, device=images.device, dtype=left.dtype)
        if planes.dim() == 1:
            planes = planes.expand(images.shape[0], -1)
        return self._planes(padded, left, right, planes)[..., :h, :w]


@MODELS.register("stereonet_small", task="stereo")
def stereonet_small(meta, **kw) -> StereoNetSmall:
    """StereoNet-class dense disparity and a Bi3D-style plane head on shared 1/4-resolution features."""
    return StereoNetSmall(meta, **kw)
