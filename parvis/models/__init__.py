"""Models by name: `build_model("unet_resnet18", num_classes=6)`, `build_model("torchvision:resnet18")`;
`MODELS.names(task="segmentation")`.

Importing this package imports every family module, which registers its models in `MODELS`.
"""

from parvis.models import centernet, classification, deeplab, hmsa, inspection, stereo, unet  # noqa: F401  (registration)
from parvis.models.base import DetectionModel, ModelMeta, VisionModel, eval_transform
from parvis.models.build import build_model, load_weights, make_meta, read_state_dict
from parvis.models.sliding_window import sliding_window_inference
from parvis.registry import MODELS

__all__ = [
    "MODELS",
    "DetectionModel",
    "ModelMeta",
    "VisionModel",
    "build_model",
    "eval_transform",
    "load_weights",
    "make_meta",
    "read_state_dict",
    "sliding_window_inference",
]
