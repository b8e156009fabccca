"""`parvis optimize` on a tiny trained segmenter: a winner within budget, rejections with reasons."""

from __future__ import annotations

import json

import pytest

from parvis.api import evaluate
from parvis.cli.main import main
from parvis.errors import ParvisError
from parvis.optimize import optimize

from .conftest import untrained_onnx_copy

QUICK = {"rounds": 1, "iters": 1, "latency_iters": 3, "batches": (4,), "threads": (1,), "calib": 8}
PAIRS = [("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")]


@pytest.fixture(scope="module")
def untrained_onnx(trained, tmp_path_factory):
    """The same architecture and metadata with fresh random weights: a deliberately over-budget candidate."""
    _, out = trained
    return untrained_onnx_copy(out / "run" / "best.pt", tmp_path_factory.mktemp("bad") / "untrained.onnx", seed=1)


def test_optimize_picks_a_winner_within_budget_and_rejects_an_over_budget_candidate(trained, untrained_onnx, tmp_path):
    data, out = trained
    result = optimize(
        str(out / "run" / "best.pt"), str(data), tmp_path / "opt", budget=2.0, pairs=PAIRS,
        extra=(str(untrained_onnx),), **QUICK,
    )  # fmt: skip
    rows = {(r["variant"], r["runtime"], r["precision"]): r for r in result["candidates"]}
    assert set(rows) == {("base", *p) for p in PAIRS} | {("untrained", "onnxruntime", "fp32")}
    for r in rows.values():
        for key in ("runtime", "precision", "batch", "img_s", "latency_ms_p50", "metric", "metric_drop"):
            assert r[key] is not None, key
        assert r["img_s"] > 0 and r["speedup_vs_eager_fp32"] > 0
    base = rows["base", "torch", "fp32"]
    assert base["status"] == "ok" and base["metric_drop"] == 0 and base["speedup_vs_eager_fp32"] == 1.0
    # ONNX Runtime fp32 runs the same math: same metric to rounding.
    assert abs(rows["base", "onnxruntime", "fp32"]["metric"] - base["metric"]) < 0.005
    bad = rows["untrained", "onnxruntime", "fp32"]
    assert bad["status"] == "over budget" and bad["metric_drop"] > 2.0
    assert bad["reason"] == f"miou drop {bad['metric_drop']:.2f} points > budget 2"
    chosen = [r for r in result["candidates"] if r["chosen"]]
    assert len(chosen) == 1 and chosen[0]["status"] == "ok"
    ok = [r for r in result["candidates"] if r["status"] == "ok"]
    assert chosen[0]["img_s"] == max(r["img_s"] for r in ok)
    assert result["chosen"]["metric_drop"] <= 2.0
    # The winner was copied out and is a working artifact (or checkpoint) with the metric it was scored at.
    written = json.loads((tmp_path / "opt" / "optimize.json").read_text())
    assert written["chosen"]["artifact"] == result["chosen"]["artifact"]
    metrics = evaluate(result["chosen"]["artifact"], data)
    if result["chosen"]["runtime"] != "torch":
        assert abs(metrics["miou"] - result["chosen"]["metric"]) < 1e-4
    assert not (tmp_path / "opt" / ".candidates").exists()


def test_optimize_rejects_bad_input_by_name(trained, tmp_path):
    data, out = trained
    ckpt = str(out / "run" / "best.pt")
    with pytest.raises(ParvisError, match="cannot be negative"):
        optimize(ckpt, str(data), tmp_path / "o", budget=-1)
    with pytest.raises(ParvisError, match="starts from a PyTorch model"):
        optimize(str(tmp_path), str(data), tmp_path / "o")
    with pytest.raises(ParvisError, match="--data .*nowhere: no such dataset folder"):
        optimize(ckpt, str(tmp_path / "nowhere"), tmp_path / "o")
    with pytest.raises(ParvisError, match="--candidate .*x.txt: expected an existing .onnx"):
        optimize(ckpt, str(data), tmp_path / "o", extra=(str(tmp_path / "x.txt"),))
    with pytest.raises(ParvisError, match="--objective 'fast' is unknown"):
        optimize(ckpt, str(data), tmp_path / "o", objective="fast")
    assert not (tmp_path / "o").exists()


