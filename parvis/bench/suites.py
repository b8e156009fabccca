"""Inference benchmark suites: `parvis bench precision | batch | scaling | roofline | partition`.

Each suite takes a registered model name, a parvis checkpoint or an exported artifact (.onnx, .pt2),
opens it through `parvis.runtimes.open_runtime`, and returns one JSON-serializable dict: a header
naming what it ran on (device, torch version, threads, batch, input size, machine) and `rows`.
Inputs are seeded random images of the model's input size: throughput does not depend on pixel
values, and the same inputs let the precision suite compare logits across precisions.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from parvis import runtime as rt
from parvis.artifact import TENSOR_TASK, is_quantized, read_metadata
from parvis.engine.checkpoint import load_checkpoint, save_checkpoint
from parvis.engine.loading import load_model
from parvis.errors import ParvisError
from parvis.export import export_model
from parvis.models import MODELS, build_model
from parvis.models.base import ModelMeta
from parvis.quantize import quantize_onnx
from parvis.runtimes import ARTIFACT_SUFFIXES, RUNTIMES, open_runtime
from parvis.runtimes.timing import time_calls, time_runtimes

DEFAULT_BATCHES = (1, 2, 4, 8, 16, 32, 64)
Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# --------------------------------------------------------------------------- sources and headers


@contextmanager
def prepared_source(source: str, size: int | None = None) -> Iterator[tuple[str, object]]:
    """(path, ModelMeta) of a file every runtime and worker process can open at input size `size`.

    A registered name is built once (seed 0, random weights) and saved as a checkpoint, so every
    candidate and every process runs the same weights. A checkpoint asked for at another size is
    re-saved with that input size in its metadata (the models are fully convolutional; export and
    INT8 calibration read the size from there). Artifacts have a fixed spatial size: a different
    `size` is refused.
    """
    if size is not None and size < 8:
        raise ParvisError(f"--size {size} is too small; use at least 8 (e.g. 224)")
    with tempfile.TemporaryDirectory(prefix="parvis-bench-") as tmp:
        path = Path(source)
        if source.endswith(ARTIFACT_SUFFIXES):
            meta = read_metadata(source)
            if size is not None and size != meta.input_size:
                raise ParvisError(
                    f"{source}: exported at {meta.input_size} px, so it cannot run at --size {size}; "
                    "drop --size or export the checkpoint at that size"
                )
            yield source, meta
            return
        if path.is_file():
            state = load_checkpoint(path)
            if not isinstance(state.get("meta"), dict) or "model" not in state:
                raise ParvisError(f"{source}: has no model metadata; it is not a checkpoint written by parvis")
            meta = ModelMeta.from_dict(state["meta"])
            if size is None or size == meta.input_size:
                yield source, meta
                return
            meta.input_size = size
            out = Path(tmp) / "model.pt"
            save_checkpoint(out, {"model": state["model"], "meta": meta.to_dict()})
            yield str(out), meta
            return
        if source not in MODELS.names():
            raise ParvisError(
                f"{source}: no such checkpoint or artifact file, and not a registered model name; "
                "see `parvis train --help` for names"
            )
        task = MODELS.info(source)["task"]
        classes = [f"class_{i}" for i in range(1000 if task == "classification" else 21)]
        torch.manual_seed(0)
        model = build_model(source, len(classes), classes, input_size=size or 224)
        out = Path(tmp) / "model.pt"
        save_checkpoint(out, {"model": model.state_dict(), "meta": model.meta.to_dict()})
        yield str(out), model.meta


def header(benchmark: str, source: str, meta, batch: int, threads: int | None, device: torch.device) -> dict:
    """What every suite's JSON starts with: what ran, with which settings, on what (`rt.result_header`)."""
    return {
        "benchmark": benchmark,
        "source": source,
        "model": meta.name,
        "task": meta.task,
        "input_size": meta.input_size,
        "batch": batch,
        "threads": threads or torch.get_num_threads(),
        **rt.result_header(device),
    }


