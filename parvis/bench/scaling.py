"""`parvis bench scaling`: inference throughput over CPU threads, processes and GPUs."""

from __future__ import annotations

import numpy as np
import torch

from parvis import runtime as rt
from parvis.bench import jobs
from parvis.bench.suites import (
    Progress,
    _check_counts,
    _quiet,
    header,
    prepared_source,
    random_images,
    time_rows,
)
from parvis.errors import ParvisError
from parvis.runtimes import open_runtime
from parvis.runtimes.timing import time_calls


def thread_counts(cores: int) -> list[int]:
    """1, 2, 4, ... up to `cores`, and `cores` itself."""
    out, t = [], 1
    while t < cores:
        out.append(t)
        t *= 2
    return [*out, cores]


def bench_scaling(
    source: str,
    size: int | None = None,
    batch: int = 16,
    threads: list[int] | None = None,
    processes: list[int] | None = None,
    precision: str = "auto",
    seconds: float = 2.0,
    rounds: int = 2,
    progress: Progress = _quiet,
) -> dict:
    """How throughput grows with CPU threads (one process), with processes (N pinned processes with
    cores/N threads each, aggregate img/s), and across GPUs (one process per GPU) when there are several.

    Parallel efficiency = img/s / (cores used x the 1-thread img/s). Rows: {mode, processes,
    threads, cores, img_s, efficiency, ...}; GPU scaling is skipped with a note without 2+ GPUs.
    """
    _check_counts(batch=batch, rounds=rounds)
    cpu = torch.device("cpu")
    core_ids = jobs.usable_core_ids()
    n_cores = len(core_ids)
    threads = sorted(set(threads or thread_counts(n_cores)))
    processes = sorted(set(processes or [n for n in thread_counts(n_cores) if n_cores % n == 0]))
    if threads[0] < 1 or processes[0] < 1:
        raise ParvisError("--threads and --processes need counts of at least 1")
    if processes[-1] > n_cores:
        raise ParvisError(f"--processes {processes[-1]}: more processes than the {n_cores} usable cores")
    resolved = rt.resolve_precision(precision, cpu, "infer")
    notes = []
    rows: list[dict] = []
    with prepared_source(source, size) as (path, meta):
        runtime = "onnxruntime" if path.endswith(".onnx") else "torch"
        prec = "fp32" if runtime == "onnxruntime" else resolved.name
        x = random_images(batch, meta.input_size)
        models = {t: open_runtime(path, runtime, threads=t, precision=prec) for t in threads}
        cands = [{"runtime": runtime, "precision": f"{prec} {t} threads", "rt": models[t], "t": t} for t in threads]
        iters = max(1, _iters_for(models[threads[-1]], x, seconds / max(1, rounds)))
        time_rows(cands, x, rounds, iters, progress)
        one = next((c["img_s"] for c in cands if c["t"] == 1), None)
        for c in cands:
            rows.append(
                {
                    "mode": "threads",
                    "processes": 1,
                    "threads": c["t"],
                    "cores": c["t"],
                    "img_s": c["img_s"],
                    "efficiency": c["img_s"] / (c["t"] * one) if one else None,
                }
            )
        del models, cands
        if one is None:
            notes.append("no 1-thread row: efficiency needs --threads to include 1")
        for n in processes:
            progress(f"{n} process(es)")
            sets = jobs.split_cores(core_ids, n)
            specs = [
                jobs.JobSpec(path, runtime, prec, "cpu", batch, meta.input_size, seconds, len(s), s, label=f"p{i}")
                for i, s in enumerate(sets)
            ]
            res = jobs.run_jobs(specs)
            total = sum(r["img_s"] for r in res)
            rows.append(
                {
                    "mode": "processes",
                    "processes": n,
                    "threads": len(sets[0]),
                    "cores": sum(len(s) for s in sets),
                    "img_s": total,
                    "per_process_img_s": [r["img_s"] for r in res],
                    "efficiency": total / (sum(len(s) for s in sets) * one) if one else None,
                }
            )
        rows += _gpu_scaling(path, runtime, meta, batch, seconds, notes, progress)
    result = header("scaling", source, meta, batch, n_cores, cpu)
    result.update(
        runtime=runtime,
        precision=prec,
        seconds=seconds,
        rounds=rounds,
        usable_cores=n_cores,
        rows=rows,
        notes=notes,
    )
    return result


def _iters_for(model, x: np.ndarray, seconds: float) -> int:
    """Batches that take about `seconds` (from one timed call after a warm-up)."""
    (once,) = time_calls(lambda: model.run(x), 0.0, min_calls=1)
    return max(1, round(seconds / max(1e-6, once)))


def _gpu_scaling(path, runtime, meta, batch, seconds, notes, progress) -> list[dict]:
    gpus = rt.inventory().gpus
    if len(gpus) < 2:
        notes.append(
            "GPU scaling skipped: no CUDA GPU visible" if not gpus else "GPU scaling skipped: only one GPU visible"
        )
        return []
    prec = "fp32" if runtime == "onnxruntime" else rt.resolve_precision("auto", torch.device("cuda", 0), "infer").name
    rows, one = [], None
    for n in range(1, len(gpus) + 1):
        progress(f"{n} GPU(s)")
        specs = [
            jobs.JobSpec(path, runtime, prec, f"cuda:{i}", batch, meta.input_size, seconds, label=f"gpu{i}")
            for i in range(n)
        ]
        res = jobs.run_jobs(specs)
        total = sum(r["img_s"] for r in res)
        one = one or total
        rows.append(
            {
                "mode": "gpus",
                "processes": n,
                "gpus": n,
                "img_s": total,
                "per_process_img_s": [r["img_s"] for r in res],
                "efficiency": total / (n * one),
            }
        )
    return rows
