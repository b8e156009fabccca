"""What one Bi3D-style proximity plane costs against a dense inference of the same stereo network, by
pair size, and where the plane path's time goes (the two-view encoder, the plane head). Weights do not
change the compute, so a fresh stereonet_small is timed; `parvis bench stereo` measures a trained one on
its val pairs.

    python benchmarks/stereo_plane_cost.py --sizes 128x256,256x512 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from parvis import runtime
from parvis.models.build import build_model


def median_ms(fn, reps: int = 15, warmup: int = 3) -> float:
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="128x256,256x512", help="pair sizes HxW, comma-separated")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cpu = runtime.inventory().cpu
    print(f"stereonet_small, batch 1, eager fp32, {args.threads} threads, {cpu.model} ({', '.join(cpu.features)})")
    model = build_model("stereonet_small", 1).eval()
    for spec in args.sizes.split(","):
        h, w = (int(v) for v in spec.split("x"))
        pair = torch.randn(1, 6, h, w)
        padded, _, _ = model._pad(pair)
        dense = median_ms(lambda pair=pair: model(pair))
        plane = median_ms(lambda pair=pair: model.forward_planes(pair, [16.0]))
        encode = median_ms(lambda padded=padded: model.encode(padded))
        print(f"{h}x{w}: dense {dense:.1f} ms, one plane {plane:.1f} ms = {plane / dense:.2f}x "
              f"(the two-view encoder {encode:.1f} ms = {encode / dense:.2f}x of the dense)")  # fmt: skip


if __name__ == "__main__":
    main()
