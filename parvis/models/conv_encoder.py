"""The classic U-Net encoder (Ronneberger et al., 2015): two 3x3 conv-BN-ReLU per level, 2x2 max-pool
between levels, no stem downsampling.

It keeps full resolution in its first level, so fine shape detail (a ring's hole, a star's points)
reaches the decoder through a skip at stride 1, which a ResNet encoder (stride 2 after its first
convolution, 4 after its max-pool) cannot give. Same contract as every parvis encoder: `out_channels`
and `strides` name the feature maps `forward` returns, finest first.
"""

from __future__ import annotations

from torch import Tensor, nn

from parvis.models.base import run_stage
from parvis.models.layers import ConvBNReLU


class ConvEncoder(nn.Module):
    """Levels of widths `widths`; level i runs at stride 2**i."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 256, 512), in_channels: int = 3):
        super().__init__()
        if len(widths) < 2:
            raise ValueError(f"a U-Net encoder needs at least 2 levels, got widths {widths}")
        self.stages = nn.ModuleList()
        for i, width in enumerate(widths):
            layers = [nn.MaxPool2d(2)] if i else []
            layers += [ConvBNReLU(in_channels, width), ConvBNReLU(width, width)]
            self.stages.append(nn.Sequential(*layers))
            in_channels = width
        self.out_channels = tuple(widths)
        self.strides = tuple(2**i for i in range(len(widths)))
        self.grad_checkpointing = False

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        for stage in self.stages:
            x = run_stage(stage, x, self.grad_checkpointing)
            features.append(x)
        return features
