"""`parvis video` and `parvis bench video` from the command line, on tiny synthetic clips."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from parvis.cli.main import main
from parvis.data.video_synth import synthesize_video
from parvis.engine.checkpoint import save_checkpoint
from parvis.models import build_model

pytestmark = pytest.mark.slow

CLASSES = ["circle", "ring", "square", "star", "triangle"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("videocli")
    synthesize_video(root / "video", n_clips=2, frames=12, width=96, height=64)
    torch.manual_seed(0)
    model = build_model("centernet_small", len(CLASSES), CLASSES, 32)
    save_checkpoint(root / "det.pt", {"model": model.state_dict(), "meta": model.meta.to_dict()})
    return root


def test_video_command_writes_outputs_and_evaluates_tracks(setup, tmp_path, capsys):
    clips = sorted(str(p) for p in (setup / "video" / "clips").glob("*.mp4"))
    code = main(["video", *clips, "--model", str(setup / "det.pt"), "--out", str(tmp_path), "--batch", "2"])
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [s["frames"] for s in summary["streams"]] == [12, 12]
    assert {"fps", "dropped", "errors"} <= summary["streams"][0].keys() and summary["aggregate_fps"] > 0
    assert "mota" in summary["tracking"] and "mota" in summary["streams"][0]["tracking"]  # ground truth found
    for i in range(2):
        assert (tmp_path / f"stream_{i}.mp4").is_file() and (tmp_path / f"stream_{i}.mot.txt").is_file()
        assert len((tmp_path / f"stream_{i}.jsonl").read_text().splitlines()) == 12
    out = capsys.readouterr().out
    assert "aggregate" in out and "tracking vs ground truth: MOTA" in out


def test_video_command_errors(setup, tmp_path, capsys):
    clip = str(next((setup / "video" / "clips").glob("*.mp4")))
    assert main(["video", clip, "--model", str(setup / "det.pt"), "--out", str(tmp_path), "--batch", "0"]) == 2
    assert "--batch and --queue must be >= 1" in capsys.readouterr().err
    # Every source missing: the run ends with exit 1 and says why per stream.
    assert main(["video", str(tmp_path / "none.mp4"), "--model", str(setup / "det.pt"), "--out", str(tmp_path)]) == 1
    assert "no such file" in capsys.readouterr().out


def test_bench_video_rows(setup, tmp_path):
    out = tmp_path / "bench.json"
    code = main(["bench", "video", str(setup / "det.pt"), "--streams", "1,2", "--batch", "2",
                 "--clips", str(setup / "video"), "--json", str(out)])  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())
    assert result["benchmark"] == "video"
    assert [(r["streams"], r["batch"]) for r in result["rows"]] == [(1, 2), (2, 2)]
    for row in result["rows"]:
        assert {"streams", "batch", "aggregate_fps", "model_only_img_s", "ceiling_fps", "ceiling_ratio",
                "peer_fps"} <= row.keys()  # fmt: skip
        assert row["aggregate_fps"] > 0 and row["ceiling_ratio"] == pytest.approx(
            row["aggregate_fps"] / row["ceiling_fps"]
        )
    from parvis.report import build_sections, load_results

    (section,) = build_sections(load_results([out])[0], plots=True)
    assert section.kind == "video" and section.figure is not None


def _conv_dtypes_of(argv: list[str]) -> set[torch.dtype]:
    """The dtypes every Conv2d computed in while `parvis ARGV` ran (hooks see all threads)."""
    seen: set[torch.dtype] = set()

    def record(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d):
            seen.add(output.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        assert main(argv) == 0
    finally:
        handle.remove()
    return seen


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_video_command_computes_at_the_precision_it_prints(setup, tmp_path, capsys, precision):
    # The eager checkpoint path (no --threads) used to print bf16 while its convolutions ran in fp32.
    clip = str(sorted((setup / "video" / "clips").glob("*.mp4"))[0])
    argv = ["video", clip, "--model", str(setup / "det.pt"), "--out", str(tmp_path), "--no-video",
            "--precision", precision]  # fmt: skip
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[precision]
    assert _conv_dtypes_of(argv) == {dtype}
    assert f"(torch {precision})" in capsys.readouterr().out
    assert json.loads((tmp_path / "summary.json").read_text())["precision"] == precision


def test_video_command_reports_a_truncated_clip_in_the_table_and_summary(setup, tmp_path, capsys):
    clip = sorted((setup / "video" / "clips").glob("*.mp4"))[0]
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(clip.read_bytes()[: len(clip.read_bytes()) * 2 // 3])
    code = main(["video", str(cut), "--model", str(setup / "det.pt"), "--out", str(tmp_path / "o"), "--no-video"])
    assert code == 1  # the only stream did not run to its end
    (stream,) = json.loads((tmp_path / "o" / "summary.json").read_text())["streams"]
    assert stream["status"] == "truncated" and 0 < stream["frames"] < 12
    out = " ".join(capsys.readouterr().out.split())  # the table may wrap the status cell
    assert f"truncated: {stream['frames']} of its 12 frames could be read" in out


def test_bench_video_says_why_the_peer_columns_are_empty(setup, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "supervision", None)  # as without pip install ".[peers]"
    out = tmp_path / "bench.json"
    code = main(["bench", "video", str(setup / "det.pt"), "--streams", "1", "--batch", "1",
                 "--clips", str(setup / "video"), "--json", str(out)])  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())
    assert result["rows"][0]["peer_fps"] is None
    assert any('pip install ".[peers]"' in note for note in result["notes"])
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note: peer columns empty")]
    assert len(printed) == 1 and 'pip install ".[peers]"' in printed[0]


def test_video_command_says_a_registered_name_runs_random_weights(setup, tmp_path, capsys):
    clip = str(sorted((setup / "video" / "clips").glob("*.mp4"))[0])
    argv = ["video", clip, "--out", str(tmp_path / "o"), "--no-video", "--precision", "fp32", "--model"]
    assert main([*argv, "centernet_small"]) == 0
    notice = "centernet_small: registered name without weights: random initialization; pass a checkpoint"
    assert notice in capsys.readouterr().out
    assert main([*argv, str(setup / "det.pt")]) == 0  # a checkpoint: no such line
    assert "random initialization" not in capsys.readouterr().out


def test_video_and_bench_video_run_an_int8_onnx_detector(setup, tmp_path, capsys):
    """An INT8 (QDQ) detector runs the whole pipeline; bench video puts it next to the checkpoint (--versus)."""
    import numpy as np
    from PIL import Image

    from parvis.engine.loading import load_model
    from parvis.export import export_model
    from parvis.quantize import quantize_onnx

    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(calib / f"{i}.png")
    export_model(load_model(str(setup / "det.pt")), tmp_path / "det.onnx", "onnx")
    quantize_onnx(tmp_path / "det.onnx", tmp_path / "det-int8.onnx", calib, n=4)
    clips = sorted(str(p) for p in (setup / "video" / "clips").glob("*.mp4"))
    assert main(["video", *clips, "--model", str(tmp_path / "det-int8.onnx"), "--out", str(tmp_path / "v"),
                 "--no-video"]) == 0  # fmt: skip
    summary = json.loads((tmp_path / "v" / "summary.json").read_text())
    assert summary["runtime"] == "onnxruntime" and summary["precision"] == "int8"
    assert [s["frames"] for s in summary["streams"]] == [12, 12] and "mota" in summary["tracking"]
    capsys.readouterr()
    out = tmp_path / "bench.json"
    code = main(["bench", "video", str(tmp_path / "det-int8.onnx"), "--versus", str(setup / "det.pt"),
                 "--streams", "2", "--batch", "2", "--clips", str(setup / "video"), "--json", str(out)])  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())
    assert result["precision"] == "int8" and {"aggregate_fps", "ceiling_ratio", "mota"} <= result.keys()
    assert result["aggregate_fps"] == result["rows"][0]["aggregate_fps"] > 0
    (versus,) = result["versus"]
    assert versus["source"] == str(setup / "det.pt") and versus["rows"][0]["aggregate_fps"] > 0
    assert "mota" in versus["rows"][0]
    text = capsys.readouterr().out
    assert "det-int8.onnx (onnxruntime int8) vs det.pt (torch" in text and "MOTA" in text
