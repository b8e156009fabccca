"""The timer every speed figure comes from: runtimes timed in turns, and one call repeated for a while.

    speeds = time_runtimes([rt_a, rt_b], x, rounds=3, iters=3, latency_iters=30)
    speeds[0]  # {"img_s", "img_s_runs", "latency_ms_p50", "latency_ms_p99"}
    seconds = time_calls(lambda: model.run(x), seconds=1.0, min_calls=3)   # one duration per call

Candidates are timed round-robin: every round times each of them once, so drift on a shared
machine (another job, the clock ramping, a thermal limit) hits all alike, and the figure is the
median of the rounds. bench (runtime, precision, roofline, scaling, serve, micro), autotune and
prune all measure through here, so their numbers compare.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # for the hint only: micro-benchmarks time plain calls without loading model code
    from parvis.runtimes.base import Runtime

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def _nothing() -> None:
    pass


def time_calls(
    fn: Callable[[], object],
    seconds: float,
    min_calls: int = 3,
    warmup_s: float = 0.0,
    max_calls: int | None = 1000,
    sync: Callable[[], None] = _nothing,
) -> list[float]:
    """Seconds of each call of `fn`: at least `min_calls`, then more until about `seconds` of wall
    time have passed (at most `max_calls`, None for no cap).

    Before the clock starts, `fn` runs for `warmup_s` (at least once): the first calls in a process
    pay for thread-pool start-up, page faults, allocations and clock ramp-up (measured: the first
    second of fp32 matmuls ran 20-35% slow). `sync` waits for queued device work (a CUDA stream),
    so each duration covers the work, not the launch.
    """
    warm_end = time.perf_counter() + warmup_s
    while True:
        fn()
        sync()
        if time.perf_counter() >= warm_end:
            break
    times: list[float] = []
    cap = float("inf") if max_calls is None else max_calls
    deadline = time.perf_counter() + seconds
    while len(times) < min_calls or (time.perf_counter() < deadline and len(times) < cap):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def time_runtimes(
    runtimes: Sequence[Runtime],
    x: np.ndarray,
    rounds: int = 3,
    iters: int = 3,
    latency_iters: int = 30,
    progress: Progress = _quiet,
    labels: list[str] | None = None,
    before: Callable[[int], None] | None = None,
) -> list[dict]:
    """Per runtime: images/s at x's batch, the median of `rounds` round-robin rounds of `iters`
    batches ("img_s", "img_s_runs"), and with `latency_iters` > 0 batch-1 latency in ms
    ("latency_ms_p50", "latency_ms_p99") over that many calls of each runtime in turn.

    `before(i)` runs before runtime i is warmed up or timed: for process-wide switches that belong
    to one candidate (TF32 is not part of autocast). Every runtime is warmed up at each timed shape
    first (compiles, allocations, autotuning).
    """
    labels = labels or [r.name for r in runtimes]
    before = before or (lambda _: None)
    # a raw-tensor model takes {input name: array}; its batch is every array's first axis
    x1 = {k: np.ascontiguousarray(v[:1]) for k, v in x.items()} if isinstance(x, dict) else np.ascontiguousarray(x[:1])
    batch = len(next(iter(x.values()))) if isinstance(x, dict) else len(x)
    for i, r in enumerate(runtimes):
        before(i)
        r.run(x)
        if latency_iters > 0:
            r.run(x1)
    runs: list[list[float]] = [[] for _ in runtimes]
    for k in range(rounds):
        for i, r in enumerate(runtimes):
            progress(f"round {k + 1}/{rounds}: {labels[i]}")
            before(i)
            t0 = time.perf_counter()
            for _ in range(iters):
                r.run(x)
            runs[i].append(batch * iters / (time.perf_counter() - t0))
    out = [{"img_s": statistics.median(r), "img_s_runs": r} for r in runs]
    if latency_iters > 0:
        for i, r in enumerate(runtimes):
            progress(f"batch-1 latency: {labels[i]}")
            before(i)
            lat = [s * 1000 for s in time_calls(lambda r=r: r.run(x1), 0.0, min_calls=latency_iters)]
            out[i]["latency_ms_p50"] = float(np.percentile(lat, 50))
            out[i]["latency_ms_p99"] = float(np.percentile(lat, 99))
    return out
