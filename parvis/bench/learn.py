"""`parvis bench learn`: accuracy against wall-clock time, parvis's `recipe=auto` vs a plain PyTorch loop.

Both sides train the same network (by parvis's registry name) on the same dataset folder with the
same threads and loader workers, one after the other, for the same time budget. parvis runs
`parvis train --time T` (every other choice auto's); the peer is benchmarks/peer_train.py, a plain
loop with torchvision's reference recipe (SGD, its augmentations, cosine or poly schedule), given
the input size, batch, precision and layout parvis resolved, so what differs is the recipe and the
engine. After every epoch each side records its val metric with its training seconds so far
(evaluation excluded on both sides). Reported: each curve, the final metric, the seconds to a
`--target` metric, and the seconds parvis needed to reach the peer's final metric, as a fraction
of the peer's training time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from parvis import runtime
from parvis.config import TrainConfig, load_config, parse_duration
from parvis.engine.trainer import MONITOR, train
from parvis.errors import ParvisError

PEER_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "peer_train.py"


def time_to(curve: list[dict], target: float | None) -> float | None:
    """Training seconds at the first point whose metric reaches `target` (None: never, or no target)."""
    if target is None:
        return None
    return next((p["seconds"] for p in curve if p["metric"] >= target), None)


def bench_learn(
    task: str,
    model: str,
    data: str | Path,
    budget: str = "3m",
    target: float | None = None,
    out: str | Path | None = None,
    peer: str | Path | None = None,
    overrides: tuple[str, ...] = (),
    quiet: bool = True,
) -> dict:
    if task not in ("classification", "segmentation"):
        raise ParvisError(f"--task {task}: bench learn compares classification or segmentation (the peer's recipes)")
    seconds = parse_duration(budget, "--time")
    peer_script = Path(peer) if peer else PEER_SCRIPT
    if not peer_script.is_file():
        raise ParvisError(f"{peer_script}: the peer loop is not there; pass --peer benchmarks/peer_train.py "
                          "from the parvis repository")  # fmt: skip
    work = Path(out) if out else Path(tempfile.mkdtemp(prefix="parvis-learn-"))
    work.mkdir(parents=True, exist_ok=True)
    if (work / "parvis" / "last.pt").exists():
        raise ParvisError(f"{work}: holds an earlier bench learn run; choose another --out or delete it")
    metric = MONITOR[task]
    threads = torch.get_num_threads()

    values = {"task": task, "model": model, "data": str(data), "time": budget, "out": str(work / "parvis")}
    cfg = load_config(TrainConfig, overrides=overrides, values=values)
    start = time.perf_counter()
    train(cfg, quiet=quiet)
    parvis_wall = time.perf_counter() - start
    history = [json.loads(line) for line in (work / "parvis" / "metrics.jsonl").read_text().splitlines()]
    resolved = load_config(TrainConfig, work / "parvis" / "config.yaml")
    auto = [x[2:] for x in (work / "parvis" / "config.yaml").read_text().splitlines() if x.startswith("# auto")]
    workers = resolved.workers
    if workers is None:
        workers = runtime.recommended_workers(runtime.default_device(), 1)
    curve = [{"seconds": round(r["train_s"], 2), "epoch": r["epoch"], "metric": round(r[f"val_{metric}"], 4)}
             for r in history if f"val_{metric}" in r]  # fmt: skip
    precision = runtime.resolve_precision(resolved.precision, runtime.default_device(), "train").name
    parvis_side = {
        "recipe": "recipe=auto",
        "auto": auto,
        "size": resolved.size,
        "batch": resolved.batch,
        "epochs": resolved.epochs,
        "precision": precision,
        "curve": curve,
        "final_metric": curve[-1]["metric"] if curve else None,
        "train_s": history[-1]["train_s"] if history else None,
        "wall_s": round(parvis_wall, 1),
        "img_s": _mean_img_s(history),
    }

    peer_json = work / "peer.json"
    cmd = [sys.executable, str(peer_script), "--task", task, "--model", model, "--data", str(data),
           "--size", str(resolved.size), "--batch", str(resolved.batch), "--time", str(seconds),
           "--threads", str(threads), "--workers", str(workers), "--json", str(peer_json),
           "--precision", "bf16" if precision == "bf16" else "fp32"]  # fmt: skip
    if resolved.stem != "imagenet":  # the same network: parvis's small-input stem on both sides
        cmd += ["--stem", resolved.stem]
    cmd.append("--channels-last" if runtime.preferred_memory_format(runtime.default_device()) == torch.channels_last
               else "--no-channels-last")  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=quiet, text=True)
    if done.returncode != 0:
        tail = (done.stderr or "").strip().splitlines()[-1:] if quiet else []
        raise ParvisError(f"the peer loop failed (exit {done.returncode}): {' '.join(tail) or 'see its output above'}")
    peer_side = json.loads(peer_json.read_text())
    peer_side["wall_s"] = round(time.perf_counter() - start, 1)

    peer_final = peer_side["final_metric"]
    reach = time_to(curve, peer_final)
    parvis_side["time_to_target_s"] = time_to(curve, target)
    peer_side["time_to_target_s"] = time_to(peer_side["curve"], target)
    parvis_side["time_to_peer_final_s"] = reach
    rows = [
        {"engine": "parvis", "recipe": "auto", "final_metric": parvis_side["final_metric"],
         "train_s": parvis_side["train_s"], "img_s": parvis_side["img_s"],
         "time_to_target_s": parvis_side["time_to_target_s"], "time_to_peer_final_s": reach,
         "vs_peer_time": reach / peer_side["train_s"] if reach is not None else None},
        {"engine": "peer", "recipe": "torchvision reference", "final_metric": peer_final,
         "train_s": peer_side["train_s"], "img_s": peer_side["img_s"],
         "time_to_target_s": peer_side["time_to_target_s"], "time_to_peer_final_s": peer_side["train_s"],
         "vs_peer_time": 1.0},
    ]  # fmt: skip
    return {
        "benchmark": "learn",
        "task": task,
        "model": model,
        "data": str(data),
        "metric": metric,
        "time": budget,
        "target": target,
        "threads": threads,
        "workers": workers,
        "device": str(runtime.default_device()),
        "torch": torch.__version__,
        "parvis": parvis_side,
        "peer": peer_side,
        "rows": rows,
        "out": str(work),
    }


def _mean_img_s(history: list[dict]) -> float | None:
    rates = [r["train_img_s"] for r in history if r.get("train_img_s")]
    return round(sum(rates) / len(rates), 1) if rates else None