def random_images(batch: int, size: int, seed: int = 0) -> np.ndarray:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)).numpy()


def random_inputs(meta, batch: int, seed: int = 0):
    """What the model takes, random: normalized images, or for a raw-tensor model (a foreign ONNX file
    without preprocessing) a {input name: array} of the graph's shapes with `batch` on the first axis."""
    if meta.task != TENSOR_TASK:
        return random_images(batch, meta.input_size, seed)
    rng = np.random.default_rng(seed)
    feeds = {}
    for t in meta.extra["inputs"]:
        rest = t["shape"][1:]
        if not all(isinstance(d, int) for d in rest):
            raise ParvisError(f"input {t['name']!r} has free axes {t['shape']}; benchmarks need every axis but the "
                              "first fixed (re-export with fixed shapes)")  # fmt: skip
        if t["dtype"] == "FP32":
            feeds[t["name"]] = rng.standard_normal((batch, *rest)).astype(np.float32)
        elif t["dtype"].startswith(("INT", "UINT")):
            feeds[t["name"]] = np.zeros((batch, *rest), dtype=np.int64 if t["dtype"] == "INT64" else np.int32)
        else:
            raise ParvisError(f"input {t['name']!r} is {t['dtype']}; benchmarks fill FP32 and integer inputs only")
    return feeds


def device_precisions(device: torch.device) -> tuple[list[str], list[str]]:
    """(precisions this device runs natively for inference, notes on the ones left out)."""
    if device.type == "cuda":
        gpu = rt.gpu_for(device)
        names = ["fp32"] + (["tf32", "bf16"] if gpu and gpu.bf16 else []) + ["fp16"]
        notes = [] if gpu and gpu.bf16 else ["tf32 and bf16 skipped: they need compute capability 8.0+ (Ampere)"]
        return names, notes
    if device.type == "mps":
        return ["fp32", "fp16"], []
    cpu = rt.inventory().cpu
    names, notes = ["fp32"], []
    if cpu.native_bf16:
        names.append("bf16")
    else:
        notes.append("bf16 skipped: this CPU has no native BF16 instructions (it would be emulated)")
    if cpu.native_fp16:
        names.append("fp16")
    return names, notes


def time_rows(rows: list[dict], x: np.ndarray, rounds: int, iters: int, progress: Progress) -> None:
    """img/s of every row's runtime at batch len(x), timed round-robin (`parvis.runtimes.timing`), into
    row["img_s"] (the median of the rounds) and row["img_s_runs"]; each row's precision is applied
    before it runs."""
    labels = [f"{row['runtime']} {row['precision']}" for row in rows]
    speeds = time_runtimes(
        [row["rt"] for row in rows], x, rounds, iters, 0, progress, labels, before=lambda i: _apply(rows[i])
    )
    for row, speed in zip(rows, speeds, strict=True):
        row.update(speed)


def _apply(row: dict) -> None:
    # TF32 is a process-wide switch (not part of autocast); set it for the row about to run.
    if row.get("resolved") is not None:
        rt.apply_precision(row["resolved"])


def _torch_rows(path: str, names: list[str], device: torch.device, threads: int | None) -> list[dict]:
    rows = []
    for name in names:
        resolved = rt.resolve_precision(name, device, "infer")
        runtime = open_runtime(path, "torch", threads=threads, device=str(device), precision=name)
        rows.append({"runtime": "torch", "precision": name, "resolved": resolved, "rt": runtime})
    return rows


def _onnx_file(path: str, workdir: Path, progress: Progress) -> str:
    """`path` itself if it is ONNX, else an fp32 ONNX export of the checkpoint in `workdir`."""
    if path.endswith(".onnx"):
        return path
    if path.endswith(".pt2"):
        raise ParvisError(f"{path}: ONNX Runtime needs an ONNX file; export the checkpoint with --format onnx")
    progress("exporting to ONNX")
    out = workdir / "model.onnx"
    export_model(load_model(path), out, "onnx")
    return str(out)


