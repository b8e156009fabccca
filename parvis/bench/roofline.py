"""`parvis bench roofline`: achieved GFLOP/s per precision against the device's measured peak.

FLOPs per image come from `torch.utils.flop_counter.FlopCounterMode` on the eager model
(convolutions and matmuls, 2 FLOPs per multiply-add; elementwise work is not counted), images/s
from the same round-robin timing as `bench precision`, and the peak from the square matmul
`parvis doctor` times. An arithmetic intensity comes from an upper bound on memory traffic
(`bytes_per_image`), so the roofline's memory roof is a conservative one.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from parvis import runtime as rt
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
    time_rows,
)
from parvis.errors import ParvisError


def flops_per_image(model: torch.nn.Module, size: int, device: torch.device | None = None) -> float:
    """FLOPs of one image's forward pass (torch.utils.flop_counter: convolutions and matmuls, 2 per MAC)."""
    from torch.utils.flop_counter import FlopCounterMode

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
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

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
    from parvis.artifact import load_program
    from parvis.engine.loading import load_model

    if path.endswith(".onnx"):
        raise ParvisError(
            f"{path}: roofline counts FLOPs on the PyTorch model; pass the checkpoint, the model name or a .pt2"
        )
    if path.endswith(".pt2"):
        return load_program(path)[0].module()
    return load_model(path).float().eval()


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
    matmul GFLOP/s as `parvis doctor` measures it, the fraction of peak, and an arithmetic
    intensity from an upper bound on memory traffic (see `bytes_per_image`) against the measured
    memory bandwidth. Rows: {precision, img_s, gflop_per_image, achieved_gflops, peak_gflops,
    fraction_of_peak, bytes_per_image, arithmetic_intensity, attainable_gflops, bound}.
    """
    from parvis.bench import doctor, micro

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
        time_rows(rows, x, rounds, iters, progress)
        _finish_rows(rows)
    progress("measuring peak matmul GFLOP/s and memory bandwidth")
    with _torch_threads(threads):
        peaks = doctor._matmuls(dev, names, peak_seconds)
        bandwidth = micro.memory_bandwidth_gbs(
            dev, mbytes=256 if dev.type == "cpu" else 1024, seconds=0.7 * peak_seconds
        )
    for row in rows:
        peak = peaks.get(f"{row['precision']}_gflops")
        achieved = flops * row["img_s"] / 1e9
        intensity = flops / traffic[row["precision"]]
        attainable = min(peak, intensity * bandwidth) if peak else None
        row.update(
            gflop_per_image=flops / 1e9,
            achieved_gflops=achieved,
            peak_gflops=peak,
            fraction_of_peak=achieved / peak if peak else None,
            bytes_per_image=traffic[row["precision"]],
            arithmetic_intensity=intensity,
            attainable_gflops=attainable,
            bound=("memory" if intensity * bandwidth < peak else "compute") if peak else None,
        )
    notes.append(
        "peak = square matmul GFLOP/s as `parvis doctor` measures it; arithmetic intensity uses an upper bound "
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
