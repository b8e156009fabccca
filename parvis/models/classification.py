"""torchvision image classifiers (random init), their heads sized for `num_classes`.

The torchvision module is kept whole under `net` (its state-dict layout is torchvision's); the
forward is spelled out per layout so each stage can run under activation checkpointing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision import models as tvm

from parvis.errors import ParvisError
from parvis.models.base import ClassificationModel, ModelMeta, run_stage
from parvis.models.conv_encoder import ConvEncoder
from parvis.registry import MODELS


class ResNetClassifier(ClassificationModel):
    """stem, layer1..layer4 (the checkpointed stages), global average pool, fc.

    Built with zero-initialized residual branches, as the encoders in resnet_encoder.py (see there why).
    """

    def __init__(self, meta: ModelMeta, net: tvm.ResNet):
        super().__init__(meta)
        self.net = net
        self.grad_checkpointing = False

    def forward(self, images: Tensor) -> Tensor:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(images))))
        for stage in (n.layer1, n.layer2, n.layer3, n.layer4):
            x = run_stage(stage, x, self.grad_checkpointing)
        return n.fc(torch.flatten(n.avgpool(x), 1))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable


class FeaturesClassifier(ClassificationModel):
    """`features` (a sequence of stages, each checkpointed), `avgpool`, `classifier`.

    The layout of MobileNetV3, EfficientNet and ConvNeXt. ConvNeXt's classifier starts with a
    LayerNorm2d on the pooled (B, C, 1, 1) map and flattens itself; the others take (B, C).
    """

    def __init__(self, meta: ModelMeta, net: nn.Module, flatten_before_classifier: bool):
        super().__init__(meta)
        self.net = net
        self.flatten_before_classifier = flatten_before_classifier
        self.grad_checkpointing = False

    def forward(self, images: Tensor) -> Tensor:
        x = images
        for stage in self.net.features:
            x = run_stage(stage, x, self.grad_checkpointing)
        x = self.net.avgpool(x)
        if self.flatten_before_classifier:
            x = torch.flatten(x, 1)
        return self.net.classifier(x)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable


# The stem's total stride before layer1: the ImageNet stem (7x7 stride 2 + max-pool) divides by 4.
STEM_STRIDE = {"imagenet": 4, "small": 1, "small_s2": 2}


def _resnet(meta: ModelMeta, build, stem: str) -> ResNetClassifier:
    """A torchvision ResNet for `meta`. stem="small" swaps the 7x7 stride-2 conv + max-pool for a 3x3
    stride-1 conv (CIFAR recipes): a 32 px input reaches the last stage at 4x4 instead of 1x1, for 16x
    the compute; "small_s2" is the same conv at stride 2 (2x2, 4x the compute). The choice is recorded
    in meta.extra["stem"], so checkpoints rebuild the same layers."""
    if stem not in STEM_STRIDE:
        raise ParvisError(f"stem={stem!r} is unknown; choose one of {', '.join(STEM_STRIDE)}")
    net = build(weights=None, num_classes=meta.num_classes, zero_init_residual=True)
    if stem != "imagenet":
        stride = STEM_STRIDE[stem]
        net.conv1 = nn.Conv2d(3, net.conv1.out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.maxpool = nn.Identity()
        meta.extra["stem"] = stem
    return ResNetClassifier(meta, net)


@MODELS.register("resnet18", task="classification", family="resnet", small_stem=True)
def resnet18(meta: ModelMeta, stem: str = "imagenet") -> ResNetClassifier:
    return _resnet(meta, tvm.resnet18, stem)


@MODELS.register("resnet34", task="classification", family="resnet", small_stem=True)
def resnet34(meta: ModelMeta, stem: str = "imagenet") -> ResNetClassifier:
    return _resnet(meta, tvm.resnet34, stem)


@MODELS.register("resnet50", task="classification", family="resnet", small_stem=True)
def resnet50(meta: ModelMeta, stem: str = "imagenet") -> ResNetClassifier:
    return _resnet(meta, tvm.resnet50, stem)


@MODELS.register("mobilenet_v3_large", task="classification", family="mobilenet_v3")
def mobilenet_v3_large(meta: ModelMeta) -> FeaturesClassifier:
    net = tvm.mobilenet_v3_large(weights=None, num_classes=meta.num_classes)
    return FeaturesClassifier(meta, net, flatten_before_classifier=True)


@MODELS.register("efficientnet_b0", task="classification", family="efficientnet")
def efficientnet_b0(meta: ModelMeta) -> FeaturesClassifier:
    net = tvm.efficientnet_b0(weights=None, num_classes=meta.num_classes)
    return FeaturesClassifier(meta, net, flatten_before_classifier=True)


@MODELS.register("convnext_tiny", task="classification", family="convnext")
def convnext_tiny(meta: ModelMeta) -> FeaturesClassifier:
    net = tvm.convnext_tiny(weights=None, num_classes=meta.num_classes)
    return FeaturesClassifier(meta, net, flatten_before_classifier=False)


class ConvNetClassifier(ClassificationModel):
    """parvis's classic conv encoder (two 3x3 conv-BN-ReLU per level, 2x2 max-pool between levels,
    full resolution in the first level), global average pool, linear head."""

    def __init__(self, meta: ModelMeta, widths: tuple[int, ...]):
        super().__init__(meta)
        self.encoder = ConvEncoder(widths)
        self.fc = nn.Linear(widths[-1], meta.num_classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.encoder(images)[-1], 1), 1))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.grad_checkpointing = enable


@MODELS.register("convnet_small", task="classification", family="convnet")
def convnet_small(meta: ModelMeta) -> ConvNetClassifier:
    """Five levels of widths 16-256 (1.2 M parameters, 70 M multiply-adds at 64 px): the encoder of
    unet_small and centernet_small as a classifier. Its first level keeps full resolution, so small
    inputs lose no detail to a stem; the fast classifier for small images and CPUs."""
    return ConvNetClassifier(meta, (16, 32, 64, 128, 256))
