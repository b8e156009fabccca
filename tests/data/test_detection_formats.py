"""YOLO and Pascal VOC detection layouts: reading, every problem by file and line, and conversion between formats."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from parvis.data.check import check_dataset, find_layouts, open_dataset
from parvis.data.convert import convert_detection
from parvis.data.voc import VocDetectionDataset
from parvis.data.yolo import YoloDetectionDataset, label_path, load_yolo_config
from parvis.errors import BadSampleError, ParvisError

from .test_formats import ann, coco_file, write_image

NAMES = ["cat", "dog", "bird"]
H, W = 40, 80  # not square: a swapped width/height shows


def write_yolo(root: Path, labels: dict[str, str | None], split: str = "train", names: object = None) -> Path:
    """images/<split>/<name>.jpg with labels/<split>/<name>.txt (None: no label file) and data.yaml."""
    for i, (name, text) in enumerate(labels.items()):
        image = write_image(root / "images" / split / f"{name}.jpg", H, W, value=60 + 10 * i)
        if text is not None:
            label = label_path(image)
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text(text)
    config = {"train": "images/train", "val": "images/val", "names": names if names is not None else NAMES}
    (root / "images" / "val").mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text(yaml.safe_dump(config))
    return root


def test_label_path_replaces_the_last_images_folder() -> None:
    assert label_path(Path("/d/images/train/a.b.jpg")) == Path("/d/labels/train/a.b.txt")
    assert label_path(Path("/images/x/images/val/a.png")) == Path("/images/x/labels/val/a.txt")
    assert label_path(Path("/d/pics/a.jpg")) == Path("/d/pics/a.txt")


def test_yolo_boxes_in_pixels_polygons_and_empty_files(tmp_path: Path) -> None:
    root = write_yolo(
        tmp_path,
        {
            "a": "1 0.5 0.5 0.5 0.25\n\n2 0.125 0.25 0.25 0.5\n",
            "b": "0 0.1 0.2 0.3 0.2 0.2 0.6\n",  # a polygon: its bounding box
            "c": "",  # intentionally empty
            "d": None,  # no label file: read as no objects (check warns)
        },
    )
    dataset = open_dataset(root, "detection", "train")
    assert isinstance(dataset, YoloDetectionDataset) and dataset.classes == NAMES and len(dataset) == 4
    image, target = dataset[0]
    assert image.shape == (3, H, W)
    assert target["boxes"].tolist() == [[20, 15, 60, 25], [0, 0, 20, 20]]
    assert target["labels"].tolist() == [1, 2]
    _, target = dataset[1]
    assert target["boxes"][0].tolist() == pytest.approx([8, 8, 24, 24], abs=1e-4) and target["labels"].tolist() == [0]
    for index in (2, 3):
        assert dataset[index][1]["boxes"].shape == (0, 4)


def test_yolo_names_as_mapping_and_count_mismatch(tmp_path: Path) -> None:
    root = write_yolo(tmp_path, {"a": ""}, names={0: "cat", 1: "dog"})
    assert load_yolo_config(root / "data.yaml").names == ["cat", "dog"]
    config = yaml.safe_load((root / "data.yaml").read_text())
    config["nc"] = 3
    (root / "data.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ParvisError, match="data.yaml: nc is 3 but names lists 2 classes"):
        load_yolo_config(root / "data.yaml")


def test_yolo_bad_line_error_names_file_and_line_and_skip(tmp_path: Path) -> None:
    root = write_yolo(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n7 0.5 0.5 0.2 0.2\n"})
    with pytest.raises(BadSampleError, match=r"a\.txt:2: class 7 is out of range: data.yaml names 3 classes"):
        open_dataset(root, "detection", "train")[0]
    assert open_dataset(root, "detection", "train", on_bad_sample="skip")[0] is None


def test_yolo_check_reports_each_problem_by_file_and_line(tmp_path: Path) -> None:
    root = write_yolo(
        tmp_path,
        {
            "a": "0 0.5 0.5 0.2 0.2\n3 0.5 0.5 0.2 0.2\n",  # class out of range
            "b": "1 0.5 1.4 0.2 0.2\n",  # outside [0, 1] (pixels written unnormalized)
            "c": "1 0.5 0.5 0.2\n",  # malformed: four values
            "d": "x 0.5 0.5 0.2 0.2\n",  # not numbers
            "e": "2 0.5 0.5 0.2 0.2\n2 0.5 0.5 0.2 0.2\n",  # duplicate: a warning
            "f": "",  # empty on purpose: fine
            "g": None,  # missing: a warning
        },
    )
    report = check_dataset(root)
    lines = report.lines()
    assert not report.ok
    expected = [
        "labels/train/a.txt:2: class 3 is out of range",
        "labels/train/b.txt:1: coordinates 1.4 are outside [0, 1]",
        "labels/train/c.txt:1: expected 'class cx cy w h' (5 values)",
        "labels/train/d.txt:1: not numbers",
        "labels/train/e.txt:2: warning: repeats line 1",
        "labels/train/g.txt: warning: no label file",
    ]
    for start in expected:
        assert sum(line.startswith(start) for line in lines) == 1, (start, lines)
    assert len(lines) == len(expected)
    stats = report.summary["detection"]["train"]
    assert stats["format"] == "yolo" and stats["images"] == 7 and stats["missing_label_files"] == 1


def test_yolo_without_any_label_file_is_an_error(tmp_path: Path) -> None:
    root = write_yolo(tmp_path, {"a": None, "b": None})
    report = check_dataset(root)
    assert not report.ok
    assert any("none of the 2 images has a label file" in line for line in report.lines())


def test_yolo_folders_without_data_yaml_say_what_to_write(tmp_path: Path) -> None:
    write_yolo(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n"})
    (tmp_path / "data.yaml").unlink()
    with pytest.raises(ParvisError, match="has images/ and labels/ .* but no data.yaml naming the classes"):
        find_layouts(tmp_path)


def write_voc(root: Path, objects: dict[str, str], size: tuple[int, int] = (W, H), splits: dict | None = None) -> Path:
    """Annotations/<id>.xml with the given <object> XML, JPEGImages/<id>.jpg, and ImageSets/Main lists."""
    for i, (stem, body) in enumerate(objects.items()):
        write_image(root / "JPEGImages" / f"{stem}.jpg", H, W, value=50 + 10 * i)
        xml = root / "Annotations" / f"{stem}.xml"
        xml.parent.mkdir(parents=True, exist_ok=True)
        xml.write_text(
            f"<annotation>\n  <filename>{stem}.jpg</filename>\n"
            f"  <size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>\n{body}</annotation>\n"
        )
    for split, ids in (splits or {}).items():
        listing = root / "ImageSets" / "Main" / f"{split}.txt"
        listing.parent.mkdir(parents=True, exist_ok=True)
        listing.write_text("".join(f"{i}\n" for i in ids))
    return root


def voc_object(name: str, box: tuple, difficult: int = 0) -> str:
    coords = "".join(f"<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True))
    return (
        f"  <object>\n    <name>{name}</name>\n    <difficult>{difficult}</difficult>\n"
        f"    <bndbox>{coords}</bndbox>\n  </object>\n"
    )


def test_voc_one_based_boxes_difficult_and_classes(tmp_path: Path) -> None:
    root = write_voc(
        tmp_path,
        {"a": voc_object("dog", (1, 1, 20, 10)) + voc_object("cat", (5, 5, 9, 9), difficult=1), "b": ""},
        splits={"train": ["a"], "val": ["b"]},
    )
    assert [layout.name for layout in find_layouts(root)] == ["detection/train", "detection/val"]
    dataset = open_dataset(root, "detection", "train")
    assert isinstance(dataset, VocDetectionDataset)
    assert dataset.classes == ["cat", "dog"]  # every name in Annotations/, sorted: train and val agree
    _, target = dataset[0]
    assert target["boxes"].tolist() == [[0, 0, 20, 10]]  # 1-based inclusive -> 0-based continuous
    assert target["labels"].tolist() == [1]  # the difficult cat is left out
    assert open_dataset(root, "detection", "val")[0][1]["boxes"].shape == (0, 4)


def test_voc_without_image_sets_is_one_split(tmp_path: Path) -> None:
    root = write_voc(tmp_path, {"a": voc_object("dog", (1, 1, 20, 10))})
    assert [layout.name for layout in find_layouts(root)] == ["detection/all"]


def test_voc_check_reports_each_problem_by_file_and_line(tmp_path: Path) -> None:
    root = write_voc(
        tmp_path,
        {
            "ok": voc_object("dog", (1, 1, 20, 10)),
            "outside": voc_object("dog", (1, 1, 20, 10)) + voc_object("dog", (50, 5, 95, 30)),
            "nobox": "  <object>\n    <name>cat</name>\n  </object>\n",
            "words": voc_object("cat", (1, "one", 5, 5)),
            "flipped": voc_object("cat", (30, 5, 10, 9)),
        },
    )
    (root / "Annotations" / "broken.xml").write_text("<annotation>\n  <object>\n</annotation>\n")
    write_image(root / "JPEGImages" / "broken.jpg", H, W)
    (root / "Annotations" / "lost.xml").write_text((root / "Annotations" / "ok.xml").read_text())
    write_voc(tmp_path / "other", {"resized": voc_object("dog", (1, 1, 20, 10))}, size=(W * 2, H * 2))
    for name in ("resized.xml", "resized.jpg"):
        folder = "Annotations" if name.endswith("xml") else "JPEGImages"
        (tmp_path / "other" / folder / name).rename(root / folder / name)
    lines = check_dataset(root).lines()
    expected = [
        "Annotations/outside.xml:9: object 'dog' extends outside the 80x40 image",
        "Annotations/nobox.xml:4: object 'cat' has no <bndbox>",
        "Annotations/words.xml:4: object 'cat': <bndbox> values are not numbers",
        "Annotations/flipped.xml:4: object 'cat': box (30, 5, 10, 9) has max < min",
        "Annotations/broken.xml:3: not valid XML (mismatched tag)",
        "JPEGImages/lost.jpg: no image for Annotations/lost.xml",
        "Annotations/resized.xml: <size> says 160x80 but the image is 80x40",
    ]
    for start in expected:
        assert sum(line.startswith(start) for line in lines) == 1, (start, "\n".join(lines))
    assert len(lines) == len(expected)


def test_voc_unknown_class_when_classes_are_given(tmp_path: Path) -> None:
    root = write_voc(tmp_path, {"a": voc_object("horse", (1, 1, 20, 10))})
    dataset = VocDetectionDataset(root / "JPEGImages", root / "Annotations", classes=["cat", "dog"])
    with pytest.raises(BadSampleError, match=r"a\.xml:4: class 'horse' is not one of the classes"):
        dataset[0]


def coco_source(root: Path) -> Path:
    """Two splits in COCO JSON with fractional boxes, a crowd box and an image without boxes."""
    for split, names in (("train", ["a.jpg", "sub/b.jpg"]), ("val", ["c.jpg"])):
        images = []
        for i, name in enumerate(names, start=1):
            write_image(root / "images" / split / name, H, W, value=40 * i)
            images.append({"id": i, "file_name": name, "width": W, "height": H})
        annotations = [ann(1, 1, 7, [2.3, 3.7, 10.5, 5.25]), ann(2, 1, 3, [0, 0, 80, 40]),
                       ann(3, 1, 3, [1, 1, 5, 5], iscrowd=1)]  # fmt: skip
        coco_file(root / "annotations" / f"instances_{split}.json", images, annotations)
    return root


def boxes_by_name(root: Path, split: str) -> dict[str, list]:
    dataset = open_dataset(root, "detection", split)
    found = {}
    for i in range(len(dataset)):
        target = dataset[i][1]
        rows = zip(target["labels"].tolist(), target["boxes"].tolist(), strict=True)
        found[dataset.relative_name(i)] = sorted((dataset.classes[label], box) for label, box in rows)
    return found


def test_coco_to_yolo_to_coco_round_trips_within_a_pixel(tmp_path: Path) -> None:
    src = coco_source(tmp_path / "coco")
    result = convert_detection(src, "yolo", tmp_path / "yolo")
    assert result["splits"] == {"train": 2, "val": 1} and result["dropped_ignored"] == 2
    assert (tmp_path / "yolo" / "labels" / "train" / "sub" / "b.txt").read_text() == ""  # empty on purpose
    assert check_dataset(tmp_path / "yolo").ok
    convert_detection(tmp_path / "yolo", "coco", tmp_path / "back")
    for split in ("train", "val"):
        before, after = boxes_by_name(src, split), boxes_by_name(tmp_path / "back", split)
        assert before.keys() == after.keys()
        for name in before:
            assert [c for c, _ in before[name]] == [c for c, _ in after[name]]
            for (_, a), (_, b) in zip(before[name], after[name], strict=True):
                assert a == pytest.approx(b, abs=1.0)
    written = json.loads((tmp_path / "back" / "annotations" / "instances_train.json").read_text())
    assert [c["name"] for c in written["categories"]] == ["cat", "dog"]


def test_voc_to_coco_keeps_difficult_as_crowd(tmp_path: Path) -> None:
    root = write_voc(
        tmp_path / "voc", {"a": voc_object("dog", (1, 1, 20, 10)) + voc_object("cat", (5, 5, 9, 9), difficult=1)}
    )
    convert_detection(root, "coco", tmp_path / "coco")
    data = json.loads((tmp_path / "coco" / "annotations" / "instances_all.json").read_text())
    assert [(a["bbox"], a["iscrowd"]) for a in data["annotations"]] == [([0, 0, 20, 10], 0), ([4, 4, 5, 5], 1)]


def test_convert_refuses_bad_input_and_writes_nothing(tmp_path: Path) -> None:
    src = write_yolo(tmp_path / "src", {"a": "0 0.5 0.5 0.2 0.2\n", "b": "9 0.5 0.5 0.2 0.2\n"})
    with pytest.raises(ParvisError, match=r"1 annotation problem\(s\), nothing written: .*b\.txt:1: class 9"):
        convert_detection(src, "coco", tmp_path / "out")
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["src"]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(ParvisError, match="full: exists and is not an empty folder"):
        convert_detection(src, "yolo", tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_cli_convert_and_check(tmp_path: Path) -> None:
    src = coco_source(tmp_path / "coco")
    cli = [sys.executable, "-m", "parvis", "data"]
    done = subprocess.run([*cli, "convert", str(src), "--to", "yolo", "--out", str(tmp_path / "y")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "wrote 3 images (train 2, val 1; hard-linked) and 4 boxes of 2 classes in the YOLO layout" in done.stdout
    assert "left out 2 crowd/difficult objects" in done.stdout
    (tmp_path / "y" / "labels" / "val" / "c.txt").write_text("5 0.5 0.5 0.1 0.1\n")
    done = subprocess.run([*cli, "check", str(tmp_path / "y")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "labels/val/c.txt:1: class 5 is out of range: data.yaml names 2 classes (ids 0-1)" in done.stdout
    done = subprocess.run([*cli, "convert", str(tmp_path / "y"), "--to", "coco", "--out", str(tmp_path / "c")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and not (tmp_path / "c").exists()
    assert done.stderr.strip().count("\n") == 0 and "c.txt:1: class 5 is out of range" in done.stderr


def test_coco_with_an_ultralytics_labels_folder_and_yearly_split_names(tmp_path: Path) -> None:
    """Ultralytics' COCO download has annotations/, images/ and labels/ side by side: COCO is read, no error;
    split names like train2017 survive a conversion to YOLO and back."""
    src = tmp_path / "coco"
    write_image(src / "images" / "train2017" / "a.jpg", H, W)
    coco_file(src / "annotations" / "instances_train2017.json", [{"id": 1, "file_name": "a.jpg", "width": W,
              "height": H}], [ann(1, 1, 7, [0, 0, 10, 10])])  # fmt: skip
    (src / "labels" / "train2017").mkdir(parents=True)
    assert [layout.name for layout in find_layouts(src)] == ["detection/train2017"]
    convert_detection(src, "yolo", tmp_path / "y")
    config = load_yolo_config(tmp_path / "y" / "data.yaml")
    assert list(config.splits) == ["train2017"]
    assert open_dataset(tmp_path / "y", "detection", "train2017")[0][1]["boxes"].tolist() == [[0, 0, 10, 10]]


def test_voc_overhang_is_clamped_in_coco_output_and_an_empty_test_key_is_no_split(tmp_path: Path) -> None:
    root = write_voc(tmp_path / "voc", {"a": voc_object("dog", (0, 0, 80, 40))})  # 0-based corners: 1 px over
    convert_detection(root, "coco", tmp_path / "coco")
    assert check_dataset(tmp_path / "coco").ok  # COCO tolerates only half a pixel: the box was clamped
    yolo = write_yolo(tmp_path / "y", {"a": "0 0.5 0.5 0.2 0.2\n"})
    config = yaml.safe_load((yolo / "data.yaml").read_text())
    (yolo / "data.yaml").write_text(yaml.safe_dump({**config, "test": None, "license": "CC BY 4.0"}))
    assert [layout.name for layout in find_layouts(yolo)] == ["detection/train", "detection/val"]
