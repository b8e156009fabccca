"""The interface every runtime implements."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from parvis.models.base import ModelMeta


class Runtime(ABC):
    """A loaded artifact: `run` takes normalized float32 images (N, 3, H, W) and returns the raw
    model output (logits) as float32 numpy, for any batch size N >= 1."""

    name: str
    meta: ModelMeta

    @abstractmethod
    def run(self, images) -> np.ndarray: ...

    @abstractmethod
    def info(self) -> dict:
        """{"runtime", "device", "precision", "threads", ...}: what actually runs the model."""
