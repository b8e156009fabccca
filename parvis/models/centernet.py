"""CenterNet (Zhou et al., 2019, "Objects as Points"): an anchor-free detector on any parvis encoder.

encoder -> FPN-lite neck -> two heads at output stride 4. The neck reads only the encoder's
`out_channels` and `strides` (the contract of resnet_encoder.py and conv_encoder.py): a 1x1
lateral projection of every feature map from stride 4 down to the deepest, merged top-down by
nearest upsampling and addition, each merge followed by a 3x3 conv-BN-ReLU. The heads are
3x3 conv-ReLU-1x1: a class heatmap (its bias starts at -2.19, a prior of 0.1) and the box
regression (width, height, center offset). Their outputs are concatenated into the one raw tensor
of `parvis.models.centers`, which `DetectionModel` decodes and trains.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from parvis.models.base import DetectionModel, ModelMeta
from parvis.models.centers import HEATMAP_PRIOR_BIAS
from parvis.models.conv_encoder import ConvEncoder
from parvis.models.layers import ConvBNReLU
from parvis.models.resnet_encoder import ResNetEncoder
from parvis.registry import MODELS

OUTPUT_STRIDE = 4


class FPNLiteNeck(nn.Module):
    """Top-down merge of the encoder's features from stride `out_stride` to the deepest, `width` channels."""

    def __init__(self, encoder_channels: tuple[int, ...], strides: tuple[int, ...], width: int, out_stride: int):
        super().__init__()
        if out_stride not in strides:
            raise ValueError(f"the encoder has no feature map at stride {out_stride} (strides {strides})")
        self.first = strides.index(out_stride)
        used = encoder_channels[self.first :]
        if len(used) < 2:
            raise ValueError(f"the encoder needs a feature map deeper than stride {out_stride} (strides {strides})")
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in used)
        self.smooth = nn.ModuleList(ConvBNReLU(width, width) for _ in used[:-1])
        self.out_channels = width

    def forward(self, features: list[Tensor]) -> Tensor:
        features = features[self.first :]
        x = self.lateral[-1](features[-1])
        for i in reversed(range(len(features) - 1)):
            # Upsampling to the finer map's exact size (not by 2x) keeps odd input sizes aligned.
            x = F.interpolate(x, size=features[i].shape[-2:], mode="nearest") + self.lateral[i](features[i])
            x = self.smooth[i](x)
        return x


def _head(in_channels: int, mid_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, mid_channels, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(mid_channels, out_channels, 1),
    )


class CenterNet(DetectionModel):
    """encoder -> FPN-lite neck at stride 4 -> heatmap (C) and box (4) heads, one raw tensor (B, C + 4, H/4, W/4)."""

    def __init__(self, meta: ModelMeta, encoder: nn.Module, width: int = 64, head_width: int | None = None):
        super().__init__(meta)
        meta.extra.update(output_stride=OUTPUT_STRIDE)
        self.encoder = encoder
        self.neck = FPNLiteNeck(tuple(encoder.out_channels), tuple(encoder.strides), width, OUTPUT_STRIDE)
        head_width = head_width or width
        self.heatmap = _head(width, head_width, meta.num_classes)
        self.box = _head(width, head_width, 4)
        nn.init.constant_(self.heatmap[-1].bias, HEATMAP_PRIOR_BIAS)

    def forward(self, images: Tensor) -> Tensor:
        x = self.neck(self.encoder(images))
        return torch.cat([self.heatmap(x), self.box(x)], dim=1)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.grad_checkpointing = enable


@MODELS.register("centernet_small", task="detection", family="centernet")
def centernet_small(meta: ModelMeta, **kwargs) -> CenterNet:
    """The classic conv encoder at widths 16-256 (five levels, stride 16 at the deepest: its receptive
    field spans a 128 px image) with a 64-wide neck: the fast detector for small images and CPUs."""
    widths = (16, 32, 64, 128, 256)
    meta.extra.update(encoder="conv", widths=list(widths))
    return CenterNet(meta, ConvEncoder(widths), **kwargs)


def _centernet_resnet(depth: int, meta: ModelMeta, **kwargs) -> CenterNet:
    meta.extra.update(encoder=f"resnet{depth}")
    kwargs.setdefault("width", 128)
    return CenterNet(meta, ResNetEncoder(depth), **kwargs)


@MODELS.register("centernet_resnet18", task="detection", family="centernet")
def centernet_resnet18(meta: ModelMeta, **kwargs) -> CenterNet:
    return _centernet_resnet(18, meta, **kwargs)


@MODELS.register("centernet_resnet34", task="detection", family="centernet")
def centernet_resnet34(meta: ModelMeta, **kwargs) -> CenterNet:
    return _centernet_resnet(34, meta, **kwargs)


@MODELS.register("centernet_resnet50", task="detection", family="centernet")
def centernet_resnet50(meta: ModelMeta, **kwargs) -> CenterNet:
    return _centernet_resnet(50, meta, **kwargs)
