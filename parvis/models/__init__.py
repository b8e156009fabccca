"""Models by name: `build_model("unet_resnet18", num_classes=6)`; `MODELS.names(task="segmentation")`.

Importing this package imports every family module, which registers its models in `MODELS`.
"""

from parvis.models import centernet, classification, deeplab, hmsa, unet  # noqa: F401  (registration)
from parvis.models.base import DetectionModel, ModelMeta, VisionModel, build_model, load_weights
from parvis.models.sliding_window import sliding_window_inference
from parvis.registry import MODELS

__all__ = [
    "MODELS",
    "DetectionModel",
    "ModelMeta",
    "VisionModel",
    "build_model",
    "load_weights",
    "sliding_window_inference",
]
