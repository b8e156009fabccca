"""Inspection data: the synthetic parts and their defect masks, the MVTec AD-layout reader, its data check and CLI."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from parvis.cli.main import main
from parvis.data.check import check_dataset, find_layouts, open_dataset
from parvis.data.datasets import LayoutError
from parvis.data.inspection import InspectionDataset, has_split, is_inspection_root
from parvis.data.inspection_synth import (
    AREA,
    FAMILIES,
    PROCEDURAL_TEXTURES,
    check_args,
    plan_splits,
    render_sample,
    synthesize_inspection,
)
from parvis.errors import BadSampleError, ParvisError

N, SIZE, SEED = 24, 48, 3


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("inspection") / "ds"
    return out, synthesize_inspection(out, n=N, size=SIZE, texture="fabric", seed=SEED, workers=2, progress=False)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _write(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def _rgb(seed: int, height: int = 8, width: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _mask(height: int = 8, width: int = 8, value: int = 255) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    mask[2:5, 3:6] = value
    return mask


def make_mvtec(root: Path, good: int = 4, broken: int = 3, train: int = 3) -> Path:
    """An MVTec AD category in miniature: train/good, test/good, test/broken and ground_truth/broken, no val."""
    for i in range(train):
        _write(root / "train" / "good" / f"{i:03d}.png", _rgb(i))
    for i in range(good):
        _write(root / "test" / "good" / f"{i:03d}.png", _rgb(100 + i))
    for i in range(broken):
        _write(root / "test" / "broken" / f"{i:03d}.png", _rgb(200 + i))
        _write(root / "ground_truth" / "broken" / f"{i:03d}_mask.png", _mask())
    return root


# --- generator ----------------------------------------------------------------------------------------------------


def test_same_seed_is_byte_identical_across_worker_counts(tmp_path: Path, generated: tuple[Path, dict]) -> None:
    root, summary = generated
    one = synthesize_inspection(
        tmp_path / "one", n=N, size=SIZE, texture="fabric", seed=SEED, workers=1, progress=False
    )
    synthesize_inspection(
        tmp_path / "other", n=N, size=SIZE, texture="fabric", seed=SEED + 1, workers=1, progress=False
    )
    assert one["workers"] == 1 and summary["workers"] == 2
    a, b, c = _files(tmp_path / "one"), _files(root), _files(tmp_path / "other")
    assert a == b
    assert any(a[k] != c[k] for k in a if k in c and k.endswith(".png"))
    assert not list(tmp_path.glob("*.tmp-*"))  # built under a temporary name, renamed when complete
    # The files hold what render_sample returns.
    split, family, number, index = next(item for item in plan_splits(N) if item[0] == "test" and item[1] != "good")
    _, image, mask = render_sample("fabric", SIZE, SEED, split, index, family)
    assert np.array_equal(np.asarray(Image.open(root / "test" / family / f"{number:03d}.png")), image)
    assert np.array_equal(np.asarray(Image.open(root / "ground_truth" / family / f"{number:03d}_mask.png")), mask)


def test_splits_follow_the_documented_shares() -> None:
    plan = plan_splits(400)
    per_split = Counter(split for split, *_ in plan)
    assert per_split == {"train": 240, "val": 60, "test": 100}
    good = Counter(split for split, family, *_ in plan if family == "good")
    assert good == {"train": 200, "val": 30, "test": 50}
    for split in ("train", "val", "test"):
        families = Counter(family for s, family, *_ in plan if s == split and family != "good")
        assert set(families) == set(FAMILIES) and max(families.values()) - min(families.values()) <= 1
        numbers = Counter((s, f, k) for s, f, k, _ in plan if s == split)
        assert max(numbers.values()) == 1  # no file name twice in a folder
    assert [i for s, _, _, i in plan if s == "val"] == list(range(60))


def test_layout_and_dataset_yaml(generated: tuple[Path, dict]) -> None:
    root, summary = generated
    meta = yaml.safe_load((root / "dataset.yaml").read_text())
    assert meta["task"] == "inspection" and meta["texture"] == "fabric" and meta["size"] == SIZE
    assert meta["seed"] == SEED and meta["families"] == list(FAMILIES) and meta["counts"] == summary["counts"]
    assert sum(sum(c.values()) for c in meta["counts"].values()) == N
    assert is_inspection_root(root) and has_split(root, "val")
    for split, counts in meta["counts"].items():
        for family, count in counts.items():
            assert len(list((root / split / family).glob("*.png"))) == count
            if family != "good":
                masks = root / "ground_truth" / (family if split == "test" else f"{split}/{family}")
                assert len(list(masks.glob("*_mask.png"))) == count
    assert [layout.name for layout in find_layouts(root)] == ["inspection/train", "inspection/val", "inspection/test"]


@pytest.mark.parametrize("texture", PROCEDURAL_TEXTURES)
def test_masks_cover_exactly_what_the_defect_changed(texture: str) -> None:
    for k, family in enumerate(FAMILIES):
        clean, defective, mask = render_sample(texture, 96, 7, "test", 40 + k, family)
        inside = mask > 0
        assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255}
        assert AREA[0] <= inside.mean() <= AREA[1], f"{texture} {family}: {inside.mean():.4f} of the image"
        change = np.abs(defective.astype(int) - clean.astype(int)).max(axis=2)
        assert not change[~inside].any(), f"{texture} {family} changed pixels outside its mask"
        assert change[inside].mean() > 6, f"{texture} {family}: mean change {change[inside].mean():.1f} levels"
    clean, defective, mask = render_sample(texture, 96, 7, "train", 0, "good")
    assert np.array_equal(clean, defective) and not mask.any()


def test_train_good_holds_no_defect(generated: tuple[Path, dict]) -> None:
    root, summary = generated
    good = InspectionDataset(root, "train", good_only=True)
    assert len(good) == summary["counts"]["train"]["good"] and set(good.families) == {"good"}
    assert good.labels == [0] * len(good) and good.split_note is None
    for i in range(len(good)):
        image, target = good[i]
        assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.uint8
        assert target.shape == (SIZE, SIZE) and target.dtype == torch.int64 and not target.any()
    everything = InspectionDataset(root, "train")
    assert sum(everything.labels) == sum(c for f, c in summary["counts"]["train"].items() if f != "good")
    defect = everything.labels.index(1)
    _, target = everything[defect]
    assert target.any() and set(target.unique().tolist()) == {0, 1}


# --- reader -------------------------------------------------------------------------------------------------------


def test_mvtec_category_reads_with_val_taken_from_test(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "bottle")
    assert is_inspection_root(root) and not has_split(root, "val")
    val, test = InspectionDataset(root, "val"), InspectionDataset(root, "test")
    assert [val.relative_name(i) for i in range(len(val))] == [
        "good/000.png", "good/002.png", "broken/000.png", "broken/002.png"]  # fmt: skip
    assert [test.relative_name(i) for i in range(len(test))] == ["good/001.png", "good/003.png", "broken/001.png"]
    assert val.labels == [0, 0, 1, 1] and val.families == ["good", "good", "broken", "broken"]
    assert "val" in val.split_note and "0, 2, 4" in val.split_note and "1, 3, 5" in test.split_note
    assert "\n" not in val.split_note
    image, target = val[2]
    assert isinstance(image, torch.Tensor) and image.shape == (3, 8, 8) and image.dtype == torch.uint8
    assert torch.equal(image.permute(1, 2, 0), torch.from_numpy(_rgb(200)))
    assert target.dtype == torch.int64 and torch.equal(target, torch.from_numpy(_mask(value=1).astype(np.int64)))
    assert not val[0][1].any()
    train = InspectionDataset(root, "train")
    assert len(train) == 3 and train.split_note is None and train.paths[0] == root / "train" / "good" / "000.png"
    assert len(InspectionDataset(root, "test", good_only=True)) == 2
    assert len(open_dataset(root, "inspection", "val")) == 4
    # The category folder is one inspection dataset, not an ImageFolder of train/good.
    assert [layout.name for layout in find_layouts(root)] == ["inspection/train", "inspection/val", "inspection/test"]
    # With a val/ of its own, test/ is whole again.
    _write(root / "val" / "good" / "000.png", _rgb(7))
    assert len(InspectionDataset(root, "test")) == 7 and InspectionDataset(root, "val").split_note is None


def test_other_splits_find_their_masks_under_ground_truth_split(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "part")
    _write(root / "train" / "scratch" / "000.png", _rgb(9))
    _write(root / "ground_truth" / "train" / "scratch" / "000_mask.png", _mask())
    dataset = InspectionDataset(root, "train")
    assert dataset.families[-1] == "scratch" and dataset[len(dataset) - 1][1].sum() == 9


def test_reader_errors_name_the_folder_or_file(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "a")
    with pytest.raises(LayoutError, match="nope"):
        InspectionDataset(tmp_path / "nope", "train")
    (root / "ground_truth" / "broken" / "001_mask.png").unlink()
    with pytest.raises(LayoutError, match=r"001.png: defect image has no mask ground_truth/broken/001_mask.png"):
        InspectionDataset(root, "test")
    assert len(InspectionDataset(root, "val")) == 4  # the missing mask is test's, not val's
    _write(root / "ground_truth" / "broken" / "000_mask.png", _mask(6, 8))
    with pytest.raises(BadSampleError, match=r"000_mask.png: mask is 8x6 but image 000.png is 8x8"):
        InspectionDataset(root, "val")[2]
    bare = tmp_path / "b"
    _write(bare / "train" / "good" / "000.png", _rgb(0))
    with pytest.raises(LayoutError, match=r"b/test: no such folder"):
        InspectionDataset(bare, "test")
    _write(bare / "test" / "broken" / "000.png", _rgb(0))
    with pytest.raises(LayoutError, match=r"test/good: no such folder"):
        InspectionDataset(bare, "val")
    for error in (LayoutError, BadSampleError):
        assert issubclass(error, ParvisError)


# --- data check ---------------------------------------------------------------------------------------------------


def test_check_names_each_problem_by_file(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "bad", good=2, broken=6)
    (root / "ground_truth" / "broken" / "000_mask.png").unlink()  # defect image without a mask
    _write(root / "ground_truth" / "broken" / "009_mask.png", _mask())  # mask without an image
    _write(root / "ground_truth" / "broken" / "001_mask.png", _mask(8, 6))  # another size
    _write(root / "ground_truth" / "broken" / "002_mask.png", _mask(value=0))  # empty
    _write(root / "ground_truth" / "broken" / "003_mask.png", _rgb(5))  # RGB
    Image.fromarray(_mask().astype(np.uint16) * 200).save(root / "ground_truth" / "broken" / "004_mask.png")  # 16-bit
    _write(root / "ground_truth" / "good" / "000_mask.png", _mask())  # a good image with defect pixels
    _write(root / "ground_truth" / "good" / "001_mask.png", _mask(value=0))  # empty: fine
    report = check_dataset(root)
    found = {(p.path, p.severity): p.message for p in report.problems}
    expected = {
        "test/broken/000.png": "defect image has no mask ground_truth/broken/000_mask.png",
        "ground_truth/broken/009_mask.png": "mask without an image: no test/broken/009.*",
        "ground_truth/broken/001_mask.png": "mask is 6x8 but image 001.png is 8x8",
        "ground_truth/broken/002_mask.png": "empty mask (all 0) of a defect image in broken/",
        "ground_truth/broken/003_mask.png": "mask has mode RGB; expected an 8-bit single-channel PNG",
        "ground_truth/broken/004_mask.png": "expected an 8-bit single-channel PNG",
        "ground_truth/good/000_mask.png": "mask of a good image marks 9 defect pixels",
    }
    for path, needle in expected.items():
        assert needle in found.get((path, "error"), ""), f"{path}: {found.get((path, 'error'))!r}"
    assert len(report.problems) == len(expected) and not report.ok
    summary = report.summary["inspection"]
    assert summary["val"]["images_per_family"] == {"good": 1, "broken": 3} and "note" in summary["val"]
    assert summary["test"]["good"] == 1 and summary["test"]["defect"] == 3
    assert summary["train"]["images"] == 3


def test_check_reports_missing_or_empty_train_good(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "empty", train=0)
    (root / "train" / "good").mkdir(parents=True)
    report = check_dataset(root)
    assert [(p.path, p.severity) for p in report.problems] == [("train/good", "error")]
    assert "no images" in report.problems[0].message
    missing = make_mvtec(tmp_path / "missing", train=0)
    (missing / "dataset.yaml").write_text("task: inspection\n")
    report = check_dataset(missing)
    assert [(p.path, p.severity) for p in report.problems] == [("train", "error")]
    assert "no such folder" in report.problems[0].message


def test_check_of_generated_set_is_clean(generated: tuple[Path, dict]) -> None:
    root, summary = generated
    report = check_dataset(root)
    assert report.ok and not report.problems, report.lines()
    stats = report.summary["inspection"]
    for split, counts in summary["counts"].items():
        assert stats[split]["images_per_family"] == counts
        if stats[split]["masks"]:
            assert AREA[0] <= stats[split]["defect_area_median"] <= AREA[1]


# --- CLI ----------------------------------------------------------------------------------------------------------


def test_cli_synth_inspection_then_check(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli"
    argv = ["data", "synth", "--task", "inspection", "--out", str(out), "--n", "12", "--size", "40"]
    assert main([*argv, "--texture", "wood", "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 12 wood parts" in printed and "40 px" in printed
    assert yaml.safe_load((out / "dataset.yaml").read_text())["texture"] == "wood"
    assert main(["data", "check", str(out)]) == 0
    assert "no problems" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--task", "inspection", "--texture", "velvet"], "--texture 'velvet' is unknown; choose one of: metal"),
        (["--task", "inspection", "--size", "big"], "--size must be a whole number of pixels"),
        (["--task", "inspection", "--n", "3"], "n must be an integer >= 8"),
        (["--task", "inspection", "--val-fraction", "0.3"], "--val-fraction does not apply to --task inspection"),
        (["--texture", "metal"], "--texture applies to --task inspection only"),
    ],
)
def test_cli_synth_inspection_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], needle: str
) -> None:
    assert main(["data", "synth", "--out", str(tmp_path / "x"), *extra]) != 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in lines[0]
    assert not (tmp_path / "x").exists()


def test_photo_textures_need_scikit_image(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "skimage", None)  # import skimage now raises ImportError
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    with pytest.raises(ParvisError, match=r"^--texture brick needs scikit-image: pip install scikit-image$"):
        check_args(16, 64, "brick", 0, None)


def test_photo_texture_renders_with_scikit_image() -> None:
    pytest.importorskip("skimage")
    clean, defective, mask = render_sample("gravel", 64, 0, "test", 5, "missing")
    assert clean.shape == (64, 64, 3) and mask.any() and not np.array_equal(clean, defective)
    assert clean.std() > 10  # a photo of gravel, not a flat tint


def test_a_classifier_with_a_good_class_stays_an_image_folder(tmp_path: Path) -> None:
    root = tmp_path / "cls"
    for split in ("train", "test"):
        for name in ("bad", "good"):
            _write(root / split / name / "000.png", _rgb(1))
    assert [layout.task for layout in find_layouts(root)] == ["classification", "classification"]
    (root / "ground_truth").mkdir()  # with masks' folder it is MVTec AD's layout
    assert [layout.task for layout in find_layouts(root)] == ["inspection"] * 3
