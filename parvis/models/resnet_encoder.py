"""torchvision ResNets as feature encoders: five feature maps, with their channels and strides declared.

The contract decoders build against (as segmentation_models_pytorch's encoders do): `out_channels`
and `strides` name the five feature maps `forward` returns, finest first. Nothing else about the
encoder leaks into a decoder, so any encoder with the same contract composes with any decoder.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models import resnet18, resnet34, resnet50

from parvis.models.base import run_stage

_RESNETS = {18: resnet18, 34: resnet34, 50: resnet50}


class ResNetEncoder(nn.Module):
    """ResNet-{18,34,50} without its pooling and classifier, random init.

    Submodule names are torchvision's (conv1, bn1, layer1, ...), so a torchvision ResNet state dict
    minus `fc.*` loads into it.
    """

    strides = (2, 4, 8, 16, 32)

    def __init__(self, depth: int):
        super().__init__()
        if depth not in _RESNETS:
            raise ValueError(f"ResNet depth must be one of {sorted(_RESNETS)}, got {depth}")
        # Residual branches start at zero (Goyal et al., 2017): every block begins as the identity, so a
        # randomly initialized encoder trains stably from the first steps (measured: U-Net val loss after
        # 6 steps on the shapes set 2.0 instead of 180, when BatchNorm's running statistics still lag).
        net = _RESNETS[depth](weights=None, zero_init_residual=True)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        expansion = type(net.layer1[0]).expansion  # 1 for BasicBlock (18/34), 4 for Bottleneck (50)
        self.out_channels = (64, 64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion)
        self.grad_checkpointing = False

    def _stem(self, x: Tensor) -> Tensor:
        return self.relu(self.bn1(self.conv1(x)))

    def _pool_layer1(self, x: Tensor) -> Tensor:
        return self.layer1(self.maxpool(x))

    def forward(self, x: Tensor) -> list[Tensor]:
        """Features at strides 2, 4, 8, 16, 32 (channels `out_channels`)."""
        features = []
        for stage in (self._stem, self._pool_layer1, self.layer2, self.layer3, self.layer4):
            x = run_stage(stage, x, self.grad_checkpointing)
            features.append(x)
        return features
