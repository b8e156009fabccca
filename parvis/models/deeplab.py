"""DeepLabV3 (Chen et al., 2017) from torchvision: dilated ResNet-50 (output stride 8) + ASPP head.

The torchvision module is kept whole under `net`, so its state-dict layout is torchvision's; the
forward is spelled out here to expose the head's penultimate features and to checkpoint the
backbone stages.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck
from torchvision.models.segmentation import deeplabv3_resnet50 as tv_deeplabv3_resnet50

from parvis.models.base import ModelMeta, SegmentationTrunk, run_stage
from parvis.registry import MODELS


class DeepLabV3(SegmentationTrunk):
    """torchvision DeepLabV3 without the auxiliary head; logits upsampled to the input resolution."""

    def __init__(self, meta: ModelMeta, net):
        super().__init__(meta)
        self.net = net
        # classifier = ASPP, 3x3 conv, BN, ReLU, 1x1 conv to the classes: features are what the last conv reads.
        self.feature_channels = net.classifier[-1].in_channels
        self.grad_checkpointing = False

    def forward_features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        x = images
        # backbone is torchvision's IntermediateLayerGetter: conv1, bn1, relu, maxpool, layer1..layer4 in order.
        for name, module in self.net.backbone.items():
            x = run_stage(module, x, self.grad_checkpointing and name.startswith("layer"))
        *body, last = self.net.classifier  # DeepLabHead is a Sequential subclass that cannot be sliced
        for layer in body:
            x = layer(x)
        logits = last(x)
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False), x

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable


@MODELS.register("deeplabv3_resnet50", task="segmentation", family="deeplabv3")
def deeplabv3_resnet50(meta: ModelMeta) -> DeepLabV3:
    net = tv_deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=meta.num_classes, aux_loss=False)
    # torchvision builds this backbone without zero_init_residual; zero the residual branches as the
    # other parvis ResNets do (see resnet_encoder.py why).
    for block in net.backbone.modules():
        if isinstance(block, Bottleneck):
            nn.init.zeros_(block.bn3.weight)
    return DeepLabV3(meta, net)
