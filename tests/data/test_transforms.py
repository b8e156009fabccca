import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from parvis.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Normalize, build_transform, decode_min_size
from parvis.errors import ParvisError


def _scene(h=96, w=128):
    """A red rectangle on black, with its mask (class 3) and its box."""
    image = torch.zeros(3, h, w, dtype=torch.uint8)
    image[0, 20:60, 30:90] = 255
    mask = torch.zeros(h, w, dtype=torch.uint8)
    mask[20:60, 30:90] = 3
    boxes = tv_tensors.BoundingBoxes([[30, 20, 90, 60]], format="XYXY", canvas_size=(h, w))
    return tv_tensors.Image(image), tv_tensors.Mask(mask), boxes


@pytest.mark.parametrize("train", [True, False])
def test_mask_follows_the_image(train):
    torch.manual_seed(0)
    transform = build_transform("segmentation", train=train, size=64)
    image, mask, _ = _scene()
    for _ in range(20):
        out_image, out_mask = transform(image, mask)
        assert out_image.shape[-2:] == out_mask.shape[-2:] == (64, 64)
        assert out_image.dtype == torch.uint8 and out_mask.dtype == torch.uint8
        assert set(out_mask.unique().tolist()) <= {0, 3}  # nearest resampling: no blended labels
        red = out_image[0] > 127
        labelled = out_mask == 3
        # Interior pixels agree exactly; only the anti-aliased border may differ.
        disagree = (red != labelled).float().mean().item()
        assert disagree < 0.05


def test_boxes_follow_the_image():
    torch.manual_seed(0)
    transform = build_transform("detection", train=True, size=64)
    image, _, boxes = _scene()
    target = {"boxes": boxes, "labels": torch.tensor([2])}
    kept = 0
    for _ in range(20):
        out_image, out = transform(image, target)
        assert out_image.shape[-2:] == (64, 64)
        assert len(out["boxes"]) == len(out["labels"])
        for x1, y1, x2, y2 in out["boxes"].round().int().tolist():
            kept += 1
            cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
            assert out_image[0, cy, cx] > 200 and out_image[1, cy, cx] < 50  # box centre is on the red object
            assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64
    assert kept > 10


def test_classification_presets_keep_uint8_and_size():
    image, _, _ = _scene()
    for train in (True, False):
        out, label = build_transform("classification", train, 48)(image, 4)
        assert out.shape == (3, 48, 48) and out.dtype == torch.uint8 and label == 4


def test_unknown_task_and_tiny_size_are_errors():
    with pytest.raises(ParvisError, match="'keypoints'"):
        build_transform("keypoints", True, 64)
    with pytest.raises(ParvisError, match="too small"):
        build_transform("classification", True, 2)


def test_decode_min_size_only_for_eval():
    assert decode_min_size("classification", True, 224) is None
    assert decode_min_size("classification", False, 224) == 256
    assert decode_min_size("segmentation", False, 128) == 128


def test_normalize_matches_the_classic_formula_and_layout():
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    out = Normalize(memory_format=torch.channels_last)(x)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(out, (x.float() / 255 - mean) / std, rtol=1e-5, atol=1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_normalize_fast_path_for_channels_last_batches_matches_formula():
    x = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8).permute(0, 3, 1, 2)  # NHWC memory, as collate makes
    out = Normalize(memory_format=torch.channels_last)(x)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(out, (x.float() / 255 - mean) / std, rtol=1e-5, atol=1e-5)
    assert out.shape == (2, 3, 8, 8) and out.is_contiguous(memory_format=torch.channels_last)


def test_channels_last_random_resized_crop_matches_torchvision():
    from torchvision.transforms import v2

    from parvis.data.transforms import RandomResizedCrop

    hwc = torch.randint(0, 256, (80, 96, 3), dtype=torch.uint8)
    image = tv_tensors.Image(hwc.permute(2, 0, 1))  # HWC memory, as the decoders produce
    ours, theirs = RandomResizedCrop(40, antialias=True), v2.RandomResizedCrop(40, antialias=True)
    for seed in range(5):
        torch.manual_seed(seed)
        params = ours.make_params([image])
        a, b = ours.transform(image, params), theirs.transform(image, params)
        assert a.shape == b.shape == (3, 40, 40)
        assert (a.int() - b.int()).abs().max() <= 1  # same kernel family; rounding may differ by 1
        assert a.permute(1, 2, 0).is_contiguous()  # channels-last out: collate stacks with a plain copy


def test_crop_scale_overrides_the_training_preset_only():
    for task, default in (("classification", (0.08, 1.0)), ("segmentation", (0.25, 1.0))):
        assert _crop(build_transform(task, True, 32)).scale == default
        assert _crop(build_transform(task, True, 32, crop_scale=(0.6, 1.0))).scale == (0.6, 1.0)
    # Eval presets have no random crop to override.
    assert isinstance(build_transform("segmentation", False, 32, crop_scale=(0.6, 1.0)), v2.Resize)


def _crop(transform):
    return next(t for t in transform.transforms if isinstance(t, v2.RandomResizedCrop))
