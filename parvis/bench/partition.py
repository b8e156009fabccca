"""`parvis bench partition`: K concurrent jobs, each confined to 1/K of the device, vs one job alone.

The question it answers: when one machine serves K models (or K tenants) side by side, how much of
the throughput a job would have alone does each keep? CPU: K processes pinned with
`os.sched_setaffinity` to disjoint core sets, torch threads = cores per job. GPU: one job per MIG
instance, or K MPS clients each limited to 100/K % of the SMs when an MPS daemon runs. Three runs,
each a fixed window after a shared start barrier (see `parvis.bench.jobs`):

- solo: one job on the whole device (CPU: all usable cores);
- alone on its share: one job confined to one share with the rest idle (the interference baseline);
- concurrent: K jobs at once, one per share.

Each concurrent job's `kept_vs_solo` is its img/s over solo's (1/K is a fair split of a device that
scales linearly); `kept_vs_alone_same_share` is its img/s over the alone-on-its-share run (1.0 means
the neighbours cost nothing: no shared cache, memory bandwidth or clock loss).
"""

from __future__ import annotations

import os

from parvis import runtime as rt
from parvis.bench import jobs
from parvis.bench.suites import Progress, _check_counts, _quiet, header, prepared_source
from parvis.errors import ParvisError


def mps_daemon_running() -> bool:
    """Whether an NVIDIA MPS control daemon is listening (its pipe directory holds a `control` pipe)."""
    # A hardware question that belongs beside the MIG inventory in parvis.runtime; kept here until it moves.
    pipe_dir = os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps")
    return os.path.exists(os.path.join(pipe_dir, "control"))


def gpu_plan(gpu: rt.GPUInfo, k: int, mps: bool) -> tuple[str | None, list[dict[str, str]], str]:
    """(mode, per-job environment, note) for partitioning `gpu` into `k` shares; mode None: not possible."""
    where = f"cuda:{gpu.index} ({gpu.name})"
    if gpu.mig_instances:
        if len(gpu.mig_instances) < k:
            return None, [], f"{where} has {len(gpu.mig_instances)} MIG instance(s), fewer than --jobs {k}"
        envs = [{"CUDA_VISIBLE_DEVICES": inst.uuid} for inst in gpu.mig_instances[:k]]
        profiles = ", ".join(inst.profile for inst in gpu.mig_instances[:k])
        note = (
            f"MIG instances {profiles}; in MIG mode no job can use the whole GPU, so solo is one job alone on "
            "the first instance"
        )
        return "mig", envs, note
    if mps:
        pct = max(1, 100 // k)
        envs = [{"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(pct)} for _ in range(k)]
        return "mps", envs, f"MPS: each job limited to {pct}% of the SMs of {where}"
    return (
        None,
        [],
        f"{where} has no MIG instances and no MPS daemon runs, so it cannot be partitioned; enable MIG or start "
        "nvidia-cuda-mps-control -d, or pass --device cpu to partition the CPU",
    )


def bench_partition(
    source: str,
    size: int | None = None,
    batch: int = 8,
    jobs_k: int = 2,
    seconds: float = 5.0,
    precision: str = "auto",
    device: str = "auto",
    alone: bool = True,
    progress: Progress = _quiet,
) -> dict:
    """K concurrent confined jobs vs one job alone on the whole device (and alone on one share).

    Rows: one per concurrent job {job, share, threads, img_s, kept_vs_solo, kept_vs_alone_same_share};
    also `solo`, `alone_same_share`, `aggregate_img_s`, `aggregate_vs_solo`. Raises a ParvisError
    naming the reason when the device cannot be partitioned (a GPU without MIG or MPS).
    """
    _check_counts(batch=batch, jobs=jobs_k)
    if seconds <= 0:
        raise ParvisError(f"--seconds {seconds}: must be positive")
    dev = rt.resolve_device(device)
    notes: list[str] = []
    with prepared_source(source, size) as (path, meta):
        runtime = "onnxruntime" if path.endswith(".onnx") else "torch"
        prec = "fp32" if runtime == "onnxruntime" else rt.resolve_precision(precision, dev, "infer").name

        def spec(label, device_name, threads=None, cores=None, env=None) -> jobs.JobSpec:
            return jobs.JobSpec(
                path, runtime, prec, device_name, batch, meta.input_size, seconds, threads, cores, env or {}, 1.0, label
            )

        if dev.type == "cpu":
            mode, share_kind = "cpu-affinity", "cores"
            cores = jobs.usable_core_ids()
            sets = jobs.split_cores(cores, jobs_k)
            if len({len(s) for s in sets}) > 1:
                notes.append(f"{len(cores)} cores do not split evenly into {jobs_k}: shares differ by one core")
            solo = spec("solo", "cpu", len(cores), cores)
            alone_spec = spec("alone", "cpu", len(sets[0]), sets[0])
            concurrent = [spec(f"job{i}", "cpu", len(s), s) for i, s in enumerate(sets)]
            shares = [jobs.core_label(s) for s in sets]
            threads = len(sets[0])
        elif dev.type == "cuda":
            gpu = rt.gpu_for(dev)
            mode, envs, note = gpu_plan(gpu, jobs_k, mps_daemon_running())
            if mode is None:
                raise ParvisError(note)
            notes.append(note)
            share_kind = "MIG instance" if mode == "mig" else "MPS share"
            whole = "cuda" if mode == "mig" else str(dev)
            solo = spec("solo", whole, env=envs[0] if mode == "mig" else {})
            alone_spec = spec("alone", whole, env=envs[0])
            concurrent = [spec(f"job{i}", whole, env=e) for i, e in enumerate(envs)]
            shares = [next(iter(e.values())) for e in envs]
            threads = None
        else:
            raise ParvisError(f"--device {dev}: partitioning is implemented for the CPU and CUDA GPUs")

        progress("solo job on the whole device")
        solo_res = jobs.run_jobs([solo])[0]
        alone_res = None
        if alone:
            progress(f"one job alone on its share ({shares[0]})")
            alone_res = jobs.run_jobs([alone_spec])[0]
        progress(f"{jobs_k} concurrent jobs")
        results = jobs.run_jobs(concurrent)
    rows = []
    for i, r in enumerate(results):
        rows.append(
            {
                "job": i,
                "share": shares[i],
                "threads": r["threads"],
                "img_s": r["img_s"],
                "batches": r["batches"],
                "kept_vs_solo": r["img_s"] / solo_res["img_s"],
                "kept_vs_alone_same_share": r["img_s"] / alone_res["img_s"] if alone_res else None,
            }
        )
    aggregate = sum(r["img_s"] for r in rows)
    result = header("partition", source, meta, batch, threads, dev)
    result.update(
        mode=mode,
        share_kind=share_kind,
        jobs=jobs_k,
        runtime=runtime,
        precision=prec,
        seconds=seconds,
        solo={
            "share": "all" if mode != "mig" else shares[0],
            "threads": solo_res["threads"],
            "img_s": solo_res["img_s"],
        },
        alone_same_share=(
            {"share": shares[0], "threads": alone_res["threads"], "img_s": alone_res["img_s"]} if alone_res else None
        ),
        aggregate_img_s=aggregate,
        aggregate_vs_solo=aggregate / solo_res["img_s"],
        fair_share=1 / jobs_k,
        rows=rows,
        notes=notes,
    )
    return result
