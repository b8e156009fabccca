"""Hierarchical multi-scale attention and sliding-window inference."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from parvis.errors import ParvisError
from parvis.models import build_model, sliding_window_inference
from parvis.models.base import SegmentationTrunk
from parvis.models.build import make_meta
from parvis.models.hmsa import HierarchicalMultiScaleAttention
from parvis.models.sliding_window import importance_map, window_starts

# --------------------------------------------------------------------------- HMSA


@pytest.fixture(scope="module")
def hmsa():
    torch.manual_seed(0)
    return build_model("hmsa_unet_resnet18", 3, input_size=32)


def _record_trunk_sizes(model, monkeypatch) -> list[int]:
    sizes: list[int] = []
    original = model.trunk.forward_features

    def recording(x):
        sizes.append(x.shape[-1])
        return original(x)

    monkeypatch.setattr(model.trunk, "forward_features", recording)
    return sizes


def test_training_uses_scales_half_and_one(hmsa, monkeypatch):
    sizes = _record_trunk_sizes(hmsa, monkeypatch)
    hmsa.train()
    out = hmsa(torch.randn(2, 3, 32, 32))
    assert sorted(sizes) == [16, 32] and out.shape == (2, 3, 32, 32)


def test_inference_scales_are_used_and_change_the_result(hmsa, monkeypatch):
    sizes = _record_trunk_sizes(hmsa, monkeypatch)
    hmsa.eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert hmsa.scales == (0.5, 1.0)  # the default: the training scales
        hmsa.set_scales([0.5, 1.0, 2.0])
        three = hmsa(images)
        assert sorted(sizes) == [16, 32, 64] and three.shape == (2, 3, 32, 32)
        hmsa.set_scales([1.0])
        one = hmsa(images)
        hmsa.set_scales([2.0, 0.5, 1.0])  # order does not matter
        again = hmsa(images)
    hmsa.set_scales([0.5, 1.0, 2.0])
    assert one.shape == three.shape and not torch.allclose(one, three)
    torch.testing.assert_close(again, three)
    assert hmsa.meta.extra["scales"] == [0.5, 1.0, 2.0] and hmsa.meta.extra["train_scales"] == [0.5, 1.0]


def test_attention_is_in_unit_interval_at_input_resolution(hmsa):
    hmsa.eval()
    with torch.no_grad():
        _, attention = hmsa.forward_scales(torch.randn(2, 3, 40, 40), [0.5, 1.0, 2.0])
    assert sorted(attention) == [0.5, 1.0]  # the highest scale's attention would weight nothing
    for a in attention.values():
        assert a.shape == (2, 1, 40, 40) and a.min() >= 0 and a.max() <= 1


def test_bad_scales_are_refused(hmsa):
    for scales in ([], [0.0, 1.0], [-1.0]):
        with pytest.raises(ParvisError, match="HMSA scales"):
            hmsa.set_scales(scales)


class ConstantTrunk(SegmentationTrunk):
    """Logits and 1-channel features everywhere equal to the input's width (so each scale is recognizable)."""

    feature_channels = 1

    def forward_features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        b, _, h, w = images.shape
        value = torch.full((b, 1, h, w), float(w))
        return value.expand(b, self.meta.num_classes, h, w), value


class WidthAttention(nn.Module):
    """a = width / 256: 0.125 at scale 0.5 and 0.25 at scale 1 for a 64 px input."""

    def forward(self, features: Tensor) -> Tensor:
        return features / 256


def test_scales_combine_hierarchically_as_in_the_paper():
    meta = make_meta("hmsa_unet_resnet18", 2)
    model = HierarchicalMultiScaleAttention(meta, ConstantTrunk(meta), scales=[0.5, 1.0, 2.0])
    model.attention = WidthAttention()
    images = torch.zeros(1, 3, 64, 64)
    a_half, a_one = 32 / 256, 64 / 256
    # Lower scale's attention gates its own logits against everything above it.
    expected = a_half * 32 + (1 - a_half) * (a_one * 64 + (1 - a_one) * 128)
    torch.testing.assert_close(model.eval()(images), torch.full((1, 2, 64, 64), expected))
    torch.testing.assert_close(model.train()(images), torch.full((1, 2, 64, 64), a_half * 32 + (1 - a_half) * 64))


# --------------------------------------------------------------------------- sliding window


@pytest.fixture(scope="module")
def pointwise():
    torch.manual_seed(0)
    return nn.Conv2d(3, 4, 1).eval()


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_sliding_window_equals_direct_forward(pointwise, mode):
    images = torch.randn(2, 3, 70, 53)
    with torch.no_grad():
        out = sliding_window_inference(pointwise, images, window=32, overlap=0.25, batch_size=3, mode=mode)
        torch.testing.assert_close(out, pointwise(images), atol=1e-5, rtol=0)


def test_image_smaller_than_window(pointwise):
    images = torch.randn(1, 3, 20, 40)
    with torch.no_grad():
        out = sliding_window_inference(pointwise, images, window=(32, 48))
        torch.testing.assert_close(out, pointwise(images), atol=1e-5, rtol=0)


def test_windows_are_batched_and_cover_the_image():
    calls = []

    def fn(windows: Tensor) -> Tensor:
        calls.append(windows.shape[0])
        return windows[:, :1]

    sliding_window_inference(fn, torch.randn(2, 3, 64, 64), window=32, overlap=0.5, batch_size=4)
    starts = window_starts(64, 32, 0.5)
    assert starts == [0, 16, 32]
    assert calls == [4] * 4 + [2]  # 2 images x 3 x 3 windows
    assert window_starts(70, 32, 0.25)[-1] == 70 - 32


def test_gaussian_weights_favour_the_centre():
    weights = importance_map((32, 32), "gaussian", 0.125)
    assert weights.max() == 1 and weights.min() > 0
    assert weights[15, 15] > weights[15, 0] > weights[0, 0]
    assert torch.equal(importance_map((8, 8), "constant"), torch.ones(8, 8))


def test_sliding_window_runs_a_segmentation_model():
    model = build_model("unet_resnet18", 3, input_size=32).eval()
    with torch.no_grad():
        out = sliding_window_inference(model, torch.randn(1, 3, 40, 50), window=32)
    assert out.shape == (1, 3, 40, 50) and torch.isfinite(out).all()


def test_bad_sliding_window_arguments(pointwise):
    images = torch.randn(1, 3, 40, 40)
    with pytest.raises(ParvisError, match="overlap"):
        sliding_window_inference(pointwise, images, 32, overlap=1.0)
    with pytest.raises(ParvisError, match="mode"):
        sliding_window_inference(pointwise, images, 32, mode="cosine")
