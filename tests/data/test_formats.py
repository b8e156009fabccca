"""The three dataset readers and open_dataset, on tiny files written in each test."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torchvision import tv_tensors

from parvis.data.check import open_dataset
from parvis.data.coco import CocoDetectionDataset
from parvis.data.imagefolder import ImageFolderDataset
from parvis.data.maskfolder import MaskFolderDataset
from parvis.errors import BadSampleError, ParvisError


def write_image(path: Path, height: int = 30, width: int = 40, value: int = 128) -> Path:
    """A small noisy RGB image (noise keeps JPEGs from compressing to a few bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    pixels = np.clip(value + rng.integers(-20, 20, (height, width, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def write_mask(path: Path, mask: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8), mode="L").save(path)
    return path


def write_json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def coco_file(path: Path, images: list[dict], annotations: list[dict], categories: list[dict] | None = None) -> Path:
    categories = categories if categories is not None else [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]
    return write_json(path, {"images": images, "annotations": annotations, "categories": categories})


def ann(ann_id: int, image_id: int, category_id: int, bbox: list[float], iscrowd: int = 0) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, "iscrowd": iscrowd}


# ImageFolder ---------------------------------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "train"
    write_image(root / "dog" / "b.png")
    write_image(root / "cat" / "a.jpg")
    write_image(root / "cat" / "C.JPG", height=20, width=10)
    (root / "cat" / "notes.txt").write_text("not a sample")
    return root


def test_imagefolder_classes_samples_and_targets(folder: Path) -> None:
    dataset = ImageFolderDataset(folder)
    assert dataset.classes == ["cat", "dog"]
    assert [(p.name, i) for p, i in dataset.samples] == [("C.JPG", 0), ("a.jpg", 0), ("b.png", 1)]
    assert dataset.targets == [0, 0, 1]
    image, target = dataset[0]
    assert isinstance(image, tv_tensors.Image)
    assert image.dtype == torch.uint8 and image.shape == (3, 20, 10)
    assert target == 0
    assert dataset[2][1] == 1


def test_sixteen_bit_png_decodes_to_uint8(tmp_path: Path) -> None:
    path = tmp_path / "gray" / "deep.png"
    path.parent.mkdir()
    Image.fromarray(np.full((6, 8), 0xAB00, dtype=np.uint16)).save(path)
    image, _ = ImageFolderDataset(tmp_path)[0]
    assert image.dtype == torch.uint8 and int(image.max()) == 0xAB


def test_imagefolder_applies_transform(folder: Path) -> None:
    dataset = ImageFolderDataset(folder, transform=lambda image, target: (image.shape, target + 10))
    assert dataset[2] == ((3, 30, 40), 11)


def test_imagefolder_without_class_folders_names_root_and_layout(tmp_path: Path) -> None:
    write_image(tmp_path / "loose.jpg")
    with pytest.raises(ParvisError, match="ImageFolder") as info:
        ImageFolderDataset(tmp_path)
    assert str(tmp_path) in str(info.value)
    with pytest.raises(ParvisError, match="no such folder"):
        ImageFolderDataset(tmp_path / "missing")


def test_bad_sample_error_or_skip(folder: Path) -> None:
    truncate(folder / "cat" / "a.jpg")
    with pytest.raises(BadSampleError) as info:
        ImageFolderDataset(folder)[1]
    assert info.value.path.endswith("a.jpg")
    skipping = ImageFolderDataset(folder, on_bad_sample="skip")
    assert skipping[1] is None
    assert skipping[0] is not None


@pytest.mark.parametrize(
    "make",
    [
        lambda root, **kw: ImageFolderDataset(root / "train", **kw),
        lambda root, **kw: MaskFolderDataset(root / "images", root / "masks", **kw),
        lambda root, **kw: CocoDetectionDataset(root / "images", root / "coco.json", **kw),
    ],
    ids=["imagefolder", "masks", "coco"],
)
def test_bad_options_name_value_and_choices(tmp_path: Path, make) -> None:
    write_image(tmp_path / "train" / "cat" / "a.jpg")
    write_image(tmp_path / "images" / "a.jpg")
    write_mask(tmp_path / "masks" / "a.png", np.zeros((30, 40)))
    coco_file(tmp_path / "coco.json", [{"id": 1, "file_name": "a.jpg"}], [])
    with pytest.raises(ParvisError, match="'drop'.*error, skip"):
        make(tmp_path, on_bad_sample="drop")
    with pytest.raises(ParvisError, match="'fast'.*auto"):
        make(tmp_path, decoder="fast")


# Mask folders --------------------------------------------------------------------------------------------------


@pytest.fixture
def masks(tmp_path: Path) -> Path:
    for i, name in enumerate(["a", "b"]):
        write_image(tmp_path / "images" / f"{name}.jpg", height=32, width=48, value=60 + 60 * i)
        mask = np.zeros((32, 48), dtype=np.uint8)
        mask[4:20, 8:40] = i + 1
        mask[0, :] = 255
        write_mask(tmp_path / "masks" / f"{name}.png", mask)
    return tmp_path


def test_maskfolder_pairs_by_stem_and_keeps_label_ids(masks: Path) -> None:
    dataset = MaskFolderDataset(masks / "images", masks / "masks", num_classes=3)
    assert [(i.name, m.name) for i, m in dataset.samples] == [("a.jpg", "a.png"), ("b.jpg", "b.png")]
    image, target = dataset[1]
    assert isinstance(image, tv_tensors.Image) and image.shape == (3, 32, 48)
    assert isinstance(target, tv_tensors.Mask)
    assert target.dtype == torch.uint8 and target.shape == (32, 48)
    assert sorted(target.unique().tolist()) == [0, 2, 255]


@pytest.mark.filterwarnings("error::UserWarning")  # torch warns when wrapping a read-only numpy mask
def test_maskfolder_sample_survives_pickling_for_loader_workers(masks: Path) -> None:
    dataset = pickle.loads(pickle.dumps(MaskFolderDataset(masks / "images", masks / "masks")))
    _, target = dataset[0]
    target[0, 0] = 1  # writable: augmentations may edit masks in place


def test_maskfolder_missing_mask_error_and_skip(masks: Path) -> None:
    (masks / "masks" / "b.png").unlink()
    with pytest.raises(BadSampleError, match="no mask") as info:
        MaskFolderDataset(masks / "images", masks / "masks")[1]
    assert info.value.path.endswith("b.jpg")
    assert MaskFolderDataset(masks / "images", masks / "masks", on_bad_sample="skip")[1] is None


def test_maskfolder_size_mismatch_names_mask(masks: Path) -> None:
    write_mask(masks / "masks" / "a.png", np.zeros((32, 47)))
    with pytest.raises(BadSampleError, match="47x32") as info:
        MaskFolderDataset(masks / "images", masks / "masks")[0]
    assert info.value.path.endswith("a.png")


def test_maskfolder_out_of_range_ids_only_when_classes_known(masks: Path) -> None:
    write_mask(masks / "masks" / "a.png", np.full((32, 48), 9))
    assert MaskFolderDataset(masks / "images", masks / "masks")[0] is not None
    with pytest.raises(BadSampleError, match="label ids 9"):
        MaskFolderDataset(masks / "images", masks / "masks", classes=["background", "a", "b"])[0]


def test_maskfolder_resizes_mask_with_dct_downscaled_image(tmp_path: Path) -> None:
    write_image(tmp_path / "images" / "a.jpg", height=64, width=96)
    mask = np.zeros((64, 96), dtype=np.uint8)
    mask[:, 48:] = 1
    write_mask(tmp_path / "masks" / "a.png", mask)
    image, target = MaskFolderDataset(tmp_path / "images", tmp_path / "masks", min_size=16)[0]
    assert image.shape[-2:] == target.shape
    assert image.shape[-2] < 64  # decoded at a DCT scale, mask followed it
    assert set(target.unique().tolist()) == {0, 1}


# COCO ----------------------------------------------------------------------------------------------------------


@pytest.fixture
def coco(tmp_path: Path) -> Path:
    write_image(tmp_path / "images" / "a.jpg", height=30, width=40)
    write_image(tmp_path / "images" / "sub" / "b.jpg", height=20, width=20)
    images = [
        {"id": 5, "file_name": "sub/b.jpg", "width": 20, "height": 20},
        {"id": 2, "file_name": "a.jpg", "width": 40, "height": 30},
    ]
    annotations = [
        ann(1, 2, 7, [2, 3, 10, 5]),
        ann(2, 2, 3, [0, 0, 40, 30]),
        ann(3, 2, 3, [1, 1, 5, 5], iscrowd=1),
    ]
    coco_file(tmp_path / "annotations.json", images, annotations)
    return tmp_path


def test_coco_boxes_labels_and_classes(coco: Path) -> None:
    dataset = CocoDetectionDataset(coco / "images", coco / "annotations.json")
    assert dataset.classes == ["cat", "dog"]  # category-id order: 3, 7
    assert dataset.ids == [2, 5] and len(dataset) == 2
    image, target = dataset[0]
    assert isinstance(image, tv_tensors.Image) and image.shape == (3, 30, 40)
    boxes = target["boxes"]
    assert isinstance(boxes, tv_tensors.BoundingBoxes)
    assert boxes.format == tv_tensors.BoundingBoxFormat.XYXY and boxes.canvas_size == (30, 40)
    assert boxes.dtype == torch.float32
    assert boxes.tolist() == [[2, 3, 12, 8], [0, 0, 40, 30]]  # the crowd box is left out
    assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == [1, 0]
    assert target["image_id"] == 2


def test_coco_image_without_annotations_has_empty_boxes(coco: Path) -> None:
    _, target = CocoDetectionDataset(coco / "images", coco / "annotations.json")[1]
    assert target["boxes"].shape == (0, 4) and target["boxes"].canvas_size == (20, 20)
    assert target["labels"].shape == (0,)
    assert target["image_id"] == 5


def test_coco_boxes_follow_dct_downscaled_image(coco: Path) -> None:
    image, target = CocoDetectionDataset(coco / "images", coco / "annotations.json", min_size=8)[0]
    height, width = image.shape[-2:]
    assert height < 30  # decoded at a DCT scale (libjpeg picks k/8)
    assert target["boxes"].canvas_size == (height, width)
    assert target["boxes"][1].tolist() == [0, 0, width, height]  # the whole-image box still covers it


def test_coco_bad_box_error_and_skip(coco: Path) -> None:
    data = json.loads((coco / "annotations.json").read_text())
    data["annotations"][0]["bbox"] = [30, 3, 20, 5]  # x + w = 50 > 40
    write_json(coco / "annotations.json", data)
    with pytest.raises(BadSampleError, match="outside the 40x30 image") as info:
        CocoDetectionDataset(coco / "images", coco / "annotations.json")[0]
    assert info.value.path.endswith("annotations.json")
    assert CocoDetectionDataset(coco / "images", coco / "annotations.json", on_bad_sample="skip")[0] is None


def test_coco_structural_errors_name_file_and_key(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ParvisError, match="bad.json.*not valid JSON"):
        CocoDetectionDataset(tmp_path / "images", bad)
    write_json(bad, {"images": [], "annotations": []})
    with pytest.raises(ParvisError, match="bad.json.*'categories'"):
        CocoDetectionDataset(tmp_path / "images", bad)
    write_json(bad, {"images": [{"id": 1}], "annotations": [], "categories": []})
    with pytest.raises(ParvisError, match=r"bad.json.*images\[0\] has no 'file_name'"):
        CocoDetectionDataset(tmp_path / "images", bad)


# open_dataset --------------------------------------------------------------------------------------------------


def test_open_dataset_from_yaml(coco: Path, masks: Path) -> None:
    root = coco  # the coco and masks fixtures share tmp_path
    write_image(root / "classification" / "train" / "cat" / "a.jpg")
    config = {
        "classes": ["cat"],
        "classification": {"format": "imagefolder", "train": "classification/train"},
        "segmentation": {
            "format": "masks",
            "train": {"images": "images", "masks": "masks"},
            "classes": ["background", "a", "b"],
            "ignore_index": 255,
        },
        "detection": {"format": "coco", "train": {"images": "images", "annotations": "annotations.json"}},
    }
    (root / "dataset.yaml").write_text(yaml.safe_dump(config))
    assert isinstance(open_dataset(root, "classification", "train"), ImageFolderDataset)
    segmentation = open_dataset(root, "segmentation", "train", on_bad_sample="skip")
    assert isinstance(segmentation, MaskFolderDataset)
    assert segmentation.num_classes == 3 and segmentation.on_bad_sample == "skip"
    assert isinstance(open_dataset(root, "detection", "train"), CocoDetectionDataset)
    with pytest.raises(ParvisError, match="dataset.yaml.*no detection split 'val'.*detection/train"):
        open_dataset(root, "detection", "val")
    with pytest.raises(ParvisError, match="'depth'.*classification, segmentation, detection"):
        open_dataset(root, "depth", "train")


def test_open_dataset_without_yaml_uses_imagefolder(tmp_path: Path) -> None:
    write_image(tmp_path / "val" / "cat" / "a.jpg")
    assert open_dataset(tmp_path, "classification", "val").classes == ["cat"]
    write_image(tmp_path / "flat" / "dog" / "a.jpg")
    assert open_dataset(tmp_path / "flat", "classification", "train").classes == ["dog"]
