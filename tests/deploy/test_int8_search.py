"""Detection through optimize and prune, and the accuracy-aware INT8 search (mixed precision, NNCF)."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from parvis.artifact import read_metadata
from parvis.cli.main import main
from parvis.engine.checkpoint import load_checkpoint, save_checkpoint
from parvis.optimize import optimize
from parvis.quantize import (
    Int8Quantizer,
    calibration_feeds,
    channel_snr_db,
    nncf_available,
    quantize_nncf,
    quantized_parts,
)

from .conftest import untrained_onnx_copy

QUICK = {"rounds": 1, "iters": 1, "latency_iters": 3, "batches": (4,), "threads": (1,), "calib": 16}


@pytest.fixture(scope="module")
def untrained_detector_onnx(trained_detector, tmp_path_factory):
    """The trained detector's architecture and metadata with fresh weights: a deliberately over-budget candidate."""
    _, out = trained_detector
    path = tmp_path_factory.mktemp("bad-det") / "untrained.onnx"
    return untrained_onnx_copy(out / "run" / "best.pt", path, seed=2)


def test_optimize_takes_a_detector_budgeted_on_map50(trained_detector, untrained_detector_onnx, tmp_path):
    data, out = trained_detector
    pairs = [("torch", "fp32"), ("onnxruntime", "fp32")]
    result = optimize(
        str(out / "run" / "best.pt"), str(data), tmp_path / "opt", budget=1.0, pairs=pairs,
        extra=(str(untrained_detector_onnx),), **QUICK,
    )  # fmt: skip
    assert result["task"] == "detection" and result["metric_name"] == "map50" and result["metric_mode"] == "labels"
    assert result["validation_images"] == 12  # the whole val split of the 60-scene set
    rows = {(r["variant"], r["runtime"]): r for r in result["candidates"]}
    base = rows["base", "torch"]
    assert base["metric"] > 0.02  # 48 images of 64 px: it learned a little; the untrained copy nothing
    assert abs(rows["base", "onnxruntime"]["metric"] - base["metric"]) < 0.01  # same math in ONNX Runtime
    bad = rows["untrained", "onnxruntime"]
    assert bad["status"] == "over budget" and bad["reason"].startswith("map50 drop ")
    chosen = [r for r in result["candidates"] if r["chosen"]]
    assert len(chosen) == 1 and chosen[0]["status"] == "ok"
    # COCO mAP@0.5:0.95 as the budgeted metric instead
    again = optimize(str(out / "run" / "best.pt"), str(data), tmp_path / "opt2", pairs=pairs[:1], metric="map", **QUICK)
    assert again["metric_name"] == "map" and again["baseline_metric"] < base["metric"]


def test_cli_prune_takes_a_detector(trained_detector, tmp_path, capsys):
    data, out = trained_detector
    code = main(["prune", str(out / "run" / "best.pt"), "--ratio", "0.25", "--data", str(data), "--epochs", "1",
                 "--out", str(tmp_path / "p"), "--no-timing"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "p" / "prune.json").read_text())
    assert report["task"] == "detection" and report["metric_name"] == "map50"
    assert report["params"]["after"] < report["params"]["before"]
    assert "val map50" in capsys.readouterr().out


def make_fragile(checkpoint, path, factor: float = 1000.0) -> None:
    """The same function with one activation made fragile: channel 0 of encoder.stages.1.1's output (after
    BatchNorm and ReLU) scaled by `factor`, the next convolution's weights for that channel by 1/factor. fp32
    computes the same answers; one shared INT8 scale for that tensor leaves its other channels a few levels."""
    state = load_checkpoint(checkpoint)
    weights = state["model"]
    weights["encoder.stages.1.1.1.weight"][0] *= factor
    weights["encoder.stages.1.1.1.bias"][0] *= factor
    weights["encoder.stages.1.2.0.weight"][:, 0] /= factor
    save_checkpoint(path, state)


