"""Fixtures for the server tests: tiny checkpoints in a model repository, JPEG bodies."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from parvis.engine.checkpoint import save_checkpoint
from parvis.models import build_model

CLASSES = ["circle", "ring", "square", "star", "triangle"]


def tiny_checkpoint(path, name: str, classes: list[str], size: int = 32) -> None:
    torch.manual_seed(0)
    model = build_model(name, len(classes), classes, size)
    save_checkpoint(path, {"model": model.state_dict(), "meta": model.meta.to_dict()})


@pytest.fixture(scope="session")
def repository(tmp_path_factory):
    """models/clf (resnet18, 32 px, max batch 4 from its model.yaml), models/seg (unet_small, 32 px),
    models/slow (the classifier again, with a timeout no request can meet), models/stereo (stereonet_small)."""
    root = tmp_path_factory.mktemp("serve") / "models"
    for sub in ("clf", "seg", "slow", "stereo"):
        (root / sub).mkdir(parents=True)
    tiny_checkpoint(root / "clf" / "best.pt", "resnet18", CLASSES)
    (root / "clf" / "model.yaml").write_text("max_batch_size: 4\nmax_queue_delay_ms: 2\n")
    tiny_checkpoint(root / "seg" / "best.pt", "unet_small", ["background", *CLASSES])
    tiny_checkpoint(root / "slow" / "model.pt", "resnet18", CLASSES)
    (root / "slow" / "model.yaml").write_text("timeout_ms: 0.001\n")
    tiny_checkpoint(root / "stereo" / "best.pt", "stereonet_small", ["disparity"])
    return root


def jpeg(width: int = 96, height: int = 64, seed: int = 0, quality: int = 90) -> bytes:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """The first bytes of a PNG that claims width x height: enough for any header check."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
