"""torchvision image classifiers (random init), their heads sized for `num_classes`.

The torchvision module is kept whole under `net` (its state-dict layout is torchvision's); the
forward is spelled out per layout so each stage can run under activation checkpointing.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision import models as tvm

from parvis.models.base import ClassificationModel, ModelMeta, run_stage
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


@MODELS.register("resnet18", task="classification", family="resnet")
def resnet18(meta: ModelMeta) -> ResNetClassifier:
    return ResNetClassifier(meta, tvm.resnet18(weights=None, num_classes=meta.num_classes, zero_init_residual=True))


@MODELS.register("resnet34", task="classification", family="resnet")
def resnet34(meta: ModelMeta) -> ResNetClassifier:
    return ResNetClassifier(meta, tvm.resnet34(weights=None, num_classes=meta.num_classes, zero_init_residual=True))


@MODELS.register("resnet50", task="classification", family="resnet")
def resnet50(meta: ModelMeta) -> ResNetClassifier:
    return ResNetClassifier(meta, tvm.resnet50(weights=None, num_classes=meta.num_classes, zero_init_residual=True))


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
