"""Concurrent inference jobs in separate processes, each confined to its share of the device.

The `partition` and `scaling` suites start K worker processes from a forkserver (forking this process
after ONNX Runtime, OpenVINO or OpenMP thread pools have started can deadlock), confine each one (CPU:
`os.sched_setaffinity` to a disjoint core set and that many threads; GPU: a MIG instance through
CUDA_VISIBLE_DEVICES, or an MPS share through CUDA_MPS_ACTIVE_THREAD_PERCENTAGE), let each load its
runtime and warm up, then release them together from a barrier and count the images each finishes
in a fixed wall-clock window. Loading and warm-up stay outside the window, so start-up skew between
processes does not count.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_mod
import time
import traceback
from dataclasses import dataclass, field

import torch

from parvis.errors import ParvisError
from parvis.runtimes import open_runtime

# Model loading in a fresh interpreter (import torch, build, warm up) takes a few seconds on a busy machine.
START_TIMEOUT_S = 300


@dataclass
class JobSpec:
    """One worker process: what to run, where, and for how long."""

    source: str  # checkpoint, .onnx or .pt2 (a prepared file, never a bare model name)
    runtime: str  # torch | onnxruntime
    precision: str  # resolved name: fp32, bf16, ... (onnxruntime: fp32 or int8)
    device: str  # cpu, cuda, cuda:N
    batch: int
    size: int
    seconds: float
    threads: int | None = None
    cores: list[int] | None = None  # CPU affinity; None: inherit
    env: dict[str, str] = field(default_factory=dict)  # e.g. CUDA_VISIBLE_DEVICES for a MIG instance
    warmup_s: float = 0.5
    label: str = ""


def _pin_process(cores: list[int]) -> None:
    """Confine every thread of this process (not only the caller) to `cores`: threads started later inherit it."""
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cores)
        except OSError:  # a thread that exited meanwhile
            pass


def _job(index: int, spec: JobSpec, barrier, results) -> None:
    """Worker process body: confine, load, warm up, wait at the barrier, run for `spec.seconds`."""
    try:
        os.environ.update(spec.env)  # before anything touches CUDA
        if spec.cores is not None:
            _pin_process(spec.cores)
        if spec.threads:
            torch.set_num_threads(spec.threads)
        kwargs = {"threads": spec.threads, "device": spec.device, "precision": spec.precision}
        rt = open_runtime(spec.source, spec.runtime, **kwargs)
        x = torch.randn(spec.batch, 3, spec.size, spec.size, generator=torch.Generator().manual_seed(index)).numpy()
        warm_end = time.perf_counter() + spec.warmup_s
        for i in range(1000):
            rt.run(x)
            if i >= 1 and time.perf_counter() >= warm_end:
                break
    except BaseException as exc:
        barrier.abort()  # the others must not wait for a job that will never come
        results.put({"index": index, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})
        return
    try:
        barrier.wait(timeout=START_TIMEOUT_S)
    except Exception:  # BrokenBarrierError: another job failed to start
        results.put({"index": index, "error": "another job failed to start"})
        return
    t0 = time.perf_counter()
    batches = 0
    while True:
        rt.run(x)
        batches += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= spec.seconds:
            break
    results.put(
        {
            "index": index,
            "label": spec.label,
            "img_s": batches * spec.batch / elapsed,
            "batches": batches,
            "elapsed_s": elapsed,
            "cores": spec.cores,
            "threads": spec.threads,
            "device": spec.device,
            "env": spec.env,
            "info": rt.info(),
        }
    )


def _context():
    """forkserver with torch and the PyTorch runtime preloaded: each job forks from a clean server process
    that has imported them once but never run a kernel (no thread pools to break), so a job starts in
    well under a second instead of paying a fresh interpreter and torch import each time. spawn where
    there is no forkserver (macOS, Windows)."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["parvis.bench.jobs", "torch", "parvis.runtimes.torch_eager", "parvis.models"])
    return ctx


def run_jobs(specs: list[JobSpec]) -> list[dict]:
    """Run `specs` concurrently (one process each, released together); their results in spec order."""
    ctx = _context()
    barrier = ctx.Barrier(len(specs))
    results = ctx.Queue()
    procs = [ctx.Process(target=_job, args=(i, spec, barrier, results), daemon=True) for i, spec in enumerate(specs)]
    for p in procs:
        p.start()
    out: dict[int, dict] = {}
    deadline = time.monotonic() + START_TIMEOUT_S + max(s.seconds for s in specs) + 60
    try:
        while len(out) < len(specs):
            try:
                item = results.get(timeout=1.0)
            except queue_mod.Empty:
                if time.monotonic() > deadline:
                    raise ParvisError("benchmark jobs did not finish in time; is the machine overloaded?") from None
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead and results.empty():
                    raise ParvisError(f"a benchmark job process died (exit code {dead[0].exitcode})") from None
                continue
            out[item["index"]] = item
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
    errors = [r for r in out.values() if "error" in r and r["error"] != "another job failed to start"]
    if errors:
        raise ParvisError(f"benchmark job {errors[0]['index']} failed: {errors[0]['error'].splitlines()[0]}")
    return [out[i] for i in range(len(specs))]


def split_cores(cores: list[int], k: int) -> list[list[int]]:
    """`cores` in `k` disjoint contiguous sets, sizes differing by at most one."""
    if k < 1:
        raise ParvisError(f"--jobs {k}: need at least 1 job")
    if len(cores) < k:
        raise ParvisError(
            f"--jobs {k} needs at least {k} usable cores (one per job); this process may use {len(cores)}: "
            f"use --jobs {len(cores)} or fewer"
        )
    base, extra = divmod(len(cores), k)
    sets, start = [], 0
    for i in range(k):
        n = base + (1 if i < extra else 0)
        sets.append(cores[start : start + n])
        start += n
    return sets


def usable_core_ids() -> list[int]:
    """The CPU ids this process may run on (its affinity mask)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows: no affinity API, so no pinning either
        raise ParvisError("CPU partitioning needs os.sched_setaffinity (Linux)") from None


def core_label(cores: list[int] | None) -> str:
    """'0-3' / '0,2' / 'all' for a core list."""
    if not cores:
        return "all"
    if cores == list(range(cores[0], cores[-1] + 1)) and len(cores) > 2:
        return f"{cores[0]}-{cores[-1]}"
    return ",".join(str(c) for c in cores)
