"""`parvis bench roofline`: achieved GFLOP/s per precision against the device's measured peak.

FLOPs per image come from `torch.utils.flop_counter.FlopCounterMode` on the eager model
(convolutions and matmuls, 2 FLOPs per multiply-add; elementwise work is not counted), images/s
from the same round-robin timing as `bench precision`, and the peak from the square matmul
`parvis doctor` times. The peak is timed in that same round-robin, in turn with the model rows (peak
fp32, model fp32, peak bf16, model bf16, then the next round): measured apart, before or after, it saw
a different machine (another job, the clock) and fp32 came out at 139% and 174% "of peak" in two runs.
An arithmetic intensity comes from an upper bound on memory traffic (`bytes_per_image`), so the
roofline's memory roof is a conservative one.
"""

from __future__ import annotations

import statistics
from contextlib import contextmanager

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from parvis import runtime as rt
from parvis.artifact import load_program
from parvis.bench import micro
from parvis.bench.suites import (
    Progress,
    _check_counts,
    _finish_rows,
    _quiet,
    _torch_rows,
    device_precisions,
    header,
    prepared_source,
    random_images,
)
from parvis.engine.loading import load_model
from parvis.errors import ParvisError
from parvis.runtimes.timing import time_calls, time_runtimes

MATMUL_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def flops_per_image(model: torch.nn.Module, size: int, device: torch.device | None = None) -> float:
    """FLOPs of one image's forward pass (torch.utils.flop_counter: convolutions and matmuls, 2 per MAC)."""
    x = torch.randn(2, 3, size, size, device=device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 2


def bytes_per_image(
    model: torch.nn.Module, size: int, batch: int, precision: rt.Precision, device: torch.device | None = None
) -> float:
    """Memory traffic of one image's forward at `batch`, if every operator read its inputs and wrote its
    outputs to memory (parameters read once per batch, no fusion, no cache reuse).

    Caches and fused kernels move less, so this is an upper bound on traffic and the arithmetic
    intensity computed from it a lower bound. Counted at the dispatcher under the row's autocast, so
    bf16 activations count 2 bytes and the casts themselves count too.
    """

    class ByteCounter(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if not func.is_view:  # views move no data
                tensors = [t for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor)]
                ByteCounter.total += sum(t.numel() * t.element_size() for t in tensors)
            return out

    x = torch.randn(batch, 3, size, size, device=device)
    with torch.inference_mode(), rt.autocast(precision), ByteCounter():
        model(x)
    return ByteCounter.total / batch


def _eager_model(path: str) -> torch.nn.Module:
    if path.endswith(".onnx"):
        raise ParvisError(
            f"{path}: roofline counts FLOPs on the PyTorch model; pass the checkpoint, the model name or a .pt2"
        )
    if path.endswith(".pt2"):
        return load_program(path)[0].module()
    return load_model(path).float().eval()


class PeakMatmul:
    """The square n x n matmul `parvis doctor` times as the device's peak, shaped like a runtime
    (`run(x)`, x ignored) so that time_runtimes times it in turn with the model rows.

    One run() is `calls` matmuls (set by `calibrate`), then a wait for the device.
    """

    name = "peak matmul"

    def __init__(self, device: torch.device, precision: str, threads: int | None = None, n: int | None = None):
        # n as micro.matmul_gflops: the BLAS plateau on the CPU, a full GPU
        self.device, self.threads = device, threads
        self.n = n or (2048 if device.type == "cpu" else 8192)
        dtype = MATMUL_DTYPES[precision]
        self.a = torch.randn(self.n, self.n, device=device).to(dtype)
        self.b = torch.randn(self.n, self.n, device=device).to(dtype)
        self.out = torch.empty(self.n, self.n, device=device, dtype=dtype)
        self.calls = 1

    def _once(self) -> None:
        torch.matmul(self.a, self.b, out=self.out)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def calibrate(self, seconds_per_run: float) -> None:
        """Warm up (the first calls in a process run slow), then choose `calls` so one run() lasts about
        `seconds_per_run` (at least one matmul)."""
        with _torch_threads(self.threads):
            per_call = statistics.median(time_calls(self._once, 0.0, min_calls=3, warmup_s=0.25, sync=self._sync))
        self.calls = max(1, round(seconds_per_run / per_call))

    def run(self, x=None) -> None:
        with _torch_threads(self.threads):
            for _ in range(self.calls):
                self._once()
            self._sync()

    def gflops(self, runs_per_s: float) -> float:
        return 2 * self.n**3 * self.calls * runs_per_s / 1e9


def time_with_peaks(
    rows: list[dict],
    x: np.ndarray,
    rounds: int,
    iters: int,
    device: torch.device,
    threads: int | None,
    peak_seconds: float,
    progress: Progress = _quiet,
) -> dict[str, float]:
    """Time each row's model and its precision's peak matmul in one round-robin: per round, peak fp32,
    model fp32, peak bf16, model bf16, ... Fills row["img_s"], row["img_s_runs"] and
    row["peak_gflops_runs"] (one per round, paired with img_s_runs); returns {"fp32_gflops": median, ...}.
    `peak_seconds`: about how long each precision's matmuls run in all (at least one matmul per batch).
    """
    peaks = [PeakMatmul(device, row["precision"], threads) for row in rows]
    for row, peak in zip(rows, peaks, strict=True):
        progress(f"warming up the {row['precision']} peak matmul")
        rt.apply_precision(row["resolved"])  # TF32 on CUDA: the tf32 row's matmul with it, fp32's without
        peak.calibrate(peak_seconds / (rounds * iters))
    entries, labels = [], []
    for row, peak in zip(rows, peaks, strict=True):
        entries += [peak, row["rt"]]
        labels += [f"peak matmul {row['precision']}", f"{row['runtime']} {row['precision']}"]
    speeds = time_runtimes(
        entries, x, rounds, iters, 0, progress, labels, before=lambda i: rt.apply_precision(rows[i // 2]["resolved"])
    )
    out = {}
    for k, (row, peak) in enumerate(zip(rows, peaks, strict=True)):
        row.update(speeds[2 * k + 1])
        # time_runtimes counts len(x) "images" per run; a matmul run is one run
        row["peak_gflops_runs"] = [peak.gflops(s / len(x)) for s in speeds[2 * k]["img_s_runs"]]
        out[f"{row['precision']}_gflops"] = round(statistics.median(row["peak_gflops_runs"]), 1)
    return out


def bench_roofline(
    source: str,
    size: int | None = None,
    batch: int = 32,
    rounds: int = 3,
    iters: int = 3,
    threads: int | None = None,
    device: str = "auto",
    peak_seconds: float = 1.0,
    progress: Progress = _quiet,
) -> dict:
    """Achieved GFLOP/s per precision (FLOPs per image x measured img/s) next to the device's peak
    matmul GFLOP/s as `parvis doctor` measures it, timed in turn with the model (`time_with_peaks`), the
    fraction of peak (the median over rounds of each round's achieved / peak), and an arithmetic
    intensity from an upper bound on memory traffic (see `bytes_per_image`) against the measured
    memory bandwidth. Rows: {precision, img_s, gflop_per_image, achieved_gflops, peak_gflops,
    fraction_of_peak, fraction_of_peak_runs, bytes_per_image, arithmetic_intensity, attainable_gflops, bound}.
    """
    _check_counts(batch=batch, rounds=rounds, iters=iters)
    dev = rt.resolve_device(device)
    names, notes = device_precisions(dev)
    with prepared_source(source, size) as (path, meta):
        model = _eager_model(path).to(dev)
        progress("counting FLOPs and bytes")
        flops = flops_per_image(model, meta.input_size, dev)
        traffic = {
            n: bytes_per_image(model, meta.input_size, batch, rt.resolve_precision(n, dev, "infer"), dev) for n in names
        }
        del model
        rows = _torch_rows(path, names, dev, threads)
        x = random_images(batch, meta.input_size)
        peaks = time_with_peaks(rows, x, rounds, iters, dev, threads, peak_seconds, progress)
        _finish_rows(rows)
    progress("measuring memory bandwidth")
    with _torch_threads(threads):
        bandwidth = micro.memory_bandwidth_gbs(
            dev, mbytes=256 if dev.type == "cpu" else 1024, seconds=0.7 * peak_seconds
        )
    for row in rows:
        peak = peaks.get(f"{row['precision']}_gflops")
        achieved = flops * row["img_s"] / 1e9
        intensity = flops / traffic[row["precision"]]
        attainable = min(peak, intensity * bandwidth) if peak else None
        # each round's model and peak were timed back to back: their ratio is the figure that drift
        # between rounds does not move
        fractions = [flops * s / 1e9 / p for s, p in zip(row["img_s_runs"], row["peak_gflops_runs"], strict=True)]
        row.update(
            gflop_per_image=flops / 1e9,
            achieved_gflops=achieved,
            peak_gflops=peak,
            fraction_of_peak=statistics.median(fractions) if peak else None,
            fraction_of_peak_runs=fractions,
            bytes_per_image=traffic[row["precision"]],
            arithmetic_intensity=intensity,
            attainable_gflops=attainable,
            bound=("memory" if intensity * bandwidth < peak else "compute") if peak else None,
        )
    notes.append(
        "peak = square matmul GFLOP/s as `parvis doctor` measures it, timed in turn with the model in every "
        "round; of peak = median over rounds of achieved / peak; arithmetic intensity uses an upper bound "
        "on traffic (every operator's inputs and outputs from memory), so it is a lower bound"
    )
    result = header("roofline", source, meta, batch, threads, dev)
    result.update(
        rounds=rounds,
        iters_per_round=iters,
        flops_per_image=flops,
        peak_gflops=peaks,
        memory_bandwidth_gbs=bandwidth,
        rows=rows,
        notes=notes,
    )
    return result


@contextmanager
def _torch_threads(n: int | None):
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
