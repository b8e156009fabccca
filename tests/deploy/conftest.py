"""Fixtures shared by the deployment tests: a small segmenter and a small detector, each trained once per session."""

from __future__ import annotations

import pytest
import torch

from parvis.config import TrainConfig
from parvis.engine.loading import load_model
from parvis.engine.trainer import train
from parvis.export import export_model


def train_and_export(out, task: str, model: str, data, epochs: int, size: int, lr: float):
    """`model` trained briefly on `data` into out/run (batch 8, no workers, one evaluation) and exported to
    out/fp32.onnx."""
    cfg = TrainConfig(
        task=task, model=model, data=str(data), epochs=epochs, size=size, batch=8, lr=lr, weight_decay=1e-4,
        warmup_epochs=0.2, workers=0, out=str(out / "run"), eval_every=epochs,
    )  # fmt: skip
    train(cfg, quiet=True)
    export_model(load_model(str(out / "run" / "best.pt")), out / "fp32.onnx", "onnx")


def untrained_onnx_copy(checkpoint, path, seed: int):
    """The checkpoint's architecture and metadata with fresh random weights, as ONNX: a deliberately over-budget
    candidate."""
    model = load_model(str(checkpoint))
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    export_model(model, path, "onnx")
    return path


@pytest.fixture(scope="session")
def trained(shapes_dir, tmp_path_factory):
    """unet_small trained briefly on the tiny shapes set, exported to ONNX."""
    out = tmp_path_factory.mktemp("q")
    train_and_export(out, "segmentation", "unet_small", shapes_dir, epochs=10, size=48, lr=3e-3)
    return shapes_dir, out


@pytest.fixture(scope="session")
def trained_detector(shapes_dir, tmp_path_factory):
    """centernet_small trained briefly on the tiny shapes set (64 px), exported to ONNX."""
    out = tmp_path_factory.mktemp("det")
    train_and_export(out, "detection", "centernet_small", shapes_dir, epochs=30, size=64, lr=2e-3)
    return shapes_dir, out
