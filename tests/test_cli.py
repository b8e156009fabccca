"""The CLI end to end: the console script in a subprocess for the main paths, main() in-process for errors."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from parvis.cli.main import main
from parvis.errors import ParvisError

PARVIS = [sys.executable, "-m", "parvis"]


def run(*args, timeout=300):
    env = {**os.environ, "COLUMNS": "160"}
    return subprocess.run([*PARVIS, *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_doctor_json_has_matmul_figures_per_precision():
    proc = run("doctor", "--json", "--quick")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    mm = report["cpu"]["matmul"]
    assert mm["fp32_gflops"] > 0 and mm["bf16_gflops"] > 0
    assert report["cpu"]["memory_bandwidth_gbs"] > 0
    assert report["cpu"]["jpeg_decode"]["img_s_per_core"] > 0
    assert report["precision"]["train"]["name"] in ("fp32", "bf16", "fp16", "tf32")
    assert set(report["runtimes"]) == {"onnxruntime", "openvino", "tensorrt"}
    assert report["advice"] and all(isinstance(t, str) for t in report["advice"])


def test_doctor_tables(capsys):
    assert main(["doctor", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "GFLOP/s" in out and "advice" in out and "JPEG decode" in out


@pytest.mark.slow
def test_synth_check_bench_end_to_end(tmp_path):
    data = tmp_path / "shapes"
    proc = run("data", "synth", "--out", str(data), "--n", "40", "--size", "64", "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    assert (data / "dataset.yaml").exists()

    proc = run("data", "check", str(data))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no problems" in proc.stdout

    out = tmp_path / "bench.json"
    proc = run(
        "bench",
        "data",
        str(data),
        "--workers",
        "0,1",
        "--size",
        "48",
        "--batch-size",
        "8",
        "--max-images",
        "32",
        "--repeats",
        "1",
        "--json",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["parvis_img_s"] > 0 and result["baseline_img_s"] > 0
    assert result["speedup"] == pytest.approx(result["parvis_img_s"] / result["baseline_img_s"], rel=0.02)
    assert [r["workers"] for r in result["rows"]] == [0, 1]
    assert {r["decoder"] for r in result["decoders"]} >= {"simplejpeg", "torchvision", "pil"}
    assert "speedup" in proc.stdout or "x" in proc.stdout


def test_check_reports_broken_file_by_name(tmp_path, shapes_dir, capsys):
    data = tmp_path / "copy"
    shutil.copytree(shapes_dir, data)
    victim = sorted((data / "images" / "val").glob("*.jpg"))[0]
    victim.write_bytes(victim.read_bytes()[:200])  # truncated
    assert main(["data", "check", str(data)]) == 1
    out = capsys.readouterr().out
    assert victim.name in out


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["data", "check", "/nonexistent/dataset"], "/nonexistent/dataset"),
        (["data", "synth", "--out", "{tmp}/x", "--n", "0"], "n must be"),
        (["data", "synth", "--out", "{tmp}/x", "--size", "8"], "size"),
        (["bench", "data", "{shapes}", "--workers", "two"], "--workers"),
        (["bench", "data", "/nonexistent/dataset"], "/nonexistent/dataset"),
        (["bench", "data", "{shapes}", "--batch-size", "500"], "batch-size"),
    ],
)
def test_user_errors_are_one_line_without_traceback(argv, needle, tmp_path, shapes_dir, capsys):
    argv = [a.format(tmp=tmp_path, shapes=shapes_dir) for a in argv]
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("parvis: error:") and needle in lines[0]
    assert "Traceback" not in err


def test_synth_refuses_a_non_empty_output_and_keeps_it(tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    keep = out / "precious.txt"
    keep.write_text("mine")
    assert main(["data", "synth", "--out", str(out), "--n", "5", "--size", "64"]) != 0
    assert str(out) in capsys.readouterr().err
    assert keep.read_text() == "mine" and sorted(p.name for p in out.iterdir()) == ["precious.txt"]


def test_debug_flag_shows_the_traceback():
    with pytest.raises(ParvisError):
        main(["--debug", "data", "check", "/nonexistent/dataset"])


def test_python_dash_m_and_console_script_agree():
    proc = run("--version")
    assert proc.returncode == 0 and "parvis" in proc.stdout
    exe = Path(sys.executable).with_name("parvis")
    if exe.exists():
        assert subprocess.run([str(exe), "--version"], capture_output=True, text=True).stdout == proc.stdout


@pytest.mark.slow
def test_demo_writes_summary_html_and_predictions(shapes_dir, tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--data", str(shapes_dir), "--out", str(out), "--epochs", "1", "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    for task, key in (("classification", "top1"), ("segmentation", "miou"), ("detection", "map50")):
        assert 0 <= summary[key] <= 1 and summary[key] == summary[task]["val"][key]
        assert len(summary[task]["history"]) == 1 and (out / task / "best.pt").exists()
        assert key in json.loads((out / f"eval-{task}.json").read_text())
        assert summary[task]["auto"] and all(line.startswith("auto: ") for line in summary[task]["auto"])
    cls = summary["classification"]
    assert sum(map(sum, cls["confusion"]["matrix"])) == 12  # every val image of the 60-scene set
    assert len(cls["correct"]) + len(cls["wrong"]) >= 1 and all(x["overlay"] for x in cls["correct"] + cls["wrong"])
    assert {r["config"] for r in summary["bench_train"]} == {"fp32/contiguous", "auto"}
    html = (out / "index.html").read_text()
    assert "Confusion matrix" in html and "Per class" in html and "overlays/" in html and "AP@0.5" in html
    for task in ("segmentation", "detection"):
        assert len(list((out / f"predict-{task}" / "overlays").glob("*.jpg"))) == 6


def test_a_matmul_the_cpu_emulates_is_timed_at_a_size_that_fits_the_budget(monkeypatch):
    """bf16 on a CPU without native BF16 ran at ~0.3 GFLOP/s: one 2048 matmul took a minute, and
    `doctor --quick` four of them. The probe's per-call time sets the size."""
    from parvis.bench import micro

    assert micro.cpu_matmul_side(torch.float32, 0.25) in (256, 512, 1024, 2048)
    real = torch.matmul

    def slow(a, b, **kw):  # 256^3 in 0.1 s: 2048^3 would take 51 s a call
        time.sleep(0.1)
        return real(a, b, **kw)

    monkeypatch.setattr(micro.torch, "matmul", slow)
    assert micro.cpu_matmul_side(torch.bfloat16, 0.25) == 256
    assert micro.cpu_matmul_side(torch.bfloat16, 5.0) == 512  # 4 calls of 0.8 s fit 21 s, of 6.4 s do not
