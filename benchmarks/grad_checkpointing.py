"""Saved-activation bytes and step time of a training step with and without encoder gradient
checkpointing, side by side in one process (the training issue: U-Net-ResNet50, 256 px, batch 8).

Bytes are counted with torch.autograd.graph.saved_tensors_hooks: every tensor autograd keeps for
backward, counted once per storage. Usage: .venv/bin/python benchmarks/grad_checkpointing.py [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from parvis import runtime
from parvis.models import build_model


def saved_bytes(model, x, y) -> int:
    seen: dict[tuple, int] = {}

    def pack(t):
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            storage = t.untyped_storage()
            seen[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with runtime.autocast(runtime.resolve_precision("auto", torch.device("cpu"), "train")):
            loss = model.loss(model(x), y)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


def step_seconds(model, x, y, steps: int) -> float:
    precision = runtime.resolve_precision("auto", torch.device("cpu"), "train")
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        with runtime.autocast(precision):
            loss = model.loss(model(x), y)
        loss.backward()
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="unet_resnet50")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    torch.manual_seed(0)
    model = build_model(a.model, 6, [f"c{i}" for i in range(6)], input_size=a.size)
    model = model.to(memory_format=torch.channels_last)
    model.train()
    x = torch.randn(a.batch, 3, a.size, a.size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 6, (a.batch, a.size, a.size))
    rows = {}
    step_seconds(model, x, y, 1)  # warm-up
    for _ in range(2):  # alternate, so drift on a shared machine hits both alike
        for enabled in (False, True):
            model.set_grad_checkpointing(enabled)
            row = rows.setdefault(enabled, {"saved_mib": saved_bytes(model, x, y) / 2**20, "step_s": []})
            row["step_s"].append(step_seconds(model, x, y, a.steps))
    off, on = rows[False], rows[True]
    result = {
        "model": a.model,
        "size": a.size,
        "batch": a.batch,
        "saved_activations_mib_off": round(off["saved_mib"], 1),
        "saved_activations_mib_on": round(on["saved_mib"], 1),
        "saved_activations_reduction": round(1 - on["saved_mib"] / off["saved_mib"], 3),
        "step_s_off": round(statistics.median(off["step_s"]), 3),
        "step_s_on": round(statistics.median(on["step_s"]), 3),
        "step_time_ratio_on_vs_off": round(statistics.median(on["step_s"]) / statistics.median(off["step_s"]), 3),
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
