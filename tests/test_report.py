"""`parvis report`: every result kind renders with its plot, text is escaped, the JSON and CSV hold the
table rows, bad inputs are one-line errors, and the page looks right in headless Chromium."""

from __future__ import annotations

import base64
import csv
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from parvis.cli.main import main
from parvis.errors import ParvisError
from parvis.report import write_report

COMMITTED = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
CHROMIUM = Path("/usr/bin/chromium")
MACHINE = {"cpu": "AMD EPYC", "usable_cores": 2, "gpus": [], "python": "3.11.7", "parvis": "0.1.0"}


def head(kind: str, **extra) -> dict:
    return {"benchmark": kind, "source": "resnet18", "model": "resnet18", "task": "classification",
            "input_size": 64, "batch": 8, "threads": 2, "device": "cpu", "torch": "2.14.1+cu130", "machine": MACHINE,
            **extra}  # fmt: skip


def synthetic() -> dict[str, dict]:
    """One result of each suite and optimize, shaped like the real ones (see tests/bench/test_suites.py)."""
    out = {
        "precision": head("precision", rows=[
            {"runtime": "torch", "precision": "fp32", "img_s": 300.0, "speedup_vs_fp32": 1.0, "max_abs_err": 0.0},
            {"runtime": "torch", "precision": "bf16", "img_s": 610.0, "speedup_vs_fp32": 2.03, "max_abs_err": 0.02},
        ]),
        "batch": head("batch", runtime="torch", precision="bf16", rows=[
            {"batch": b, "img_s": 100.0 * b ** 0.5, "latency_ms_p50": 10.0 * b ** 0.5,
             "latency_ms_p90": 12.0 * b ** 0.5, "latency_ms_per_image": 10.0 / b ** 0.5, "iters": 5}
            for b in (1, 2, 4, 8, 16)
        ]),
        "scaling": head("scaling", rows=[
            {"mode": "threads", "processes": 1, "threads": 1, "cores": 1, "img_s": 150.0, "efficiency": 1.0},
            {"mode": "threads", "processes": 1, "threads": 2, "cores": 2, "img_s": 270.0, "efficiency": 0.9},
            {"mode": "processes", "processes": 2, "threads": 1, "cores": 2, "img_s": 290.0, "efficiency": 0.97,
             "per_process_img_s": [145.0, 145.0]},
        ], notes=["GPU scaling skipped: no CUDA GPU visible"]),
        "roofline": head("roofline", flops_per_image=1.2e9, memory_bandwidth_gbs=30.0,
                         peak_gflops={"fp32_gflops": 160.0, "bf16_gflops": 400.0}, rows=[
            {"precision": "fp32", "img_s": 60.0, "gflop_per_image": 1.2, "achieved_gflops": 72.0, "peak_gflops": 160.0,
             "fraction_of_peak": 0.45, "arithmetic_intensity": 20.0, "attainable_gflops": 160.0, "bound": "compute"},
            {"precision": "bf16", "img_s": 120.0, "gflop_per_image": 1.2, "achieved_gflops": 144.0,
             "peak_gflops": 400.0, "fraction_of_peak": 0.36, "arithmetic_intensity": 38.0, "attainable_gflops": 400.0,
             "bound": "compute"},
        ]),
        "partition": head("partition", mode="cpu-affinity", share_kind="cores", jobs=2, fair_share=0.5,
                          solo={"share": "all", "threads": 2, "img_s": 270.0},
                          alone_same_share={"share": "0", "threads": 1, "img_s": 150.0},
                          aggregate_img_s=280.0, aggregate_vs_solo=1.04, rows=[
            {"job": 0, "share": "0", "threads": 1, "img_s": 140.0, "batches": 20, "kept_vs_solo": 0.52,
             "kept_vs_alone_same_share": 0.93},
            {"job": 1, "share": "1", "threads": 1, "img_s": 140.0, "batches": 20, "kept_vs_solo": 0.52,
             "kept_vs_alone_same_share": 0.93},
        ]),
        "optimize": {"benchmark": "optimize", "model": "unet_small", "input_size": 64, "device": "cpu",
                     "torch": "2.14.1+cu130", "versions": {"onnxruntime": "1.20"}, "chosen": None,
                     "candidates": [
            {"variant": "base", "runtime": "torch", "precision": "fp32", "batch": 8, "threads": 2, "img_s": 300.0,
             "latency_ms_p50": 3.0, "metric": 0.80, "metric_drop": 0.0, "speedup_vs_eager_fp32": 1.0, "status": "ok",
             "reason": None, "chosen": False},
            {"variant": "base", "runtime": "onnxruntime", "precision": "int8", "batch": 8, "threads": 2,
             "img_s": 700.0, "latency_ms_p50": 1.0, "metric": 0.70, "metric_drop": 10.0,
             "speedup_vs_eager_fp32": 2.33, "status": "over budget", "reason": "mIoU drop 10.0 > 1.0 points",
             "chosen": False},
            {"variant": "base", "runtime": "onnxruntime", "precision": "fp32", "batch": 8, "threads": 2,
             "img_s": 450.0, "latency_ms_p50": 2.0, "metric": 0.80, "metric_drop": 0.0, "speedup_vs_eager_fp32": 1.5,
             "status": "ok", "reason": None, "chosen": True},
        ]},
    }  # fmt: skip
    out["optimize"]["chosen"] = out["optimize"]["candidates"][2]
    return out