def test_cli_optimize_prints_the_table_and_the_choice(trained, tmp_path, capsys):
    data, out = trained
    args = ["optimize", str(out / "run" / "best.pt"), "--data", str(data), "--out", str(tmp_path / "opt")]
    args += ["--candidates", "torch:fp32,onnxruntime:fp32", "--batch", "2", "--threads", "1", "--rounds", "1"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "chosen: " in text and "optimize.json" in text
    assert json.loads((tmp_path / "opt" / "optimize.json").read_text())["chosen"]["batch"] == 2
    assert main([*args[:-6], "--candidates", "tensorrt-ish:fp32"]) == 2
    assert "--candidates 'tensorrt-ish:fp32': expected RUNTIME:PRECISION" in capsys.readouterr().err


def test_predict_runs_artifacts_and_optimize_folders_like_the_checkpoint(trained, tmp_path, capsys):
    data, out = trained
    images = str(data / "images" / "val")
    assert (
        main(["predict", str(out / "run" / "best.pt"), images, "--out", str(tmp_path / "ckpt"), "--precision", "fp32"])
        == 0
    )
    assert (
        main(["predict", str(out / "fp32.onnx"), images, "--out", str(tmp_path / "onnx"), "--decode-threads", "2"]) == 0
    )
    assert "with onnxruntime fp32" in capsys.readouterr().out
    ckpt = json.loads((tmp_path / "ckpt" / "results.json").read_text())
    onnx_results = json.loads((tmp_path / "onnx" / "results.json").read_text())
    assert [r["file"] for r in ckpt] == [r["file"] for r in onnx_results]  # order kept through the pipeline
    for a, b in zip(ckpt, onnx_results, strict=True):
        shares_a, shares_b = a["class_shares"], b["class_shares"]
        assert max(abs(shares_a[k] - shares_b[k]) for k in shares_a) < 0.01
        assert (tmp_path / "onnx" / "masks" / f"{a['file'].rsplit('/', 1)[-1][:-4]}.png").exists()
    # An optimize folder runs its chosen artifact with the chosen runtime and threads.
    args = ["optimize", str(out / "run" / "best.pt"), "--data", str(data), "--out", str(tmp_path / "opt")]
    assert main([*args, "--candidates", "onnxruntime:fp32", "--batch", "2", "--rounds", "1"]) == 0
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "opt"), images, "--out", str(tmp_path / "p3"), "--no-overlays"]) == 0
    assert "with onnxruntime fp32" in capsys.readouterr().out
    assert not (tmp_path / "p3" / "overlays").exists()
    assert main(["predict", str(tmp_path / "ckpt"), images, "--out", str(tmp_path / "p4")]) == 2
    assert "no optimize.json in it" in capsys.readouterr().err


def test_optimize_tries_openvino_stream_counts(trained, tmp_path):
    data, out = trained
    quick = {**QUICK, "threads": (2,)}  # OpenVINO caps streams at the thread count
    result = optimize(
        str(out / "run" / "best.pt"), str(data), tmp_path / "opt", pairs=[("torch", "fp32"), ("openvino", "fp32")],
        streams=(1, 2), **quick,
    )  # fmt: skip
    rows = {(r["runtime"], r["streams"]): r for r in result["candidates"]}
    assert set(rows) == {("torch", 1), ("openvino", 1), ("openvino", 2)}
    assert rows["openvino", 2]["info"]["streams"] == 2 and rows["openvino", 2]["img_s"] > 0
    # Same model, same math: more streams split the batch, not the result.
    assert abs(rows["openvino", 2]["metric"] - rows["openvino", 1]["metric"]) < 1e-6
