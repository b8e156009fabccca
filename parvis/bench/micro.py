"""Micro-benchmarks of the machine: matmul throughput per precision, memory and copy bandwidth,
JPEG decode rate. Each is timed for a fixed wall-clock budget after a warm-up and reports the
median of its repetitions, so a figure is comparable with a plain timing loop run beside it.
"""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Callable

import torch
from PIL import Image

from parvis.data import decode as decode_mod
from parvis.data.synth import render_scene
from parvis.runtimes.timing import time_calls


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def time_repeated(
    fn: Callable[[], object], device: torch.device, seconds: float, min_reps: int = 3, warmup_s: float = 0.25
) -> float:
    """Median seconds per call of `fn` over about `seconds` of wall time, after `warmup_s` of untimed
    calls (`parvis.runtimes.timing.time_calls`), waiting for `device` after each call."""
    return statistics.median(time_calls(fn, seconds, min_reps, warmup_s, sync=lambda: _sync(device)))


def matmul_gflops(device: torch.device, dtype: torch.dtype, n: int | None = None, seconds: float = 1.0) -> float:
    """GFLOP/s of an n x n @ n x n matmul (2 n^3 flops).

    n defaults to 2048 on the CPU (big enough to reach the BLAS plateau, small enough to repeat
    within a second on 2 cores) and 8192 on a GPU. A CPU without native support for `dtype` (bf16
    emulated at well under 1 GFLOP/s) gets the size whose calls fit the budget (`cpu_matmul_side`):
    at 2048 one call took a minute there.
    """
    n = n or (cpu_matmul_side(dtype, seconds) if device.type == "cpu" else 8192)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    per_call = time_repeated(lambda: torch.matmul(a, b, out=out), device, seconds)
    return 2 * n**3 / per_call / 1e9


def cpu_matmul_side(dtype: torch.dtype, seconds: float, n_max: int = 2048, n_min: int = 256, reps: int = 4) -> int:
    """The largest n from n_max down (halving, at least n_min) whose `reps` timed calls, extrapolated
    (n^3) from one call at n_min, fit in 4 x `seconds` + 1 s."""
    a = torch.randn(n_min, n_min).to(dtype)
    torch.matmul(a, a)  # the first call sets up the kernel
    start = time.perf_counter()
    torch.matmul(a, a)
    per_call = time.perf_counter() - start
    n = n_max
    while n > n_min and per_call * (n / n_min) ** 3 * reps > 4 * seconds + 1:
        n //= 2
    return n


def memory_bandwidth_gbs(device: torch.device, mbytes: int = 256, seconds: float = 0.7) -> float:
    """Device memory copy bandwidth in GB/s, counting the read and the write."""
    n = mbytes * 2**20 // 4
    src = torch.ones(n, device=device)
    dst = torch.empty_like(src)
    per_call = time_repeated(lambda: dst.copy_(src), device, seconds)
    return 2 * src.numel() * 4 / per_call / 1e9


def host_to_device_gbs(device: torch.device, pinned: bool, mbytes: int = 256, seconds: float = 0.7) -> float:
    """Host-to-device copy bandwidth in GB/s from pageable or pinned host memory."""
    host = torch.ones(mbytes * 2**20 // 4, pin_memory=pinned)
    dst = torch.empty_like(host, device=device)
    per_call = time_repeated(lambda: dst.copy_(host, non_blocking=pinned), device, seconds)
    return host.numel() * 4 / per_call / 1e9


def sample_jpeg(size: int = 512, quality: int = 90) -> bytes:
    """A photo-like JPEG (a synthetic shapes scene: textures, noise, edges) for decode timing."""
    image, _, _ = render_scene(0, size, seed=0)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def jpeg_decode_rate(
    data: bytes, decoder: str = "auto", seconds: float = 0.7, min_size: int | None = None, warmup_s: float = 0.25
) -> float:
    """Images/s decoding `data` on one core (the decoders are single-threaded; this runs in this thread)."""
    per_call = time_repeated(
        lambda: decode_mod.decode(data, decoder=decoder, min_size=min_size),
        torch.device("cpu"),
        seconds,
        warmup_s=warmup_s,
    )
    return 1.0 / per_call
