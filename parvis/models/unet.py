"""U-Net (Ronneberger et al., 2015): on a ResNet encoder, as segmentation_models_pytorch builds it,
or on the classic full-resolution conv encoder.

The decoder reads only the encoder's `out_channels` and `strides` (finest first): at each level it
upsamples, concatenates the encoder's feature map of that resolution (the skip connection) and
applies two 3x3 conv-BN-ReLU. When the finest encoder feature is coarser than the input (ResNet:
stride 2), a last block without a skip brings the features to the input resolution. A 1x1
convolution makes the class logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from parvis.models.base import ModelMeta, SegmentationTrunk
from parvis.models.conv_encoder import ConvEncoder
from parvis.models.layers import ConvBNReLU
from parvis.models.resnet_encoder import ResNetEncoder
from parvis.registry import MODELS

DECODER_CHANNELS = (256, 128, 64, 32, 16)


class DecoderBlock(nn.Module):
    """Upsample to the skip's size, concatenate the skip (if any), two conv-BN-ReLU."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = ConvBNReLU(in_channels + skip_channels, out_channels)
        self.conv2 = ConvBNReLU(out_channels, out_channels)

    def forward(self, x: Tensor, skip: Tensor | None, size: tuple[int, int]) -> Tensor:
        # Upsampling to the skip's exact size (not by 2x) keeps odd input sizes aligned.
        x = F.interpolate(x, size=size, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class UNetDecoder(nn.Module):
    """One block per encoder level above the deepest, plus one without a skip up to the input
    resolution when `full_resolution_skip` is False; `encoder_channels` finest first."""

    def __init__(
        self,
        encoder_channels: tuple[int, ...],
        decoder_channels: tuple[int, ...] = DECODER_CHANNELS,
        full_resolution_skip: bool = False,
    ):
        super().__init__()
        levels = len(encoder_channels) - 1 if full_resolution_skip else len(encoder_channels)
        if len(decoder_channels) != levels:
            raise ValueError(f"need {levels} decoder widths for this encoder, got {decoder_channels}")
        # Deepest feature first; each block's skip is the next finer encoder feature; without a
        # full-resolution skip the last block has none.
        skips = list(reversed(encoder_channels[:-1])) + ([] if full_resolution_skip else [0])
        widths = [encoder_channels[-1], *decoder_channels[:-1]]
        self.blocks = nn.ModuleList(
            DecoderBlock(w, s, out) for w, s, out in zip(widths, skips, decoder_channels, strict=True)
        )
        self.out_channels = decoder_channels[-1]

    def forward(self, features: list[Tensor], size: tuple[int, int]) -> Tensor:
        x, skips = features[-1], list(reversed(features[:-1]))
        for i, block in enumerate(self.blocks):
            skip = skips[i] if i < len(skips) else None
            x = block(x, skip, skip.shape[-2:] if skip is not None else size)
        return x


class UNet(SegmentationTrunk):
    """encoder -> U-Net decoder -> 1x1 head; logits at the input resolution."""

    def __init__(self, meta: ModelMeta, encoder: nn.Module, decoder_channels: tuple[int, ...] = DECODER_CHANNELS):
        super().__init__(meta)
        self.encoder = encoder
        full_res = encoder.strides[0] == 1
        self.decoder = UNetDecoder(tuple(encoder.out_channels), tuple(decoder_channels), full_resolution_skip=full_res)
        self.head = nn.Conv2d(self.decoder.out_channels, meta.num_classes, 1)
        self.feature_channels = self.decoder.out_channels

    def forward_features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        features = self.decoder(self.encoder(images), images.shape[-2:])
        return self.head(features), features

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.grad_checkpointing = enable


def _unet_resnet(depth: int, meta: ModelMeta, **kwargs) -> UNet:
    meta.extra.update(encoder=f"resnet{depth}")
    return UNet(meta, ResNetEncoder(depth), **kwargs)


def _unet_classic(widths: tuple[int, ...], meta: ModelMeta, **kwargs) -> UNet:
    meta.extra.update(encoder="conv", widths=list(widths))
    kwargs.setdefault("decoder_channels", tuple(reversed(widths[:-1])))
    return UNet(meta, ConvEncoder(widths), **kwargs)


@MODELS.register("unet", task="segmentation", family="unet")
def unet(meta: ModelMeta, **kwargs) -> UNet:
    """The classic U-Net layout at half Ronneberger's widths (32-512), with BatchNorm."""
    return _unet_classic((32, 64, 128, 256, 512), meta, **kwargs)


@MODELS.register("unet_small", task="segmentation", family="unet")
def unet_small(meta: ModelMeta, **kwargs) -> UNet:
    """Four levels of widths 16-128 (0.5 M parameters): the fast U-Net for small images and CPUs."""
    return _unet_classic((16, 32, 64, 128), meta, **kwargs)


@MODELS.register("unet_resnet18", task="segmentation", family="unet")
def unet_resnet18(meta: ModelMeta, **kwargs) -> UNet:
    return _unet_resnet(18, meta, **kwargs)


@MODELS.register("unet_resnet34", task="segmentation", family="unet")
def unet_resnet34(meta: ModelMeta, **kwargs) -> UNet:
    return _unet_resnet(34, meta, **kwargs)


@MODELS.register("unet_resnet50", task="segmentation", family="unet")
def unet_resnet50(meta: ModelMeta, **kwargs) -> UNet:
    return _unet_resnet(50, meta, **kwargs)
