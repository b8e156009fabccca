"""Hierarchical multi-scale attention (Tao, Sapra, Catanzaro, 2020, arXiv:2005.10821) around any trunk.

The trunk runs on the image at several scales. At every scale but the highest, a small attention
head on the trunk's features predicts a per-pixel weight a in [0, 1] that says how much to trust
this scale's prediction over the combination of all higher scales (Eq. 1 and Fig. 3 of the paper):

    P = U(a_lo * L_lo) + (1 - U(a_lo)) * P_hi

applied from the highest scale down, so with scales {0.5, 1, 2}:

    P = a_0.5 * L_0.5 + (1 - a_0.5) * (a_1 * L_1 + (1 - a_1) * L_2)

The product a_lo * L_lo is formed at the low scale's resolution and then resampled, as the paper
writes it. Training uses two scales, 0.5 and 1.0 (the relation learned between adjacent scales is
reused for any chain at inference); inference uses any list of scales. Every term is resampled to
the input resolution, where the blending happens, so the output is always at the input resolution.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch.nn.functional as F
from torch import Tensor, nn

from parvis.errors import ParvisError
from parvis.models.base import ModelMeta, SegmentationModel, SegmentationTrunk
from parvis.models.layers import ConvBNReLU
from parvis.registry import MODELS

TRAIN_SCALES = (0.5, 1.0)
# Inference defaults to the training scales. Adding 2.0 (the paper's Cityscapes setting) helps only
# where objects are small for the trunk; on the shapes data it shows the trunk objects twice the size
# it ever saw and measured mIoU 0.79 -> 0.30 (benchmarks/results/hmsa-*).
DEFAULT_SCALES = (0.5, 1.0)
TRUNKS = ("unet", "unet_small", "unet_resnet18", "unet_resnet34", "unet_resnet50", "deeplabv3_resnet50")


class AttentionHead(nn.Sequential):
    """Two 3x3 conv-BN-ReLU and a 1x1 conv to one sigmoid channel (the paper's attention head)."""

    def __init__(self, in_channels: int, mid_channels: int):
        super().__init__(
            ConvBNReLU(in_channels, mid_channels),
            ConvBNReLU(mid_channels, mid_channels),
            nn.Conv2d(mid_channels, 1, 1, bias=False),
            nn.Sigmoid(),
        )


def _resize(x: Tensor, size: Sequence[int]) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def _check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    scales = tuple(float(s) for s in scales)
    if not scales or any(s <= 0 for s in scales):
        raise ParvisError(f"HMSA scales must be a non-empty list of positive numbers, got {list(scales)}")
    return scales


class HierarchicalMultiScaleAttention(SegmentationModel):
    """Multi-scale inference with learned per-pixel attention between adjacent scales."""

    def __init__(
        self,
        meta: ModelMeta,
        trunk: SegmentationTrunk,
        scales: Sequence[float] = DEFAULT_SCALES,
        attention_channels: int | None = None,
    ):
        super().__init__(meta)
        self.trunk = trunk
        # As wide as the features it reads: 256 on DeepLab's head (the paper's width on its 512-channel
        # OCR features), 16 on U-Net's full-resolution decoder output, where a wide head would cost
        # more than the trunk.
        self.attention = AttentionHead(trunk.feature_channels, attention_channels or trunk.feature_channels)
        self.scales: tuple[float, ...] = ()
        self.set_scales(scales)
        meta.extra["train_scales"] = list(TRAIN_SCALES)

    def set_scales(self, scales: Sequence[float]) -> None:
        """The scales used at inference (eval mode), e.g. [0.5, 1.0, 2.0]; training always uses 0.5 and 1.0."""
        self.scales = _check_scales(scales)
        self.meta.extra["scales"] = list(self.scales)

    def forward(self, images: Tensor) -> Tensor:
        return self.forward_scales(images, TRAIN_SCALES if self.training else self.scales)[0]

    def forward_scales(self, images: Tensor, scales: Sequence[float]) -> tuple[Tensor, dict[float, Tensor]]:
        """(logits, {scale: attention}) at the input resolution; the highest scale has no attention."""
        size = images.shape[-2:]
        pred = None
        attentions: dict[float, Tensor] = {}
        for scale in sorted(set(_check_scales(scales)), reverse=True):
            x = images if scale == 1.0 else F.interpolate(images, scale_factor=scale, mode="bilinear")
            logits, features = self.trunk.forward_features(x)
            if pred is None:
                # The highest scale's prediction is the base the lower scales are blended into; its own
                # attention would weight nothing, so it is not computed.
                pred = _resize(logits, size)
                continue
            attention = _resize(self.attention(features), logits.shape[-2:])
            up_attention = _resize(attention, size)
            pred = _resize(attention * logits, size) + (1 - up_attention) * pred
            attentions[scale] = up_attention
        return pred, attentions

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.trunk.set_grad_checkpointing(enable)


def _hmsa_builder(trunk_name: str):
    def build(
        meta: ModelMeta,
        scales: Sequence[float] = DEFAULT_SCALES,
        attention_channels: int | None = None,
        **trunk_kwargs,
    ) -> HierarchicalMultiScaleAttention:
        trunk = MODELS.get(trunk_name)(replace(meta, name=trunk_name, extra={}), **trunk_kwargs)
        meta.extra["trunk"] = trunk_name
        return HierarchicalMultiScaleAttention(meta, trunk, scales, attention_channels)

    build.__name__ = f"hmsa_{trunk_name}"
    return build


for _trunk in TRUNKS:
    MODELS.register(f"hmsa_{_trunk}", task="segmentation", family="hmsa", trunk=_trunk)(_hmsa_builder(_trunk))