def test_mixed_int8_keeps_exactly_the_fragile_tensor_in_float(trained, tmp_path):
    """Scored by agreement with fp32's masks: the session's U-Net is trained too briefly for its mIoU to show
    much; its plain INT8 agrees about 94% with fp32, the fragile copy's about half."""
    data, out = trained
    make_fragile(out / "run" / "best.pt", tmp_path / "fragile.pt")
    pairs = [("torch", "fp32"), ("onnxruntime", "int8")]
    result = optimize(
        str(tmp_path / "fragile.pt"), str(data), tmp_path / "opt", budget=10.0, pairs=pairs, metric="agreement",
        **QUICK,
    )  # fmt: skip
    assert result["metric_name"] == "mask_iou_agreement"
    rows = {(r["runtime"], r["int8_scheme"]): r for r in result["candidates"]}
    plain, mixed = rows["onnxruntime", "qdq"], rows["onnxruntime", "mixed"]
    assert plain["status"] == "over budget" and plain["float_layers"] == 0 and plain["metric_drop"] > 25
    # One part found: the fragile tensor, with the layer that writes it and the one that reads it.
    search = result["int8_search"]["base"]
    assert len(search["steps"]) == 1
    assert search["steps"][0]["added"][0]["nodes"] == ["encoder.stages.1.1 (Conv)", "encoder.stages.1.2 (Conv)"]
    assert mixed["float_layers"] == 2
    assert mixed["float_layer_names"] == ["encoder.stages.1.1 (Conv)", "encoder.stages.1.2 (Conv)"]
    assert mixed["status"] == "ok" and mixed["metric_drop"] <= 10.0  # back within budget
    assert mixed["metric"] > plain["metric"] + 0.25


def test_a_model_within_budget_gets_no_search(trained, tmp_path):
    data, out = trained
    result = optimize(str(out / "run" / "best.pt"), str(data), tmp_path / "opt", budget=100.0,
                      pairs=[("torch", "fp32"), ("onnxruntime", "int8")], **QUICK)  # fmt: skip
    assert result["int8_search"] == {}
    assert [r["int8_scheme"] for r in result["candidates"]] == [None, "qdq"]


def test_quantized_parts_group_a_tensor_with_its_writer_and_readers(trained, tmp_path):
    data, out = trained
    src = out / "fp32.onnx"
    feeds, _ = calibration_feeds(src, read_metadata(src), data, 8)
    model = Int8Quantizer(src, feeds, "minmax", tmp_path).write(tmp_path / "q.onnx")
    parts = quantized_parts(model)
    nodes = {node.name: node for node in model.graph.node}
    assert parts and len({part.tensor for part in parts}) == len(parts)
    for part in parts:
        quantize = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == part.tensor]
        dequantized = {d.output[0] for d in model.graph.node
                       if d.op_type == "DequantizeLinear" and d.input[0] in quantize[0].output}  # fmt: skip
        writes = [n for n in part.nodes if part.tensor in nodes[n].output]
        reads = [n for n in part.nodes if set(nodes[n].input) & dequantized]
        assert writes == list(part.nodes[:1]) or not writes  # the writer first (none for the graph input)
        assert sorted(writes + reads) == sorted(part.nodes)  # a model output has a writer and no reader


def test_channel_snr_weighs_every_channel_alike():
    rng = np.random.default_rng(0)
    big = rng.normal(0, 100, (2, 1, 8, 8))
    small = rng.normal(0, 1, (2, 1, 8, 8))
    reference = [np.concatenate([big, small], axis=1)]
    noisy_small = [np.concatenate([big, small + rng.normal(0, 0.5, small.shape)], axis=1)]
    noisy_big = [np.concatenate([big + rng.normal(0, 0.5, big.shape), small], axis=1)]
    # the same absolute noise hurts the small channel far more; an unweighted SNR would barely see it
    assert channel_snr_db(reference, noisy_small) < channel_snr_db(reference, noisy_big) - 20


@pytest.mark.skipif(not nncf_available(), reason="nncf is not installed (pip install nncf)")
def test_nncf_int8_runs_as_int8_and_follows_fp32(trained, tmp_path):
    data, out = trained
    src = out / "fp32.onnx"
    feeds, _ = calibration_feeds(src, read_metadata(src), data, 16)
    report = quantize_nncf(src, tmp_path / "nncf.onnx", feeds)
    assert report["method"] == "nncf" and report["calibration_images"] == 16
    fp32 = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(str(tmp_path / "nncf.onnx"), providers=["CPUExecutionProvider"])
    ops = {node.op_type for node in __import__("onnx").load(str(tmp_path / "nncf.onnx")).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    feed = feeds[0]
    assert channel_snr_db(fp32.run(None, feed), int8.run(None, feed)) > 10
    assert read_metadata(tmp_path / "nncf.onnx").name == read_metadata(src).name  # metadata carried


def test_the_search_can_be_turned_off(trained, tmp_path):
    data, out = trained
    make_fragile(out / "run" / "best.pt", tmp_path / "fragile.pt")
    result = optimize(str(tmp_path / "fragile.pt"), str(data), tmp_path / "opt", budget=10.0, metric="agreement",
                      pairs=[("torch", "fp32"), ("onnxruntime", "int8")], int8_search=False, **QUICK)  # fmt: skip
    assert result["int8_search"] == {}
    assert [(r["int8_scheme"], r["status"]) for r in result["candidates"]] == [(None, "ok"), ("qdq", "over budget")]
