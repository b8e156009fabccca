"""The RAM cache of a decoded training split: the same samples as the files (downscaled only where
larger than its side, masks and boxes alike), bad samples handled as the reader does; and ZoomShift,
the detection preset's scale/shift, whose boxes follow the pixels."""

import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from parvis.data.cache import DecodedCache, cache_side
from parvis.data.check import open_dataset
from parvis.data.transforms import ZoomShift, build_transform
from parvis.errors import ParvisError


@pytest.mark.parametrize("task", ["classification", "segmentation", "detection"])
def test_cached_samples_equal_the_files_when_no_downscale_is_needed(shapes_dir, task):
    files = open_dataset(shapes_dir, task, "train", transform=build_transform(task, False, 48))
    cached = DecodedCache(open_dataset(shapes_dir, task, "train", transform=build_transform(task, False, 48)), 64)
    assert len(cached) == len(files) and cached.nbytes == len(files) * 3 * 64 * 64
    for i in (0, 7, len(files) - 1):
        (a, ta), (b, tb) = files[i], cached[i]
        assert torch.equal(a, b)
        if task == "detection":
            assert torch.equal(ta["boxes"], tb["boxes"]) and torch.equal(ta["labels"], tb["labels"])
        elif task == "segmentation":
            assert torch.equal(ta, tb)
        else:
            assert ta == tb


def test_a_smaller_side_downscales_image_mask_and_boxes_together(shapes_dir):
    seg = DecodedCache(open_dataset(shapes_dir, "segmentation", "train"), 32)
    image, mask = seg[0]
    full_image, full_mask = open_dataset(shapes_dir, "segmentation", "train")[0]
    assert image.shape[-2:] == mask.shape[-2:] == (32, 32)
    assert set(mask.unique().tolist()) <= set(full_mask.unique().tolist())  # nearest: no blended ids
    det = DecodedCache(open_dataset(shapes_dir, "detection", "train"), 32)
    (image, target), (_, full) = det[3], open_dataset(shapes_dir, "detection", "train")[3]
    assert image.shape[-2:] == (32, 32) and target["boxes"].canvas_size == (32, 32)
    torch.testing.assert_close(target["boxes"] * 2, full["boxes"].as_subclass(torch.Tensor))
    assert cache_side("segmentation", 64) == 128 and cache_side("detection", 128, 96) == 96


def test_random_augmentation_still_differs_between_reads(shapes_dir):
    train = open_dataset(shapes_dir, "classification", "train", transform=build_transform("classification", True, 32))
    cached = DecodedCache(train, 64)
    torch.manual_seed(0)
    assert not all(torch.equal(cached[0][0], cached[0][0]) for _ in range(4))
    assert cached.items[0][0].shape[-2:] == (64, 64)  # the cached copy is untouched by the crops


def test_a_broken_image_fails_the_cache_or_is_skipped_as_asked(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(2):
            tv = torch.randint(0, 255, (3, 40, 40), dtype=torch.uint8).permute(1, 2, 0).numpy()
            Image.fromarray(tv).save(tmp_path / name / f"{i}.png")
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ParvisError, match="broken.png"):
        DecodedCache(open_dataset(tmp_path, "classification", "train"), 32)
    skipped = DecodedCache(open_dataset(tmp_path, "classification", "train", on_bad_sample="skip"), 32)
    assert sum(skipped[i] is None for i in range(len(skipped))) == 1 and len(skipped) == 5


def test_zoom_shift_boxes_follow_the_pixels_and_boxes_pushed_out_go_with_their_labels():
    torch.manual_seed(0)
    image = tv_tensors.Image(torch.zeros(3, 128, 128, dtype=torch.uint8))
    image[:, 40:60, 40:60] = 255
    boxes = tv_tensors.BoundingBoxes(torch.tensor([[40, 40, 60, 60.0]]), format="XYXY", canvas_size=(128, 128))
    for _ in range(20):
        out, target = ZoomShift()(image, {"boxes": boxes, "labels": torch.tensor([1])})
        assert out.shape == image.shape
        ys, xs = (out[0] > 127).nonzero(as_tuple=True)
        x1, y1, x2, y2 = target["boxes"][0].tolist()
        assert abs(xs.min() - x1) <= 1 and abs(ys.min() - y1) <= 1
        assert abs(xs.max() + 1 - x2) <= 1 and abs(ys.max() + 1 - y2) <= 1
    edge = tv_tensors.BoundingBoxes(torch.tensor([[0, 0, 2, 2.0], [40, 40, 60, 60]]), format="XYXY",
                                    canvas_size=(128, 128))  # fmt: skip
    shift = ZoomShift(translate=0.1, scale=(1.0, 1.0))
    dropped = 0
    for _ in range(40):
        _, target = shift(image, {"boxes": edge, "labels": torch.tensor([7, 1])})
        assert len(target["boxes"]) == len(target["labels"]) and 1 in target["labels"].tolist()
        dropped += 7 not in target["labels"].tolist()
    assert dropped > 5  # shifted up or left by more than a pixel, the corner box leaves the frame
