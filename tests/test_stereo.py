"""Stereo: metrics by hand, the SGBM baseline, the plane head against thresholded truth, export with two
inputs, and train / eval / predict / bench from the CLI on a tiny generated set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from parvis.cli.main import main
from parvis.engine.stereo_metrics import StereoMetric, error_sums, metrics_from_sums, plane_sums
from parvis.models import build_model

SIZE, MAX_DISP = (96, 48), 16  # (width, height), px


@pytest.fixture(scope="module")
def stereo_dir(tmp_path_factory) -> Path:
    from parvis.data.stereo_synth import synthesize_stereo

    out = tmp_path_factory.mktemp("stereo") / "pairs"
    synthesize_stereo(out, n=12, size=SIZE, max_disp=MAX_DISP, seed=1, workers=1, progress=False)
    return out


def test_metrics_match_hand_computed_values():
    target = torch.tensor([[10.0, 20.0, 0.0, 40.0, 4.0]])  # 0: no ground truth, not scored
    pred = torch.tensor([[10.5, 22.5, 99.0, 43.5, 1.0]])  # errors 0.5, 2.5, -, 3.5, 3.0
    m = metrics_from_sums(error_sums(pred, target))
    assert m["epe"] == pytest.approx((0.5 + 2.5 + 3.5 + 3.0) / 4)
    assert m["bad1"] == pytest.approx(75.0)  # 2.5, 3.5, 3.0 exceed 1 px
    assert m["bad2"] == pytest.approx(75.0)
    assert m["bad3"] == pytest.approx(25.0)  # only 3.5 exceeds 3 px (3.0 does not)
    # D1: > 3 px and > 5% of the truth: 3.5 px on 40 (8.75%) counts; 3.0 on 4 does not pass 3 px
    assert m["d1"] == pytest.approx(25.0)
    assert m["valid_pixels"] == 4


def test_plane_sums_by_hand():
    target = torch.tensor([[2.0, 6.0, 8.0, 0.0]])
    closer = torch.tensor([[False, True, False, True]])  # plane 5: truth F, T, T, (invalid)
    valid, agree, inter, union = plane_sums(closer, target, 5.0).tolist()
    assert (valid, agree, inter, union) == (3, 2, 1, 2)


def test_stereo_metric_accumulates_and_reports_planes():
    metric = StereoMetric(planes=[5.0])
    target = torch.tensor([[[2.0, 6.0, 8.0, 0.0]]])
    probs = torch.tensor([[[[0.1, 0.9, 0.2, 0.9]]]])
    metric.update(target.clone(), target, probs)
    out = metric.compute()
    assert out["epe"] == 0 and out["bad3"] == 0
    assert out["plane_acc"] == pytest.approx(2 / 3)
    assert out["plane_iou"] == pytest.approx(0.5)


def test_fill_holes_uses_the_nearer_background():
    from parvis.bench.stereo import fill_holes

    d = np.array([[5.0, 0.0, 0.0, 9.0, 0.0]], np.float32)
    valid = np.array([[True, False, False, True, False]])
    assert fill_holes(d, valid).tolist() == [[5.0, 5.0, 5.0, 9.0, 9.0]]


def test_sgbm_baseline_runs_and_is_scored(stereo_dir):
    pytest.importorskip("cv2")
    from parvis.bench.stereo import bench_stereo

    result = bench_stereo([], str(stereo_dir), threads=1)
    (row,) = result["rows"]
    assert row["method"] == "sgbm" and 0 < row["density"] <= 1
    # Textured synthetic planes: SGBM gets most pixels right (a broken matcher or flipped views would not).
    assert row["epe"] < 4 and row["bad3"] < 40
    assert result["learned_beats_sgbm"] is None


def _pairs(root: Path, n: int):
    from parvis.data.check import open_dataset

    ds = open_dataset(root, "stereo", "train")
    items = [ds[i] for i in range(n)]
    images = torch.stack([im.as_subclass(torch.Tensor) for im, _ in items]).float() / 255
    mean = torch.tensor((0.485, 0.456, 0.406) * 2).view(1, -1, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225) * 2).view(1, -1, 1, 1)
    return (images - mean) / std, torch.stack([t for _, t in items])


def test_plane_head_agrees_with_thresholded_truth_after_overfitting(stereo_dir):
    torch.manual_seed(0)
    x, y = _pairs(stereo_dir, 2)
    model = build_model("stereonet_small", 1, ["disparity"], input_size=48, max_disp=MAX_DISP)
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    model.train()
    for _ in range(150):
        loss = model.loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    planes = [8.0, 12.0]  # inside the range (a plane at 1 feature pixel, 4 px, learns slower on 96 px pairs)
    with torch.no_grad():
        closer = model.forward_planes(x, planes) > 0
    valid = y > 0
    for k, plane in enumerate(planes):
        agree = (closer[:, k] == (y > plane))[valid].float().mean()
        assert agree > 0.92, (plane, float(agree))


def test_export_takes_left_and_right_and_matches_at_any_size(tmp_path):
    import onnxruntime as ort

    from parvis.export import export_model
    from parvis.runtimes import open_predictor

    torch.manual_seed(0)
    model = build_model("stereonet_small", 1, ["disparity"], input_size=32, max_disp=MAX_DISP).eval()
    report = export_model(model, tmp_path / "stereo.onnx")
    assert report["parity_max_abs_err"] < 1e-3
    session = ort.InferenceSession(str(tmp_path / "stereo.onnx"))
    assert [i.name for i in session.get_inputs()] == ["left", "right"]
    x = torch.randn(1, 6, 37, 75)  # not the traced size, not a multiple of 8
    with torch.no_grad():
        reference = model(x)
    got = session.run(None, {"left": x[:, :3].numpy(), "right": x[:, 3:].numpy()})[0]
    assert np.abs(got - reference.numpy()).max() < 1e-3
    # parvis's runtimes hold a pair as one (N, 6, H, W) tensor and feed the two inputs themselves
    for runtime in ("onnxruntime", "openvino"):
        opened, info = open_predictor(tmp_path / "stereo.onnx", "cpu", runtime)
        assert opened.meta.task == "stereo" and info["runtime"] == runtime
        assert torch.allclose(opened(x), reference, atol=1e-3)


def test_stereo_from_the_cli(stereo_dir, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", "--task", "stereo", "--data", str(stereo_dir), "--epochs", "1", "--batch", "4",
                 "--size", "32", "--workers", "0", "--out", str(run), "--quiet"])  # fmt: skip
    assert code == 0
    assert "stereonet_small" in (run / "config.yaml").read_text()  # the task's default model
    eval_json = tmp_path / "eval.json"
    assert main(["eval", str(run / "best.pt"), "--data", str(stereo_dir), "--json", str(eval_json)]) == 0
    metrics = json.loads(eval_json.read_text())
    for key in ("epe", "bad3", "d1", "plane_acc"):
        assert key in metrics, key

    split = stereo_dir / "val"
    left = sorted((split / "left").iterdir())[0]
    out = tmp_path / "pred"
    args = ["predict", str(run / "best.pt"), str(left), str(split / "right" / left.name), "--out", str(out)]
    assert main([*args, "--planes", "4,8"]) == 0
    (record,) = json.loads((out / "results.json").read_text())
    disparity = np.array(Image.open(record["disparity"]))
    assert disparity.dtype == np.uint16 and disparity.shape == (SIZE[1], SIZE[0])
    assert record["planes_from"] == "plane head" and set(record["planes"]) == {"4", "8"}
    assert Image.open(record["planes"]["4"]["mask"]).size == SIZE
    capsys.readouterr()
    assert main([*args, "--depths", "2m"]) != 0  # no focal length x baseline known: one line, no output
    assert "--depths needs the camera's focal length x baseline" in capsys.readouterr().err
    assert main([*args, "--depths", "2m", "--focal-baseline", "16"]) == 0  # 16 px m / 2 m = a plane at 8 px
    (record,) = json.loads((out / "results.json").read_text())
    assert set(record["planes"]) == {"8"} and record["planes"]["8"]["depth_m"] == pytest.approx(2.0)
    assert record["nearest_m"] == pytest.approx(16 / max(record["disparity_max"], 1e-6))

    bench_json = tmp_path / "bench.json"
    if pytest.importorskip("cv2"):
        assert main(["bench", "stereo", str(run / "best.pt"), "--data", str(stereo_dir), "--threads", "1",
                     "--json", str(bench_json)]) == 0  # fmt: skip
        rows = json.loads(bench_json.read_text())["rows"]
        assert [r["method"] for r in rows] == ["sgbm", "stereonet_small"]
        assert all("epe" in r and "bad3" in r and "ms_p50" in r for r in rows)
        assert "ms_per_plane_p50" in rows[1]

    # optimize budgets EPE in pixels: a candidate's drop is its EPE minus eager fp32's
    opt = tmp_path / "opt"
    code = main(["optimize", str(run / "best.pt"), "--data", str(stereo_dir), "--out", str(opt), "--batch", "2",
                 "--threads", "1", "--rounds", "1", "--calib", "4", "--budget", "0.5", "--no-int8-search",
                 "--candidates", "torch:fp32,onnxruntime:fp32,onnxruntime:int8"])  # fmt: skip
    assert code == 0
    result = json.loads((opt / "optimize.json").read_text())
    assert result["metric_name"] == "epe"
    rows = {(r["runtime"], r["precision"]): r for r in result["candidates"]}
    base = rows[("torch", "fp32")]
    onnx = rows[("onnxruntime", "fp32")]
    assert onnx["status"] == "ok" and abs(onnx["metric"] - base["metric"]) < 1e-3  # same graph, same EPE
    for r in result["candidates"]:
        if r["metric"] is not None:
            assert r["metric_drop"] == pytest.approx(r["metric"] - base["metric"], abs=1e-3)
            assert (r["status"] == "over budget") == (r["metric_drop"] > 0.5)


def test_prefetcher_keeps_disparity_float():
    """Segmentation masks become int64 on the device; disparity maps must stay float (sub-pixel truth)."""
    from parvis.data.loader import Batch, DevicePrefetcher

    batch = Batch(torch.zeros(1, 6, 4, 4), torch.full((1, 4, 4), 2.5), 0)
    (out,) = list(DevicePrefetcher([batch], torch.device("cpu"), (0.5,) * 6, (0.5,) * 6))
    assert out.targets.dtype == torch.float32 and float(out.targets[0, 0, 0]) == 2.5
