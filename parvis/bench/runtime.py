"""`parvis bench runtime`: the same model on each available runtime and precision, side by side.

Each candidate is timed in turns (round-robin, so drift on a shared machine hits all alike): images/s
at the given batch (median of rounds) and batch-1 latency percentiles, plus the largest logit
difference from PyTorch eager fp32 on the same inputs, so a fast-but-wrong candidate shows. With a
dataset, an ONNX Runtime INT8 candidate calibrated on its training images joins (its logit
difference is expected to be larger; its task metric comes from `parvis eval` on the artifact), and
OpenVINO runs the same INT8 file. OpenVINO fp32 (and bf16 on CPUs with native BF16) run the fp32
export; torch.compile joins on request (`compile_too`), since compiling takes long.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from parvis import runtime as rt
from parvis.artifact import TENSOR_TASK, is_quantized
from parvis.bench.suites import random_inputs
from parvis.engine.loading import as_checkpoint, load_model
from parvis.export import export_model
from parvis.quantize import quantize_onnx
from parvis.runtimes import open_runtime
from parvis.runtimes.timing import time_runtimes


def _candidates(
    source: str,
    workdir: Path,
    threads: int | None,
    progress: Callable[[str], None],
    data: str | None,
    calib: int,
    batch: int,
    compile_too: bool,
) -> list[dict]:
    if source.endswith(".onnx"):
        return _onnx_candidates(source, workdir, threads, progress, data, calib)
    cpu = torch.device("cpu")
    auto = rt.resolve_precision("auto", cpu, "infer")
    # A model name is built once (random weights) so every candidate runs the same weights.
    source = as_checkpoint(source, workdir)
    rows = [
        {
            "runtime": "torch",
            "precision": "fp32",
            "layout": "contiguous",
            "rt": open_runtime(source, "torch", threads=threads, precision="fp32", channels_last=False),
        },
        {
            "runtime": "torch",
            "precision": "fp32",
            "layout": "channels_last",
            "rt": open_runtime(source, "torch", threads=threads, precision="fp32", channels_last=True),
        },
    ]
    if auto.name != "fp32":
        rows.append(
            {
                "runtime": "torch",
                "precision": auto.name,
                "layout": "channels_last",
                "rt": open_runtime(source, "torch", threads=threads, precision=auto.name, channels_last=True),
            }
        )
    if compile_too:
        progress(f"compiling with torch.compile ({auto.name}) at batch {batch} and 1 (slow)")
        rows.append(
            {
                "runtime": "torch-compile",
                "precision": auto.name,
                "layout": "channels_last",
                "rt": open_runtime(
                    source,
                    "torch-compile",
                    threads=threads,
                    precision=auto.name,
                    channels_last=True,
                    warmup_batches=(batch, 1),
                ),
            }
        )
    progress("exporting to ONNX")
    onnx_path = workdir / "model.onnx"
    export_model(load_model(source), onnx_path, "onnx")
    rows.append(
        {
            "runtime": "onnxruntime",
            "precision": "fp32",
            "layout": "-",
            "rt": open_runtime(str(onnx_path), threads=threads),
        }
    )
    # OpenVINO's bf16 needs native BF16; where the CPU lacks it the runtime refuses, and the row is left out.
    for precision in ("fp32", "bf16") if rt.inventory().cpu.native_bf16 else ("fp32",):
        rows.append(
            {
                "runtime": "openvino",
                "precision": precision,
                "layout": "-",
                "rt": open_runtime(str(onnx_path), "openvino", threads=threads, precision=precision),
            }
        )
    if data is not None:
        progress(f"quantizing to INT8 with {calib} calibration images")
        int8_path = workdir / "model-int8.onnx"
        quantize_onnx(onnx_path, int8_path, data, n=calib)
        rt_int8 = open_runtime(str(int8_path), threads=threads, precision="int8")
        rows.append({"runtime": "onnxruntime", "precision": "int8", "layout": "-", "rt": rt_int8})
        ov_int8 = open_runtime(str(int8_path), "openvino", threads=threads, precision="int8")
        rows.append({"runtime": "openvino", "precision": "int8", "layout": "-", "rt": ov_int8})
    return rows


def _onnx_candidates(source, workdir: Path, threads, progress, data, calib) -> list[dict]:
    """An ONNX file (parvis's or made elsewhere) on ONNX Runtime and OpenVINO; INT8 from `data`'s images,
    or for a raw-tensor model from seeded random samples. The first row is the reference."""
    precision = "int8" if is_quantized(source) else "fp32"
    first = open_runtime(source, threads=threads, precision=precision)
    rows = [{"runtime": "onnxruntime", "precision": precision, "layout": "-", "rt": first}]
    raw = first.meta.task == TENSOR_TASK
    if not raw:  # OpenVINO here runs single-input image models (a batch dimension it can make dynamic)
        rows.append({"runtime": "openvino", "precision": precision, "layout": "-",
                     "rt": open_runtime(source, "openvino", threads=threads, precision=precision)})  # fmt: skip
    if precision == "fp32" and (data is not None or raw):
        progress(f"quantizing to INT8 with {calib} calibration samples")
        int8_path = workdir / "model-int8.onnx"
        quantize_onnx(source, int8_path, data, n=calib)
        rows.append({"runtime": "onnxruntime", "precision": "int8", "layout": "-",
                     "rt": open_runtime(str(int8_path), threads=threads, precision="int8")})  # fmt: skip
    return rows


def bench_runtime(
    source: str,
    batch: int = 32,
    rounds: int = 3,
    iters: int = 3,
    latency_iters: int = 30,
    threads: int | None = None,
    data: str | None = None,
    calib: int = 128,
    compile_too: bool = False,
    progress: Callable[[str], None] = lambda _: None,
) -> dict:
    """Rows of {runtime, precision, layout, img_s, latency_ms_p50/p99, speedup_vs_eager_fp32, max_abs_err}.

    `compile_too` adds torch.compile at the auto precision; it compiles at `batch` and at 1 before
    timing (tens of seconds per graph on a small CPU), so it is off by default."""
    with tempfile.TemporaryDirectory() as tmp:
        rows = _candidates(source, Path(tmp), threads, progress, data, calib, batch, compile_too)
        meta = rows[0]["rt"].meta
        x = random_inputs(meta, batch)
        reference = rows[0]["rt"].run(x)
        for row in rows:
            row["max_abs_err"] = float(np.abs(row["rt"].run(x) - reference).max())
        labels = [f"{row['runtime']} {row['precision']} {row['layout']}" for row in rows]
        speeds = time_runtimes([row["rt"] for row in rows], x, rounds, iters, latency_iters, progress, labels)
        for row, speed in zip(rows, speeds, strict=True):
            row.update(speed)
            row["info"] = row.pop("rt").info()
    base = rows[0]["img_s"]
    for row in rows:
        row["speedup_vs_eager_fp32"] = row["img_s"] / base
    return {
        "benchmark": "runtime",
        "source": source,
        "model": meta.name,
        "input_size": meta.input_size,
        "batch": batch,
        "rounds": rounds,
        "iters_per_round": iters,
        "threads": threads or torch.get_num_threads(),
        **rt.result_header("cpu"),
        "rows": rows,
    }