def _int8_file(onnx_path: str, workdir: Path, data: str, calib: int, progress: Progress) -> str:
    progress(f"quantizing to INT8 with {calib} calibration images")
    out = workdir / "model-int8.onnx"
    quantize_onnx(onnx_path, out, data, n=calib)
    return str(out)


def _finish_rows(rows: list[dict]) -> None:
    for row in rows:
        row["info"] = row.pop("rt").info()
        resolved = row.pop("resolved", None)
        if resolved is not None:
            row["reason"] = resolved.reason


def _check_counts(**counts: int) -> None:
    bad = [name for name, v in counts.items() if v < 1]
    if bad:
        raise ParvisError(f"{', '.join('--' + b for b in bad)} must be at least 1")


# --------------------------------------------------------------------------- precision


def bench_precision(
    source: str,
    size: int | None = None,
    batch: int = 32,
    rounds: int = 3,
    iters: int = 3,
    threads: int | None = None,
    device: str = "auto",
    data: str | None = None,
    calib: int = 64,
    progress: Progress = _quiet,
) -> dict:
    """Each precision the device supports: img/s at `batch`, speedup vs fp32, max |logit diff| vs fp32.

    INT8 (ONNX Runtime, static, calibrated on `data`'s training images) joins on the CPU when `data`
    is given, next to ONNX Runtime fp32 so the INT8 gain is also visible within one runtime. Rows:
    {runtime, precision, img_s, speedup_vs_fp32, max_abs_err, info, ...}.
    """
    _check_counts(batch=batch, rounds=rounds, iters=iters, calib=calib)
    dev = rt.resolve_device(device)
    names, notes = device_precisions(dev)
    with prepared_source(source, size) as (path, meta), tempfile.TemporaryDirectory() as tmp:
        rows = [] if path.endswith(".onnx") else _torch_rows(path, names, dev, threads)
        if path.endswith(".onnx"):
            notes.append("an ONNX file runs on ONNX Runtime only: no PyTorch precision rows")
        if data is not None or path.endswith(".onnx"):
            onnx_path = _onnx_file(path, Path(tmp), progress)
            ort = open_runtime(onnx_path, threads=threads, device=str(dev))
            rows.append({"runtime": "onnxruntime", "precision": "fp32", "rt": ort})
            if data is not None and dev.type != "cpu":
                notes.append("int8 skipped: INT8 here is ONNX Runtime's CPU provider; bench on --device cpu for it")
            elif data is not None:
                int8 = _int8_file(onnx_path, Path(tmp), data, calib, progress)
                ort8 = open_runtime(int8, threads=threads, precision="int8")
                rows.append({"runtime": "onnxruntime", "precision": "int8", "rt": ort8})
        else:
            notes.append("int8 not run: pass --data DIR to calibrate an ONNX Runtime INT8 model on its images")
        x = random_inputs(meta, batch)
        rt.apply_precision(rt.resolve_precision("fp32", dev, "infer"))
        reference = rows[0]["rt"].run(x)
        for row in rows:
            _apply(row)
            row["max_abs_err"] = float(np.abs(row["rt"].run(x) - reference).max())
        time_rows(rows, x, rounds, iters, progress)
        _finish_rows(rows)
    base = rows[0]["img_s"]
    ort_fp32 = next((r["img_s"] for r in rows if r["runtime"] == "onnxruntime" and r["precision"] == "fp32"), None)
    for row in rows:
        row["speedup_vs_fp32"] = row["img_s"] / base
        if row["runtime"] == "onnxruntime" and ort_fp32:
            row["speedup_vs_runtime_fp32"] = row["img_s"] / ort_fp32
    result = header("precision", source, meta, batch, threads, dev)
    result.update(
        rounds=rounds,
        iters_per_round=iters,
        auto_precision=rt.resolve_precision("auto", dev, "infer").name,
        reference=f"{rows[0]['runtime']} {rows[0]['precision']}",
        rows=rows,
        notes=notes,
    )
    return result


