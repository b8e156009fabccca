"""Fixtures shared by the deployment tests: a small segmenter and a small detector, each trained once per session."""

from __future__ import annotations

import pytest

from parvis.config import TrainConfig
from parvis.engine.loading import load_model
from parvis.engine.trainer import train
from parvis.export import export_model


@pytest.fixture(scope="session")
def trained(shapes_dir, tmp_path_factory):
    """unet_small trained briefly on the tiny shapes set, exported to ONNX."""
    out = tmp_path_factory.mktemp("q")
    cfg = TrainConfig(
        task="segmentation", model="unet_small", data=str(shapes_dir), epochs=10, size=48, batch=8, lr=3e-3,
        weight_decay=1e-4, warmup_epochs=0.2, workers=0, out=str(out / "run"), eval_every=10,
    )  # fmt: skip
    train(cfg, quiet=True)
    export_model(load_model(str(out / "run" / "best.pt")), out / "fp32.onnx", "onnx")
    return shapes_dir, out


@pytest.fixture(scope="session")
def trained_detector(shapes_dir, tmp_path_factory):
    """centernet_small trained briefly on the tiny shapes set (64 px), exported to ONNX."""
    out = tmp_path_factory.mktemp("det")
    cfg = TrainConfig(
        task="detection", model="centernet_small", data=str(shapes_dir), epochs=30, size=64, batch=8, lr=2e-3,
        weight_decay=1e-4, warmup_epochs=0.2, workers=0, out=str(out / "run"), eval_every=30,
    )  # fmt: skip
    train(cfg, quiet=True)
    export_model(load_model(str(out / "run" / "best.pt")), out / "fp32.onnx", "onnx")
    return shapes_dir, out
