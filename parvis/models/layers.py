"""Layers more than one model family builds from."""

from __future__ import annotations

from torch import nn


class ConvBNReLU(nn.Sequential):
    """3x3 convolution (no bias: BatchNorm follows), BatchNorm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
