from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from parvis.data import synth
from parvis.data.synth import CLASSES, IGNORE, render_scene, synthesize
from parvis.errors import ParvisError

N, SIZE, SEED = 40, 64, 7


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("shapes") / "ds"
    summary = synthesize(out, n=N, size=SIZE, seed=SEED, workers=2, progress=False)
    return out, summary


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _coco(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())


def _inside(box: list[float], ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    x, y, w, h = box
    return (xs >= x) & (xs < x + w) & (ys >= y) & (ys < y + h)


def test_same_seed_is_byte_identical_across_worker_counts(tmp_path: Path) -> None:
    one = synthesize(tmp_path / "one", n=24, size=SIZE, seed=3, workers=1, progress=False)
    two = synthesize(tmp_path / "two", n=24, size=SIZE, seed=3, workers=2, progress=False)
    synthesize(tmp_path / "other", n=24, size=SIZE, seed=4, workers=2, progress=False)
    assert one["workers"] == 1 and two["workers"] == 2
    a, b, c = _files(tmp_path / "one"), _files(tmp_path / "two"), _files(tmp_path / "other")
    assert a == b
    assert a.keys() != c.keys() or any(a[k] != c[k] for k in a)
    # The files are exactly what render_scene returns (masks are lossless).
    mask_path = next(k for k in a if k.startswith("masks/"))
    index = int(Path(mask_path).stem)
    _, mask, _ = render_scene(index, SIZE, 3)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "one" / mask_path)), mask)


def test_render_scene_contract() -> None:
    image, mask, instances = render_scene(5, 96, 1)
    assert image.shape == (96, 96, 3) and image.dtype == np.uint8
    assert mask.shape == (96, 96) and mask.dtype == np.uint8
    assert instances and all(set(i) == {"category_id", "bbox", "area"} for i in instances)
    again = render_scene(5, 96, 1)
    assert np.array_equal(image, again[0]) and np.array_equal(mask, again[1]) and instances == again[2]


def test_masks_agree_with_boxes(dataset: tuple[Path, dict]) -> None:
    root, _ = dataset
    ignored = total = 0
    for split in ("train", "val"):
        coco = _coco(root, split)
        boxes: dict[int, list[dict]] = {}
        for ann in coco["annotations"]:
            boxes.setdefault(ann["image_id"], []).append(ann)
        for img in coco["images"]:
            mask = np.asarray(Image.open(root / "masks" / split / img["file_name"].replace(".jpg", ".png")))
            assert mask.shape == (img["height"], img["width"])
            assert set(np.unique(mask).tolist()) <= {0, 1, 2, 3, 4, 5, IGNORE}
            anns = boxes.get(img["id"], [])
            for cls in range(1, len(CLASSES) + 1):
                ys, xs = np.nonzero(mask == cls)
                covered = np.zeros(len(ys), bool)
                for ann in anns:
                    if ann["category_id"] == cls:
                        inside = _inside(ann["bbox"], ys, xs)
                        assert inside.any(), (
                            f"{split}/{img['file_name']}: box {ann['bbox']} holds no pixel of its class"
                        )
                        covered |= inside
                assert covered.all(), f"{split}/{img['file_name']}: class {cls} pixels outside every box of the class"
            for ann in anns:
                x, y, w, h = ann["bbox"]
                assert 0 <= x and 0 <= y and x + w <= img["width"] and y + h <= img["height"]
                assert ann["area"] >= synth.MIN_AREA and ann["area"] <= w * h
            ignored += int(np.count_nonzero(mask == IGNORE))
            total += mask.size
    assert ignored / total < 0.15


def test_classes_balanced_and_splits_disjoint(dataset: tuple[Path, dict]) -> None:
    root, summary = dataset
    seen: dict[str, str] = {}
    for split in ("train", "val"):
        counts = {c: len(list((root / "classification" / split / c).iterdir())) for c in CLASSES}
        assert max(counts.values()) - min(counts.values()) <= 1
        assert counts == summary["classes"][split]
        for c in CLASSES:
            for f in (root / "classification" / split / c).iterdir():
                # The same scene file, not a re-encoded copy.
                assert f.read_bytes() == (root / "images" / split / f.name).read_bytes()
        for f in (root / "images" / split).iterdir():
            assert f.name not in seen, f"{f.name} is in both {seen[f.name]} and {split}"
            seen[f.name] = split
    assert sorted(seen) == [f"{i:06d}.jpg" for i in range(N)]
    assert Counter(seen.values()) == {"train": N - round(N * 0.2), "val": round(N * 0.2)}
    total = Counter()
    for split in ("train", "val"):
        total.update(summary["classes"][split])
    assert max(total.values()) - min(total.values()) <= 1


