"""`parvis bench scale-out MODEL INPUT`: the same predict job on every engine, in one run.

Each configuration runs `parvis predict` as users run it, in its own process (start-up, model loading,
Ray's cluster start and actor start-up included in `wall_s`), with overlays off and a fresh output
folder: single-process `--engine local`, `--engine ray` with 1, 2, ... actors (a local Ray instance on
loopback), and `--engine torchrun` with 1, 2, ... ranks. Reported per configuration:

- img_s: images over the job's own loop time (what the engine wrote in summary.json: from the model
  ready to the last result written; for Ray, from the first actor's model ready, its start-up in
  `startup_s`), and img_s_wall: images over the process's whole wall time;
- overhead_ms: per image, (1 / img_s - 1 / img_s of the single process) x 1000: what the engine adds
  to each image (negative when it runs faster);
- peak_rss_mb: the largest summed resident memory of the process and all its descendants (Ray's raylet,
  GCS, workers and actors; torchrun's ranks), sampled every 0.2 s;
- ok: every image has exactly one row (Parquet engines) and the process exited 0.

Configurations take turns once, in the order listed; the machine is shared, so compare within one run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from parvis import runtime as rt
from parvis.engine.predict import expand_inputs
from parvis.errors import ParvisError


def _peak_rss(proc: subprocess.Popen, stop: threading.Event, out: dict) -> None:
    import psutil  # noqa: PLC0415 (Ray's own dependency; only this benchmark samples memory)

    try:
        root = psutil.Process(proc.pid)
    except psutil.NoSuchProcess:
        return
    while not stop.is_set():
        total = 0
        try:
            for p in [root, *root.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    continue
        except psutil.Error:
            break
        out["peak"] = max(out.get("peak", 0), total)
        stop.wait(0.2)


def _run(cmd: list[str], timeout: float, env: dict) -> tuple[int, float, int, str]:
    """(exit code, wall seconds, peak RSS bytes of the process tree, stderr tail)."""
    stop, mem = threading.Event(), {}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    sampler = threading.Thread(target=_peak_rss, args=(proc, stop, mem), daemon=True)
    sampler.start()
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        err = f"timed out after {timeout:.0f} s\n{err}"
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    return proc.returncode, wall, mem.get("peak", 0), (err or "")[-2000:]


def bench_scale_out(
    model: str,
    inputs: list[str],
    actors: list[int] = (1, 2),
    ranks: list[int] = (1, 2),
    batch: int = 16,
    extra: list[str] | None = None,
    timeout: float = 1800,
    progress=None,
) -> dict:
    """`extra`: further `parvis predict` flags (e.g. ["--size", "224"] or ["--weights", FILE])."""
    files = expand_inputs(inputs)
    if not files:
        raise ParvisError(f"no images in {' '.join(inputs)}")
    configs = [("local", 1)] + [("ray", a) for a in actors] + [("torchrun", r) for r in ranks]
    rows = []
    work = Path(tempfile.mkdtemp(prefix="parvis-scale-out-"))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    try:
        for engine, n in configs:
            out = work / f"{engine}-{n}"
            cmd = [sys.executable, "-m", "parvis", "predict", model, *inputs, "--out", str(out), "--batch", str(batch),
                   "--engine", engine, *(extra or [])]  # fmt: skip
            if engine == "local":
                cmd += ["--no-overlays"]
            elif engine == "ray":
                cmd += ["--actors", str(n), "--threads", str(max(1, (os.cpu_count() or 1) // n))]
            else:
                cmd += ["--nproc", str(n)]
            if progress:
                progress(f"{engine} x{n}")
            code, wall, peak, err = _run(cmd, timeout, env)
            summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
            ok = (
                code in (0, 1)
                and bool(summary)
                and summary.get("duplicates", 0) == 0
                and summary.get("missing", 0) == 0
            )
            rows.append({
                "engine": engine, "workers": n, "ok": ok, "exit_code": code, "images": len(files),
                "img_s": summary.get("img_s"), "img_s_wall": round(len(files) / wall, 2), "wall_s": round(wall, 2),
                "peak_rss_mb": round(peak / 2**20, 1), "errors": summary.get("errors"),
                **({"startup_s": summary["startup_s"]} if "startup_s" in summary else {}),
                **({"stderr_tail": err} if not ok else {}),
            })  # fmt: skip
            shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = rows[0]["img_s"]
    for r in rows:
        if base and r["img_s"]:
            r["vs_single_process"] = round(r["img_s"] / base, 3)
            r["overhead_ms"] = round((1 / r["img_s"] - 1 / base) * 1000, 3)
    return {"benchmark": "scale-out", "model": model, "images": len(files), "batch": batch,
            **rt.result_header(torch.device("cpu")), "rows": rows}  # fmt: skip