def write(folder: Path, results: dict[str, dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, r in results.items():
        (folder / f"{name}.json").write_text(json.dumps(r))
    return folder


def test_every_kind_renders_with_one_plot_and_the_json_csv_beside_it(tmp_path):
    folder = write(tmp_path / "res", synthetic())
    committed = sorted(COMMITTED.glob("bench-*.json"))  # runtime, train and data results from real runs
    done = write_report([folder, *committed], tmp_path / "out" / "report.html")
    n = len(synthetic()) + len(committed)
    assert done["results"] == n and done["plots"] == n
    page = (tmp_path / "out" / "report.html").read_text()
    images = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == n
    assert all(base64.b64decode(b).startswith(b"\x89PNG") for b in images)
    assert "http://" not in page and "https://" not in page  # self-contained
    for text in (
        "bench roofline",
        "bench partition",
        "mIoU drop 10.0 &gt; 1.0 points",
        "over budget",
        "2.14.1+cu130",
        "chosen: base onnxruntime fp32 (batch 8, threads 2)",
    ):
        assert text in page
    doc = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [r["kind"] for r in doc["results"]][: len(synthetic())] == sorted(synthetic())
    with open(tmp_path / "out" / "report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == done["rows"] == sum(len(r["rows"]) for r in doc["results"])
    assert {"file", "kind", "img_s"} <= set(rows[0])


def test_text_is_escaped(tmp_path):
    r = synthetic()["precision"]
    r["model"] = "<script>alert(1)</script>"
    r["notes"] = ['a "quoted" <b>note</b> & more']
    write_report([write(tmp_path, {"p": r})], tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert "<script>" not in page and "<b>note" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;b&gt;note&lt;/b&gt; &amp; more" in page


def test_unknown_or_broken_json_is_a_one_line_error_naming_the_file(tmp_path, capsys):
    write(tmp_path, {"good": synthetic()["batch"], "odd": {"hello": 1}})
    with pytest.raises(ParvisError, match=r"odd\.json: not a parvis result"):
        write_report([tmp_path], tmp_path / "r.html")
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert "odd.json" in err and err.count("\n") == 1
    (tmp_path / "odd.json").write_text("{not json")
    assert main(["report", str(tmp_path / "odd.json"), "--out", str(tmp_path / "r.html")]) == 2
    assert "odd.json: not readable JSON" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()
    # --skip-unknown renders the rest and says what it skipped.
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r.html"), "--skip-unknown"]) == 0
    assert "skipped" in capsys.readouterr().out and (tmp_path / "r.html").is_file()


def test_a_rerun_over_the_same_folder_skips_the_reports_own_json(tmp_path):
    write(tmp_path, {"batch": synthetic()["batch"]})
    write_report([tmp_path], tmp_path / "report.html")
    done = write_report([tmp_path], tmp_path / "report.html")
    assert done["results"] == 1 and any("report's own JSON" in s for s in done["skipped"])


def test_bad_out_and_missing_input_are_errors(tmp_path):
    write(tmp_path, {"batch": synthetic()["batch"]})
    with pytest.raises(ParvisError, match="name an .html file"):
        write_report([tmp_path], tmp_path / "r.json")
    with pytest.raises(ParvisError, match="nope: no such file or folder"):
        write_report([tmp_path / "nope"], tmp_path / "r.html")


def screenshot(html: Path, png: Path, profile: Path) -> Image.Image:
    cmd = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
        "--force-device-scale-factor=1", f"--user-data-dir={profile}", f"--screenshot={png}",
        "--window-size=1200,2000", html.resolve().as_uri(),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert png.is_file() and png.stat().st_size > 0, proc.stderr[-2000:]
    return Image.open(png).convert("RGB")


def colored_pixels(image: Image.Image) -> int:
    """Pixels with a clear hue (plot bars, lines, markers); text and table rules are black or gray."""
    a = np.asarray(image).astype(int)
    return int(((a.max(axis=2) - a.min(axis=2)) > 60).sum())


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install -y chromium)")
def test_report_looks_right_in_headless_chromium(tmp_path):
    results = synthetic()
    # Few sections, so several plots fall inside the 2000 px tall viewport.
    folder = write(tmp_path / "res", {k: results[k] for k in ("batch", "partition", "roofline")})
    write_report([folder], tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    stripped = tmp_path / "stripped.html"
    stripped.write_text(re.sub(r"<img [^>]*>", "", page))

    full = screenshot(tmp_path / "report.html", tmp_path / "full.png", tmp_path / "profile1")
    bare = screenshot(stripped, tmp_path / "bare.png", tmp_path / "profile2")
    assert full.size == (1200, 2000)
    gray = np.asarray(full.convert("L")).astype(float)
    assert gray.std() > 20, "the page looks blank"
    colours = np.unique(np.asarray(full).reshape(-1, 3), axis=0)
    assert len(colours) > 200, "too few colours for a page with plots"
    assert (gray < 128).mean() > 0.005, "no dark text rendered"
    # The plots are there: far more coloured pixels than the same page without its images.
    with_plots, without = colored_pixels(full), colored_pixels(bare)
    assert with_plots > without + 20000, (with_plots, without)
