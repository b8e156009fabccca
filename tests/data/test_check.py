"""check_dataset: layout detection, one test per kind of problem, and the summary of a clean set."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from parvis.data.check import check_dataset, find_layouts
from parvis.errors import ParvisError

from .test_formats import truncate, write_image, write_json, write_mask

CLASSES = ["circle", "square"]
HEIGHT, WIDTH = 24, 32  # not square, so a swapped width/height shows


def make_dataset(root: Path, per_split: dict[str, int] | None = None) -> Path:
    """The generator's layout in miniature: scenes under images/, masks, COCO JSON, ImageFolder hard links."""
    per_split = per_split or {"train": 4, "val": 2}
    config = {
        "name": "tiny",
        "classes": CLASSES,
        "classification": {"format": "imagefolder"},
        "segmentation": {"format": "masks", "classes": ["background", *CLASSES], "ignore_index": 255},
        "detection": {"format": "coco"},
    }
    for split, count in per_split.items():
        images, annotations = [], []
        for i in range(count):
            name = f"{i:06d}.jpg"
            cls = i % len(CLASSES)
            image = write_image(root / "images" / split / name, HEIGHT, WIDTH, value=40 + 20 * i)
            mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
            mask[4:12, 6:18] = cls + 1
            mask[12, 6:18] = 255
            write_mask(root / "masks" / split / f"{i:06d}.png", mask)
            link = root / "classification" / split / CLASSES[cls] / name
            link.parent.mkdir(parents=True, exist_ok=True)
            os.link(image, link)
            images.append({"id": i, "file_name": name, "width": WIDTH, "height": HEIGHT})
            annotations.append(
                {"id": i, "image_id": i, "category_id": cls + 1, "bbox": [6, 4, 12, 8], "area": 96, "iscrowd": 0}
            )
        categories = [{"id": k + 1, "name": name} for k, name in enumerate(CLASSES)]
        write_json(
            root / "annotations" / f"instances_{split}.json",
            {"images": images, "annotations": annotations, "categories": categories},
        )
        config["classification"][split] = f"classification/{split}"
        config["segmentation"][split] = {"images": f"images/{split}", "masks": f"masks/{split}"}
        config["detection"][split] = {"images": f"images/{split}", "annotations": f"annotations/instances_{split}.json"}
    (root / "dataset.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "tiny")


def edit_coco(root: Path, edit: Callable[[dict], None], split: str = "train") -> None:
    path = root / "annotations" / f"instances_{split}.json"
    data = json.loads(path.read_text())
    edit(data)
    write_json(path, data)


def test_clean_dataset_has_no_problems_and_a_summary(dataset: Path) -> None:
    report = check_dataset(dataset, workers=1)
    assert report.problems == [] and report.lines() == [] and report.ok
    names = ["classification/train", "classification/val", "segmentation/train", "segmentation/val"]
    assert report.layouts == [*names, "detection/train", "detection/val"]
    json.dumps(report.summary)  # the CLI writes it as JSON
    # images/ is shared by segmentation and detection: 6 scenes + 6 masks + 6 classification links.
    assert report.summary["files_checked"] == 18
    layouts = {task: report.summary[task] for task in ("classification", "segmentation", "detection")}
    classification = layouts["classification"]["train"]
    assert classification["images"] == 4 and classification["images_per_class"] == {"circle": 2, "square": 2}
    assert classification["size"]["width"] == {"min": WIDTH, "median": WIDTH, "max": WIDTH}
    assert classification["size"]["height"]["median"] == HEIGHT
    coverage = layouts["segmentation"]["train"]["coverage"]
    assert list(coverage) == ["background", "circle", "square", "ignore"]
    assert coverage["circle"] == pytest.approx(2 * 96 / (4 * HEIGHT * WIDTH), abs=1e-5)
    assert sum(coverage.values()) == pytest.approx(1.0)
    detection = layouts["detection"]["val"]
    assert detection["boxes_per_class"] == {"circle": 1, "square": 1}
    assert detection["boxes_per_image_mean"] == 1.0 and detection["images_without_boxes"] == 0
    assert all(split["problems"] == 0 for task in layouts.values() for split in task.values())


def test_process_pool_gives_the_same_report(dataset: Path) -> None:
    inline = check_dataset(dataset, workers=1)
    truncate(dataset / "images" / "val" / "000001.jpg")
    pooled = check_dataset(dataset, workers=2, progress=True)
    assert pooled.summary["files_checked"] == inline.summary["files_checked"]
    assert pooled.summary["detection"]["train"] == inline.summary["detection"]["train"]
    assert any("images/val/000001.jpg" in line for line in pooled.lines())


def zero_byte(root: Path) -> None:
    (root / "images" / "train" / "000001.jpg").write_bytes(b"")


def truncated(root: Path) -> None:
    truncate(root / "images" / "train" / "000002.jpg")


def text_as_jpeg(root: Path) -> None:
    (root / "classification" / "train" / "circle" / "readme.jpg").write_text("this is not a picture\n")


def decompression_bomb(root: Path) -> None:
    # 144 M pixels in ~18 kB: must be refused from the header, never decoded.
    Image.new("1", (12000, 12000)).save(root / "classification" / "train" / "square" / "bomb.png")


def missing_mask(root: Path) -> None:
    (root / "masks" / "train" / "000003.png").unlink()


def wrong_size_mask(root: Path) -> None:
    write_mask(root / "masks" / "train" / "000001.png", np.zeros((HEIGHT, WIDTH + 1)))


def out_of_range_mask(root: Path) -> None:
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    mask[0, 0] = 9
    write_mask(root / "masks" / "train" / "000002.png", mask)


def box_outside(root: Path) -> None:
    edit_coco(root, lambda data: data["annotations"][1].update(bbox=[20, 4, 13, 8]))  # 20 + 13 > 32


def non_positive_box(root: Path) -> None:
    edit_coco(root, lambda data: data["annotations"][1].update(bbox=[2, 2, 0, 5]))


def missing_image_file(root: Path) -> None:
    edit_coco(root, lambda data: data["images"].append({"id": 50, "file_name": "ghost.jpg", "width": 8, "height": 8}))


def unknown_category(root: Path) -> None:
    edit_coco(root, lambda data: data["annotations"][0].update(category_id=99))


def unknown_image_id(root: Path) -> None:
    edit_coco(root, lambda data: data["annotations"][0].update(image_id=999))


def json_size_differs(root: Path) -> None:
    edit_coco(root, lambda data: data["images"][2].update(width=64))


def empty_class_folder(root: Path) -> None:
    (root / "classification" / "val" / "triangle").mkdir()


def bad_json(root: Path) -> None:
    (root / "annotations" / "instances_val.json").write_text('{"images": [')


BROKEN = {
    "zero-byte": (zero_byte, "images/train/000001.jpg", "empty file"),
    "truncated": (truncated, "images/train/000002.jpg", "truncated"),
    "text-as-jpeg": (text_as_jpeg, "readme.jpg", "not an image"),
    "decompression-bomb": (decompression_bomb, "bomb.png", "decompression bomb"),
    "missing-mask": (missing_mask, "000003.png", "no mask"),
    "wrong-size-mask": (wrong_size_mask, "masks/train/000001.png", "33x24"),
    "out-of-range-mask": (out_of_range_mask, "masks/train/000002.png", "label ids 9"),
    "box-outside": (box_outside, "instances_train.json", "outside the 32x24 image"),
    "non-positive-box": (non_positive_box, "instances_train.json", "non-positive"),
    "missing-image-file": (missing_image_file, "ghost.jpg", "does not exist"),
    "unknown-category": (unknown_category, "instances_train.json", "category_id 99"),
    "unknown-image-id": (unknown_image_id, "instances_train.json", "image id 999"),
    "json-size-differs": (json_size_differs, "images/train/000002.jpg", "64x24"),
    "empty-class-folder": (empty_class_folder, "classification/val/triangle", "empty class folder"),
    "bad-json": (bad_json, "instances_val.json", "not valid JSON"),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_problem_names_the_file(dataset: Path, name: str) -> None:
    breaker, file_name, words = BROKEN[name]
    breaker(dataset)
    report = check_dataset(dataset, workers=1)
    hits = [line for line in report.lines() if file_name in line and words in line]
    assert hits, report.lines()
    assert report.ok == (name == "empty-class-folder")  # the only warning-level problem


def test_problem_counts_per_layout(dataset: Path) -> None:
    zero_byte(dataset)  # shared by segmentation and detection, hard-linked into classification
    report = check_dataset(dataset, workers=1)
    counts = [report.summary[task]["train"]["problems"] for task in ("classification", "segmentation", "detection")]
    assert counts == [1, 1, 1]
    # One line for images/ (deduplicated across two layouts), one for the classification link.
    assert len(report.problems) == 2


def test_layouts_detected_without_yaml(dataset: Path) -> None:
    (dataset / "dataset.yaml").unlink()
    names = [layout.name for layout in find_layouts(dataset)]
    assert names == [
        "detection/train",
        "detection/val",
        "segmentation/train",
        "segmentation/val",
        "classification/train",
        "classification/val",
    ]
    report = check_dataset(dataset, workers=1)
    assert report.ok, report.lines()
    assert report.summary["segmentation"]["train"]["coverage"]["1"] > 0  # ids without class names


def test_plain_imagefolder_detected(tmp_path: Path) -> None:
    write_image(tmp_path / "cat" / "a.jpg")
    write_image(tmp_path / "dog" / "b.jpg")
    assert [layout.name for layout in find_layouts(tmp_path)] == ["classification/all"]
    report = check_dataset(tmp_path)
    assert report.ok and report.summary["classification"]["all"]["images"] == 2


def test_flat_mask_folders_detected(tmp_path: Path) -> None:
    write_image(tmp_path / "images" / "a.jpg", HEIGHT, WIDTH)
    write_mask(tmp_path / "masks" / "a.png", np.ones((HEIGHT, WIDTH)))
    assert [layout.name for layout in find_layouts(tmp_path)] == ["segmentation/all"]
    report = check_dataset(tmp_path)
    assert report.ok and report.summary["segmentation"]["all"]["coverage"]["1"] == 1.0


def test_coco_json_next_to_images_detected(tmp_path: Path) -> None:
    write_image(tmp_path / "images" / "a.jpg")
    write_json(
        tmp_path / "boxes.json",
        {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [], "categories": [{"id": 1, "name": "x"}]},
    )
    layouts = find_layouts(tmp_path)
    assert [(layout.name, layout.paths["images"]) for layout in layouts] == [("detection/boxes", tmp_path / "images")]


def test_unrecognized_layout_says_what_is_recognized(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ParvisError, match="no dataset.yaml and no recognized layout.*COCO.*ImageFolder"):
        check_dataset(tmp_path)
    with pytest.raises(ParvisError, match="no such dataset folder"):
        check_dataset(tmp_path / "missing")


@pytest.mark.parametrize(
    "text, words",
    [
        ("classes: [a, b\n", "cannot be read as YAML"),
        ("- just\n- a list\n", "expected a mapping"),
        ("segmentation: {train: images/train}\n", "segmentation.train needs 'images' and 'masks'"),
        ("detection: {format: pascal, train: {images: i, annotations: a.json}}\n", "choose one of: coco, yolo, voc"),
        ("detection: {format: yolo, train: {images: images/train}}\n", "needs 'classes'"),
        ("name: nothing\n", "lists no splits"),
    ],
)
def test_invalid_yaml_names_the_file(dataset: Path, text: str, words: str) -> None:
    (dataset / "dataset.yaml").write_text(text)
    with pytest.raises(ParvisError, match="dataset.yaml") as info:
        check_dataset(dataset)
    assert words in str(info.value)


def test_yaml_split_pointing_nowhere_is_a_problem(dataset: Path) -> None:
    shutil.rmtree(dataset / "masks" / "val")
    report = check_dataset(dataset, workers=1)
    assert any(line.startswith("masks/val: no such masks folder") for line in report.lines()), report.lines()
