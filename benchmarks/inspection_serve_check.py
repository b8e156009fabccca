"""Serve an inspection model (checkpoint, artifact or optimize folder) with `parvis serve` and send it the
test split's parts over HTTP: what ran, the OK/NG decisions against the truth (false-reject and escape
rates), the heat map's size, and latency.

Usage: python benchmarks/inspection_serve_check.py MODEL DATA [--parts 40]
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import time

import httpx
from PIL import Image

from parvis.bench.serve import ServerProcess
from parvis.data.inspection import InspectionDataset


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("data")
    parser.add_argument("--parts", type=int, default=40, help="images of the test split, good and defective alike")
    args = parser.parse_args()
    ds = InspectionDataset(args.data, "test")
    step = max(1, len(ds) // args.parts)
    picked = list(range(0, len(ds), step))[: args.parts]
    with ServerProcess([f"insp={args.model}"]) as server, httpx.Client(base_url=server.url, timeout=60) as c:
        info = c.get("/v1/models/insp").json()
        print(f"serving {args.model}: {info.get('runtime')} {info.get('precision')}, task {info.get('task')}")
        times, rejected_good, good, escaped, bad = [], 0, 0, 0, 0
        for n, i in enumerate(picked):
            body = ds.paths[i].read_bytes()
            start = time.perf_counter()
            r = c.post("/v1/models/insp/predict", content=body, headers={"content-type": "image/png"})
            times.append((time.perf_counter() - start) * 1000)
            r.raise_for_status()
            out = r.json()
            ng = out["decision"] == "NG"
            if ds.labels[i]:
                bad, escaped = bad + 1, escaped + (not ng)
            else:
                good, rejected_good = good + 1, rejected_good + ng
            if n == 0:
                heat = Image.open(io.BytesIO(base64.b64decode(out["heatmap_png"])))
                print(f"{ds.relative_name(i)}: HTTP {r.status_code}, score {out['score']:.4g}, threshold "
                      f"{out['threshold']:.4g}, {out['decision']}, heat map {heat.size[0]}x{heat.size[1]} "
                      f"{heat.mode} (255 = {out['heatmap_scale']:.4g})")  # fmt: skip
        print(f"{len(picked)} parts over HTTP ({good} good, {bad} defective): false-reject "
              f"{rejected_good / max(good, 1):.1%}, escape {escaped / max(bad, 1):.1%}, latency p50 "
              f"{statistics.median(times):.1f} ms (one client, PNG body)")  # fmt: skip


if __name__ == "__main__":
    main()