# --------------------------------------------------------------------------- batch


def bench_batch(
    source: str,
    size: int | None = None,
    batches: tuple[int, ...] | list[int] = DEFAULT_BATCHES,
    runtime: str | None = None,
    precision: str = "auto",
    threads: int | None = None,
    device: str = "auto",
    seconds: float = 1.0,
    min_iters: int = 3,
    data: str | None = None,
    calib: int = 64,
    progress: Progress = _quiet,
) -> dict:
    """Latency (p50, p90 per batch) and throughput over batch sizes for one runtime and precision.

    runtime: torch (default), torch-compile, onnxruntime (an .onnx source's default) or openvino (a
    checkpoint is exported to ONNX first); precision: auto/fp32/tf32/bf16/fp16 for the torch ones,
    fp32 or int8 (calibrated on `data`) for onnxruntime, also bf16 for openvino. torch-compile
    compiles each batch size in the untimed warm-up call. Rows: {batch, img_s, latency_ms_p50,
    latency_ms_p90, latency_ms_per_image, iters}.
    """
    batches = sorted(set(batches))
    if not batches or batches[0] < 1:
        raise ParvisError("--batches needs batch sizes of at least 1, e.g. 1,2,4,8")
    _check_counts(min_iters=min_iters)
    dev = rt.resolve_device(device)
    with prepared_source(source, size) as (path, meta), tempfile.TemporaryDirectory() as tmp:
        runtime = runtime or ("onnxruntime" if path.endswith(".onnx") else "torch")
        resolved = None
        if runtime in ("onnxruntime", "openvino"):
            allowed = ("auto", "fp32", "int8") + (("bf16",) if runtime == "openvino" else ())
            if precision not in allowed:
                raise ParvisError(f"--precision {precision}: {runtime} here runs {', '.join(allowed[1:])}")
            already_int8 = path.endswith(".onnx") and is_quantized(path)
            if already_int8 and precision not in ("auto", "int8"):
                raise ParvisError(f"{path}: is an INT8 model; bench it with --precision int8 (or auto)")
            if precision == "int8" and data is None and not already_int8:
                raise ParvisError("--precision int8 needs --data DIR to calibrate the INT8 model on its images")
            onnx_path = _onnx_file(path, Path(tmp), progress)
            if precision == "int8" and not already_int8:
                onnx_path = _int8_file(onnx_path, Path(tmp), data, calib, progress)
            precision = ("int8" if already_int8 else "fp32") if precision == "auto" else precision
            model = open_runtime(onnx_path, runtime, threads=threads, device=str(dev), precision=precision)
        elif runtime in ("torch", "torch-compile"):
            resolved = rt.resolve_precision(precision, dev, "infer")
            rt.apply_precision(resolved)
            model = open_runtime(path, runtime, threads=threads, device=str(dev), precision=resolved.name)
            precision = resolved.name
        else:
            raise ParvisError(f"--runtime {runtime!r} is unknown; choose one of {', '.join(RUNTIMES)}")
        rows = []
        for b in batches:
            progress(f"batch {b}")
            x = random_inputs(meta, b)
            times = time_calls(lambda x=x: model.run(x), seconds, min_iters)
            p50 = float(np.percentile(times, 50))
            rows.append(
                {
                    "batch": b,
                    "img_s": b * len(times) / sum(times),
                    "latency_ms_p50": p50 * 1000,
                    "latency_ms_p90": float(np.percentile(times, 90)) * 1000,
                    "latency_ms_per_image": p50 * 1000 / b,
                    "iters": len(times),
                }
            )
        info = model.info()
    best = max(rows, key=lambda r: r["img_s"])
    result = header("batch", source, meta, batches[-1], threads, dev)
    result.update(
        runtime=runtime,
        precision=precision,
        precision_reason=resolved.reason if resolved else None,
        batches=batches,
        seconds_per_batch_size=seconds,
        best_batch=best["batch"],
        best_img_s=best["img_s"],
        info=info,
        rows=rows,
    )
    return result