def test_label_is_the_largest_object(dataset: tuple[Path, dict]) -> None:
    root, _ = dataset
    for split in ("train", "val"):
        coco = _coco(root, split)
        label = {f.name: c for c in CLASSES for f in (root / "classification" / split / c).iterdir()}
        for img in coco["images"]:
            anns = [a for a in coco["annotations"] if a["image_id"] == img["id"]]
            largest = max(anns, key=lambda a: a["area"])
            assert CLASSES[largest["category_id"] - 1] == label[img["file_name"]]


def test_coco_is_consistent(dataset: tuple[Path, dict]) -> None:
    root, summary = dataset
    ann_ids: list[int] = []
    image_ids: list[int] = []
    for split in ("train", "val"):
        coco = _coco(root, split)
        assert coco["categories"] == [
            {"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES)
        ]
        ids = {img["id"] for img in coco["images"]}
        for img in coco["images"]:
            assert "/" not in img["file_name"] and (root / "images" / split / img["file_name"]).is_file()
            assert (img["width"], img["height"]) == (SIZE, SIZE)
        for ann in coco["annotations"]:
            assert ann["image_id"] in ids and ann["iscrowd"] == 0 and 1 <= ann["category_id"] <= len(CLASSES)
            assert ann["id"] >= 1
        assert len(coco["images"]) == summary["splits"][split]
        assert len(coco["annotations"]) == summary["instances"][split]
        ann_ids += [a["id"] for a in coco["annotations"]]
        image_ids += list(ids)
    assert len(ann_ids) == len(set(ann_ids)) and len(image_ids) == len(set(image_ids)) == N


def test_dataset_yaml(dataset: tuple[Path, dict]) -> None:
    root, _ = dataset
    meta = yaml.safe_load((root / "dataset.yaml").read_text())
    assert list(meta) == [
        "name", "generator", "version", "seed", "image_size", "classes", "splits",
        "classification", "segmentation", "detection",
    ]  # fmt: skip
    assert meta["name"] == "shapes" and meta["generator"] == "parvis.data.synth" and meta["version"] == 1
    assert meta["seed"] == SEED and meta["image_size"] == SIZE and meta["classes"] == list(CLASSES)
    assert meta["splits"] == {"train": N - round(N * 0.2), "val": round(N * 0.2)}
    assert meta["classification"] == {
        "format": "imagefolder",
        "train": "classification/train",
        "val": "classification/val",
    }
    assert meta["segmentation"] == {
        "format": "masks",
        "train": {"images": "images/train", "masks": "masks/train"},
        "val": {"images": "images/val", "masks": "masks/val"},
        "classes": ["background", *CLASSES],
        "ignore_index": 255,
    }
    assert meta["detection"] == {
        "format": "coco",
        "train": {"images": "images/train", "annotations": "annotations/instances_train.json"},
        "val": {"images": "images/val", "annotations": "annotations/instances_val.json"},
    }
    assert not list(root.parent.glob("*.tmp-*"))


def test_refuses_non_empty_out_but_accepts_empty_dir(tmp_path: Path) -> None:
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    with pytest.raises(ParvisError, match="already exists and is not empty"):
        synthesize(full, n=5, size=32, progress=False)
    assert os.listdir(full) == ["keep.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    synthesize(empty, n=5, size=32, workers=1, progress=False)
    assert (empty / "dataset.yaml").is_file()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n": 0}, "n"),
        ({"size": 31}, "size"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"val_fraction": -0.1}, "val_fraction"),
        ({"seed": -1}, "seed"),
        ({"workers": 0}, "workers"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, name: str) -> None:
    with pytest.raises(ParvisError, match=name):
        synthesize(tmp_path / "out", **{"progress": False, **kwargs})
    assert not (tmp_path / "out").exists()


def test_failure_removes_temporary_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(synth, "_write_outputs", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        synthesize(tmp_path / "out", n=5, size=32, workers=1, progress=False)
    assert os.listdir(tmp_path) == []


def test_color_does_not_give_the_class() -> None:
    """Nearest-class-mean on the dominant object's mean colour, fit on 100 scenes, tested on 100."""
    features, labels = [], []
    for index in range(200):
        image, mask, instances = render_scene(index, SIZE, 11)
        dominant = max(instances, key=lambda a: a["area"])
        x, y, w, h = (int(v) for v in dominant["bbox"])
        pixels = image[y : y + h, x : x + w][mask[y : y + h, x : x + w] == dominant["category_id"]]
        features.append(pixels.mean(axis=0) / 255)
        labels.append(dominant["category_id"] - 1)
    features, labels = np.array(features), np.array(labels)
    fit, test = slice(0, 100), slice(100, 200)
    means = np.stack([features[fit][labels[fit] == c].mean(axis=0) for c in range(len(CLASSES))])
    predicted = np.linalg.norm(features[test][:, None] - means[None], axis=2).argmin(axis=1)
    assert (predicted == labels[test]).mean() < 0.4
