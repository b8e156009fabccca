"""Serve a stereo model (checkpoint, artifact or optimize folder) with `parvis serve` and answer val pairs
over HTTP: status, what ran, the disparity's EPE against the ground truth, a proximity plane, latency.

Usage: python benchmarks/stereo_serve_check.py MODEL DATA [--pairs 8] [--plane 16]
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import time

import httpx
import numpy as np
from PIL import Image

from parvis.bench.serve import ServerProcess
from parvis.data.check import open_dataset


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("data")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--plane", type=float, default=16.0)
    args = parser.parse_args()
    ds = open_dataset(args.data, "stereo", "val")
    with ServerProcess([f"stereo={args.model}"]) as server, httpx.Client(base_url=server.url, timeout=60) as c:
        info = c.get("/v1/models/stereo").json()
        print(f"serving {args.model}: {info.get('runtime')} {info.get('precision')}, task {info.get('task')}")
        errors, times = [], []
        for i in range(min(args.pairs, len(ds))):
            left, right, _ = ds.pair_paths(i)
            files = {
                "left": ("l.png", left.read_bytes(), "image/png"),
                "right": ("r.png", right.read_bytes(), "image/png"),
            }
            start = time.perf_counter()
            r = c.post(f"/v1/models/stereo/predict?planes={args.plane:g}", files=files)
            times.append((time.perf_counter() - start) * 1000)
            r.raise_for_status()
            out = r.json()
            got = np.array(Image.open(io.BytesIO(base64.b64decode(out["disparity_png"])))).astype(np.float32) / 256
            truth = ds[i][1].numpy()
            valid = truth > 0
            errors.append(float(np.abs(got - truth)[valid].mean()))
            if i == 0:
                plane = out["planes"][f"{args.plane:g}"]
                span = f"{out['disparity_min']:.1f}..{out['disparity_max']:.1f}"
                print(f"pair {left.name}: HTTP {r.status_code}, disparity {span}"
                      f" px, closer than {args.plane:g} px: {plane['closer_share']:.1%} of pixels")  # fmt: skip
        print(f"{len(errors)} pairs over HTTP: EPE {statistics.mean(errors):.3f} px against the ground truth, "
              f"latency p50 {statistics.median(times):.1f} ms (one client, multipart PNG pair)")  # fmt: skip


if __name__ == "__main__":
    main()
