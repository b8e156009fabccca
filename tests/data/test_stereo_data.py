"""Stereo data: the synthetic pairs' ground truth, the left/right/disparity reader, its data check and CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from parvis.cli.main import main
from parvis.data import stereo_synth
from parvis.data.check import check_dataset, find_layouts, open_dataset
from parvis.data.stereo import (
    StereoDataset,
    encode_disparity_png,
    read_disparity,
    read_pfm,
    write_pfm,
)
from parvis.data.stereo_synth import render_stereo, synthesize_stereo
from parvis.errors import BadSampleError, ParvisError

SIZE, MAX_DISP, SEED = (96, 48), 16, 5  # (width, height)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("stereo") / "ds"
    return out, synthesize_stereo(out, n=12, size=SIZE, max_disp=MAX_DISP, seed=SEED, workers=2, progress=False)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _rgb(seed: int, height: int = 8, width: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _write(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def make_pair(root: Path, name: str, height: int = 8, width: int = 8, disparity: str | None = "png") -> None:
    """left/NAME.png, right/NAME.png and (png, pfm or None) disparity/NAME.* of 2.5 px, one invalid pixel."""
    _write(root / "left" / f"{name}.png", _rgb(1, height, width))
    _write(root / "right" / f"{name}.png", _rgb(2, height, width))
    values = np.full((height, width), 2.5, np.float32)
    values[0, 0] = 0 if disparity == "png" else np.inf
    if disparity == "png":
        (root / "disparity").mkdir(parents=True, exist_ok=True)
        encode_disparity_png(values).save(root / "disparity" / f"{name}.png")
    elif disparity == "pfm":
        (root / "disparity").mkdir(parents=True, exist_ok=True)
        write_pfm(root / "disparity" / f"{name}.pfm", values)


def _warp(right: np.ndarray, disparity: np.ndarray) -> np.ndarray:
    """The right image sampled at (x - d, y), linear along x: the left image where d is right."""
    height, width = disparity.shape
    y, x = np.mgrid[0:height, 0:width]
    xs = np.clip(x - disparity, 0, width - 1)
    x0 = np.minimum(np.floor(xs).astype(int), width - 2)
    t = (xs - x0)[..., None]
    return right[y, x0] * (1 - t) + right[y, x0 + 1] * t


def _residual(left: np.ndarray, warped: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """|left - (gain * warped + bias)| per channel on ``mask``, gain and bias fitted: the cameras differ in both."""
    out = []
    for c in range(3):
        a = np.stack([warped[..., c][mask], np.ones(int(mask.sum()))], axis=1)
        coef, *_ = np.linalg.lstsq(a, left[..., c][mask].astype(np.float64), rcond=None)
        out.append(np.abs(a @ coef - left[..., c][mask]))
    return np.concatenate(out)


# --- generator ----------------------------------------------------------------------------------------------------


def test_same_seed_is_byte_identical_across_worker_counts(tmp_path: Path, generated: tuple[Path, dict]) -> None:
    root, summary = generated
    one = synthesize_stereo(tmp_path / "one", n=12, size=SIZE, max_disp=MAX_DISP, seed=SEED, workers=1, progress=False)
    synthesize_stereo(tmp_path / "other", n=12, size=SIZE, max_disp=MAX_DISP, seed=SEED + 1, workers=2, progress=False)
    assert one["workers"] == 1 and summary["workers"] == 2
    a, b, c = _files(tmp_path / "one"), _files(root), _files(tmp_path / "other")
    assert a == b
    assert any(a[k] != c[k] for k in a if k in c)
    assert not list(tmp_path.glob("*.tmp-*"))  # the temp folders were renamed into place
    # The files hold what render_stereo returns (PNG is lossless; disparity to 1/256 px).
    left, right, disparity = render_stereo(3, SIZE, MAX_DISP, SEED)
    split = "val" if (root / "val" / "left" / "000003.png").exists() else "train"
    assert np.array_equal(np.asarray(Image.open(root / split / "left" / "000003.png")), left)
    assert np.array_equal(np.asarray(Image.open(root / split / "right" / "000003.png")), right)
    stored = np.nan_to_num(read_disparity(root / split / "disparity" / "000003.png"))
    assert np.abs(stored - disparity).max() <= 1 / 512 + 1e-6


def test_layout_and_dataset_yaml(generated: tuple[Path, dict]) -> None:
    root, summary = generated
    meta = yaml.safe_load((root / "dataset.yaml").read_text())
    assert meta["task"] == "stereo" and meta["max_disp"] == MAX_DISP and meta["seed"] == SEED and meta["n"] == 12
    assert meta["size"] == {"width": SIZE[0], "height": SIZE[1]}
    assert meta["splits"] == summary["splits"] and sum(summary["splits"].values()) == 12
    names = set()
    for split, count in summary["splits"].items():
        for sub in ("left", "right", "disparity"):
            files = sorted(p.name for p in (root / split / sub).iterdir())
            assert len(files) == count
            names.update(files)
    assert sorted(names) == [f"{i:06d}.png" for i in range(12)]
    assert 0.5 < summary["valid_fraction"] < 1


def test_right_view_warped_by_the_truth_reproduces_the_left(generated: tuple[Path, dict]) -> None:
    root, _ = generated
    dataset = StereoDataset(root / "train")
    right_errors, shifted_errors = [], []
    for i in range(len(dataset)):
        image, target = dataset[i]
        left, right = image[:3].permute(1, 2, 0).numpy(), image[3:].permute(1, 2, 0).numpy().astype(np.float64)
        d = target.numpy()
        # Off by one pixel the same pixels must match much worse: d + 1 stays inside the frame there, and
        # they have texture along x (a 1 px shift of a flat surface changes nothing).
        grey = left.astype(np.float64).mean(axis=-1)
        gradient = np.zeros_like(grey)
        gradient[:, 1:-1] = np.abs(grey[:, 2:] - grey[:, :-2]) / 2
        textured = (d > 0) & (np.arange(d.shape[1]) - d - 1 >= 0) & (gradient > 6)
        right_errors.append(_residual(left, _warp(right, d), textured))
        shifted_errors.append(_residual(left, _warp(right, d + 1), textured))
    exact, off = np.median(np.concatenate(right_errors)), np.median(np.concatenate(shifted_errors))
    assert exact < 5.0, f"median error {exact:.2f} levels with the true disparity"
    assert off > 2.5 * exact, f"d + 1 px: {off:.2f} vs {exact:.2f} levels"


def test_invalid_pixels_are_the_occluded_and_out_of_frame_ones() -> None:
    occluded_errors, valid_errors = [], []
    x = np.arange(SIZE[0])[None, :]
    for index in range(8):
        left, right, disparity = render_stereo(index, SIZE, MAX_DISP, SEED)
        _, _, every, valid = stereo_synth._render(index, SIZE, MAX_DISP, SEED)
        assert np.array_equal(valid, disparity > 0) and np.array_equal(disparity[valid], every[valid])
        assert not valid[:, 0].any()  # every disparity is >= 1, so column 0 is out of the right frame
        assert not valid[x - every < 0].any() and (x - every >= 0)[valid].all()
        # Inside the right frame only occlusion invalidates: there the right image shows another surface,
        # so warping by the pixel's own (hidden) disparity mismatches far more than on valid pixels.
        occluded = ~valid & (x - every >= 0)
        warped = _warp(right.astype(np.float64), every)
        error = np.abs(warped - left).mean(axis=-1)
        occluded_errors.append(error[occluded])
        valid_errors.append(error[valid])
    occluded, valid = np.concatenate(occluded_errors), np.concatenate(valid_errors)
    assert occluded.size > 50, "too few occluded pixels: the scenes have no occlusions"
    assert np.median(occluded) > 3 * np.median(valid)


def test_a_single_pair_has_no_val_split_and_checks_clean(tmp_path: Path) -> None:
    summary = synthesize_stereo(tmp_path / "one", n=1, size=(64, 32), max_disp=8, workers=1, progress=False)
    assert summary["splits"] == {"train": 1, "val": 0} and not (tmp_path / "one" / "val").exists()
    report = check_dataset(tmp_path / "one", workers=1)
    assert report.ok and report.layouts == ["stereo/train"]


def test_generator_refuses_bad_arguments(tmp_path: Path) -> None:
    for kwargs, needle in (
        ({"size": (8, 8)}, "size"),
        ({"max_disp": 300}, "max_disp"),
        ({"size": (64, 32), "max_disp": 40}, "max_disp"),
        ({"n": 0}, "n must"),
    ):
        with pytest.raises(ParvisError, match=needle):
            synthesize_stereo(tmp_path / "x", progress=False, **kwargs)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(ParvisError, match="not empty"):
        synthesize_stereo(busy, n=1, size=(64, 32), max_disp=8, progress=False)


# --- reader -------------------------------------------------------------------------------------------------------


def test_png_disparity_round_trips_at_1_256_px(tmp_path: Path) -> None:
    values = np.random.default_rng(0).uniform(0.5, 200, (5, 7)).astype(np.float32)
    values[1, 2] = 0
    values[2, 3] = np.inf
    encode_disparity_png(values).save(tmp_path / "d.png")
    with Image.open(tmp_path / "d.png") as im:
        assert im.mode == "I;16"
        stored = np.array(im)
    assert np.array_equal(stored, np.where(np.isfinite(values), np.round(values * 256), 0).astype(np.uint16))
    back = read_disparity(tmp_path / "d.png")
    assert np.isnan(back[1, 2]) and np.isnan(back[2, 3])
    finite = np.isfinite(values) & (values > 0)
    assert np.abs(back[finite] - values[finite]).max() <= 1 / 512
    with pytest.raises(ValueError, match="16-bit"):
        encode_disparity_png(np.full((2, 2), 300, np.float32))


def test_pfm_round_trip_and_conventions(tmp_path: Path) -> None:
    values = np.arange(12, dtype=np.float32).reshape(3, 4) - 2.5
    values[0, 1] = np.inf
    values[2, 0] = np.nan
    path = write_pfm(tmp_path / "d.pfm", values)
    raw = path.read_bytes()
    assert raw.startswith(b"Pf\n4 3\n-1.0\n") and len(raw) == len(b"Pf\n4 3\n-1.0\n") + 48
    # Rows are stored bottom to top, little-endian.
    assert np.frombuffer(raw[-16:], "<f4").tolist() == values[0].tolist()[:1] + [np.inf] + values[0].tolist()[2:]
    back = read_pfm(path)
    assert back.dtype == np.float32 and back.shape == (3, 4)
    assert np.array_equal(back, values, equal_nan=True)
    # A big-endian file (positive scale), header on separate lines with extra spaces, colour.
    colour = np.random.default_rng(1).random((2, 3, 3)).astype(np.float32)
    (tmp_path / "c.pfm").write_bytes(b"PF\n3  2\n1.0\n" + np.flipud(colour).astype(">f4").tobytes())
    assert np.array_equal(read_pfm(tmp_path / "c.pfm"), colour)
    with pytest.raises(BadSampleError, match="3 channels"):
        read_disparity(tmp_path / "c.pfm")
    (tmp_path / "short.pfm").write_bytes(raw[:-5])
    with pytest.raises(BadSampleError, match="short.pfm.*truncated"):
        read_pfm(tmp_path / "short.pfm")
    (tmp_path / "not.pfm").write_bytes(b"P6\n1 1\n255\n\x00\x00\x00")
    with pytest.raises(BadSampleError, match="not a PFM"):
        read_pfm(tmp_path / "not.pfm")


@pytest.mark.parametrize("kind", ["png", "pfm"])
def test_reader_returns_six_channels_and_disparity(tmp_path: Path, kind: str) -> None:
    make_pair(tmp_path, "a", height=6, width=10, disparity=kind)
    make_pair(tmp_path, "b", height=6, width=10, disparity=kind)
    dataset = StereoDataset(tmp_path)
    assert len(dataset) == 2 and dataset.names == ["a", "b"]
    left, right, disparity = dataset.pair_paths(1)
    assert (left.parent.name, right.parent.name, disparity.name) == ("left", "right", f"b.{kind}")
    image, target = dataset[0]
    assert image.shape == (6, 6, 10) and image.dtype == torch.uint8
    assert torch.equal(image[:3], torch.from_numpy(_rgb(1, 6, 10)).permute(2, 0, 1))
    assert torch.equal(image[3:], torch.from_numpy(_rgb(2, 6, 10)).permute(2, 0, 1))
    assert target.dtype == torch.float32 and target.shape == (6, 10)
    assert target[0, 0] == 0 and torch.all(target.flatten()[1:] == 2.5)


def test_reader_grey_images_and_no_disparity_folder(tmp_path: Path) -> None:
    grey = np.random.default_rng(3).integers(0, 256, (8, 8), dtype=np.uint8)
    _write(tmp_path / "left" / "x.jpg", np.stack([grey] * 3, -1))
    _write(tmp_path / "right" / "x.png", grey)  # mode L; pairs match by name whatever the suffix
    dataset = StereoDataset(tmp_path)
    image, target = dataset[0]
    assert target is None and dataset.pair_paths(0)[2] is None
    assert image.shape == (6, 8, 8)
    right = image[3:]
    assert torch.equal(right[0], right[1]) and torch.equal(right[1], right[2])
    assert torch.equal(right[0], torch.from_numpy(grey))


def test_reader_bad_samples_name_the_file(tmp_path: Path) -> None:
    make_pair(tmp_path, "a")
    make_pair(tmp_path, "b")
    make_pair(tmp_path, "c", disparity="pfm")
    (tmp_path / "right" / "a.png").unlink()
    write_pfm(tmp_path / "disparity" / "c.pfm", np.full((8, 8), -1, np.float32))
    dataset = StereoDataset(tmp_path)
    with pytest.raises(BadSampleError, match=r"a\.png: no right image"):
        dataset[0]
    with pytest.raises(BadSampleError, match=r"c\.pfm: 64 negative disparities"):
        dataset[2]
    assert dataset[1][1].shape == (8, 8)
    assert StereoDataset(tmp_path, on_bad_sample="skip")[0] is None
    with pytest.raises(ParvisError, match="no such folder"):
        StereoDataset(tmp_path / "left")


# --- data check ---------------------------------------------------------------------------------------------------


def _problems(root: Path) -> dict[str, str]:
    report = check_dataset(root, workers=1)
    return {p.path: p.message for p in report.problems}


def test_check_generated_set_is_clean_with_stats(generated: tuple[Path, dict]) -> None:
    root, summary = generated
    report = check_dataset(root, workers=1)
    assert report.ok and report.problems == []
    assert report.layouts == ["stereo/train", "stereo/val"]
    train = report.summary["stereo"]["train"]
    assert train["pairs"] == train["disparity_maps"] == summary["splits"]["train"]
    assert 0.5 < train["valid_pixels"] < 1
    assert 1 <= train["disparity"]["min"] < train["disparity"]["max"] <= MAX_DISP
    dataset = open_dataset(root, "stereo", "val")
    assert isinstance(dataset, StereoDataset) and len(dataset) == summary["splits"]["val"]


def test_layouts_found_by_shape_and_by_task_key(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    make_pair(flat, "a", disparity=None)
    assert [layout.name for layout in find_layouts(flat)] == ["stereo/all"]  # not an ImageFolder of left/right
    assert check_dataset(flat, workers=1).ok
    assert open_dataset(flat, "stereo", "all")[0][1] is None
    splits = tmp_path / "splits"
    make_pair(splits / "training", "a")
    make_pair(splits / "testing", "b", disparity=None)
    assert [layout.name for layout in find_layouts(splits)] == ["stereo/testing", "stereo/training"]
    (splits / "dataset.yaml").write_text("task: stereo\nmax_disp: 16\n")
    assert [layout.name for layout in find_layouts(splits)] == ["stereo/testing", "stereo/training"]
    assert isinstance(open_dataset(splits, "stereo", "training"), StereoDataset)


def test_check_reports_each_problem_by_file(tmp_path: Path) -> None:
    for name in ("ok", "noright", "wide", "broken", "small", "negative", "invalid"):
        make_pair(tmp_path, name, disparity="pfm")
    (tmp_path / "right" / "noright.png").unlink()
    _write(tmp_path / "right" / "noleft.png", _rgb(4))
    _write(tmp_path / "right" / "wide.png", _rgb(5, 8, 12))
    (tmp_path / "disparity" / "broken.pfm").write_bytes(b"Pf\n8 8\n-1.0\n\x00\x00")
    write_pfm(tmp_path / "disparity" / "small.pfm", np.ones((4, 8), np.float32))
    write_pfm(tmp_path / "disparity" / "orphan.pfm", np.ones((8, 8), np.float32))
    negative = np.full((8, 8), 3, np.float32)
    negative[2, 2:5] = -1.5
    write_pfm(tmp_path / "disparity" / "negative.pfm", negative)
    invalid = np.full((8, 8), 3, np.float32)
    invalid[0, :4] = np.inf
    invalid[1, :4] = np.nan  # the PFM markers of "no ground truth": not a problem
    write_pfm(tmp_path / "disparity" / "invalid.pfm", invalid)
    (tmp_path / "left" / "nodisp.png").write_bytes((tmp_path / "left" / "ok.png").read_bytes())
    (tmp_path / "right" / "nodisp.png").write_bytes((tmp_path / "right" / "ok.png").read_bytes())

    found = _problems(tmp_path)
    assert "no right image" in found.pop("left/noright.png")
    assert "without a left image" in found.pop("right/noleft.png")
    assert "right image is 12x8 but left image wide.png is 8x8" in found.pop("right/wide.png")
    assert "truncated PFM" in found.pop("disparity/broken.pfm")
    assert "disparity map is 8x4 but left image small.png is 8x8" in found.pop("disparity/small.pfm")
    assert "without a left image" in found.pop("disparity/orphan.pfm")
    assert "3 negative disparities (lowest -1.5)" in found.pop("disparity/negative.pfm")
    assert "no disparity map" in found.pop("left/nodisp.png")
    assert found == {}
    stats = check_dataset(tmp_path, workers=1).summary["stereo"]["all"]
    assert stats["pairs"] == 8 and stats["disparity_maps"] == 6  # not the broken one, nor the missing one
    assert stats["disparity"] == {"min": 1.0, "max": 3.0}


def test_check_png_disparity_problems(tmp_path: Path) -> None:
    make_pair(tmp_path, "ok")
    make_pair(tmp_path, "eight")
    make_pair(tmp_path, "junk")
    Image.fromarray(np.full((8, 8), 9, np.uint8)).save(tmp_path / "disparity" / "eight.png")
    (tmp_path / "disparity" / "junk.png").write_bytes(b"not a png at all")
    found = _problems(tmp_path)
    assert "mode L; expected 16-bit grey" in found.pop("disparity/eight.png")
    assert "not a PNG" in found.pop("disparity/junk.png")
    assert found == {}
    stats = check_dataset(tmp_path, workers=1).summary["stereo"]["all"]
    assert stats["valid_pixels"] == round(63 / 64, 4) and stats["disparity"] == {"min": 2.5, "max": 2.5}


def test_real_pair_motorcycle_in_pfm(tmp_path: Path) -> None:
    skdata = pytest.importorskip("skimage.data")
    try:
        left, right, disparity = skdata.stereo_motorcycle()
    except Exception as exc:  # the images ship with scikit-image, but a trimmed install may lack them
        pytest.skip(f"skimage.data.stereo_motorcycle() unavailable: {exc}")
    _write(tmp_path / "left" / "motorcycle.png", left)
    _write(tmp_path / "right" / "motorcycle.png", right)
    (tmp_path / "disparity").mkdir()
    write_pfm(tmp_path / "disparity" / "motorcycle.pfm", disparity)
    image, target = StereoDataset(tmp_path)[0]
    assert image.shape == (6, *disparity.shape)
    expected = np.where(np.isfinite(disparity), disparity, 0)
    assert np.array_equal(target.numpy(), expected) and (target == 0).any()
    report = check_dataset(tmp_path, workers=1)
    assert report.ok and report.problems == []
    stats = report.summary["stereo"]["all"]
    assert 0.9 < stats["valid_pixels"] < 1 and stats["disparity"]["max"] < 64


# --- CLI ----------------------------------------------------------------------------------------------------------


def test_cli_synth_stereo_then_check(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli"
    argv = ["data", "synth", "--task", "stereo", "--out", str(out), "--n", "3", "--size", "64x32", "--max-disp", "8"]
    assert main([*argv, "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 3 stereo pairs" in printed and "64x32" in printed
    assert yaml.safe_load((out / "dataset.yaml").read_text())["max_disp"] == 8
    assert main(["data", "check", str(out)]) == 0
    assert "no problems" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--task", "stereo", "--size", "64by32"], "--size for stereo must be WIDTHxHEIGHT"),
        (["--task", "stereo", "--size", "8x8"], "size must be at least"),
        (["--task", "stereo", "--frames", "3"], "--frames applies to --task video only"),
        (["--max-disp", "8"], "--max-disp applies to --task stereo only"),
    ],
)
def test_cli_synth_stereo_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], needle: str
) -> None:
    assert main(["data", "synth", "--out", str(tmp_path / "x"), *extra]) != 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in lines[0]
    assert not (tmp_path / "x").exists()
