"""The models-from-anywhere checks, measured: what parvis answers vs what plain torchvision / ONNX Runtime
answer on the same inputs, and what a served model answers over HTTP.

    python benchmarks/loading_checks.py photos PHOTOS_DIR WEIGHTS OPTIMIZE_DIR  # mobilenet_v2: fp32, optimized, HTTP
    python benchmarks/loading_checks.py foreign                                 # 16 concurrent KServe v2 calls

Each prints one JSON document (the run_loading.sh script saves them under benchmarks/results/).
"""

from __future__ import annotations

import json
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import torch

import parvis
from parvis.bench.serve import ServerProcess


def photos(folder: str, weights: str, optimized: str) -> dict:
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    fp32 = parvis.load("torchvision:mobilenet_v2", weights=weights, precision="fp32")
    best = parvis.load(optimized)
    ref = {p.name: fp32.predict(str(p))["class_name"] for p in files}
    opt = {p.name: best.predict(str(p))["class_name"] for p in files}
    with ServerProcess([f"mobilenet={optimized}"]) as proc, httpx.Client(base_url=proc.url, timeout=120) as client:
        served = {
            p.name: client.post("/v1/models/mobilenet/predict", content=p.read_bytes(),
                                headers={"content-type": f"image/{p.suffix.lstrip('.').lower()}"}).json()["class_name"]
            for p in files
        }  # fmt: skip
    return {
        "images": len(files),
        "optimized": best.info,
        "top1_agreement_optimized_vs_fp32": sum(opt[k] == ref[k] for k in ref) / len(ref),
        "http_equal_to_optimized": sum(served[k] == opt[k] for k in ref) / len(ref),
        "http_equal_to_fp32": sum(served[k] == ref[k] for k in ref) / len(ref),
        "labels": {k: {"fp32": ref[k], "optimized": opt[k], "http": served[k]} for k in sorted(ref)},
    }


class TwoHeads(torch.nn.Module):
    """A non-image model with two inputs and two outputs, exported by plain torch.onnx (no parvis metadata)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(4, 3), torch.nn.Linear(6, 2)

    def forward(self, x, y):
        return self.a(x).relu(), self.b(y.flatten(1)) + x[:, :2]


def foreign() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "two.onnx"
        torch.manual_seed(0)
        batch = torch.export.Dim("batch")
        torch.onnx.export(TwoHeads().eval(), (torch.randn(2, 4), torch.randn(2, 2, 3)), str(path),
                          input_names=["x", "y"], output_names=["p", "q"], dynamo=True, verbose=False,
                          dynamic_shapes={"x": {0: batch}, "y": {0: batch}})  # fmt: skip
        session = ort.InferenceSession(str(path))
        rng = np.random.default_rng(0)
        inputs = [
            (rng.standard_normal((1, 4), np.float32), rng.standard_normal((1, 2, 3), np.float32)) for _ in range(16)
        ]
        with ServerProcess([str(path), "--max-queue-delay-ms", "20"]) as proc:
            with httpx.Client(base_url=proc.url, timeout=60) as client:

                def call(xy):
                    x, y = xy
                    body = {"inputs": [
                        {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": x.ravel().tolist()},
                        {"name": "y", "shape": [1, 2, 3], "datatype": "FP32", "data": y.ravel().tolist()},
                    ]}  # fmt: skip
                    return client.post("/v1/models/two/infer", json=body)

                with ThreadPoolExecutor(16) as pool:
                    answers = list(pool.map(call, inputs))
                metrics = client.get("/metrics").text
        errors = []
        for (x, y), r in zip(inputs, answers, strict=True):
            outs = {o["name"]: np.asarray(o["data"], np.float32).reshape(o["shape"]) for o in r.json()["outputs"]}
            p, q = session.run(None, {"x": x, "y": y})
            errors.append(max(float(np.abs(outs["p"] - p).max()), float(np.abs(outs["q"] - q).max())))
        sizes = [int(r.headers["x-batch-size"]) for r in answers]
        hist = [line for line in metrics.splitlines() if line.startswith("parvis_batch_size") and "_count" in line]
        return {"requests": len(answers), "status": sorted({r.status_code for r in answers}),
                "max_abs_diff_vs_onnxruntime": max(errors), "batch_sizes_seen": sorted(set(sizes)),
                "max_batch": max(sizes), "metrics_batch_size_count": hist}  # fmt: skip


if __name__ == "__main__":
    what = sys.argv[1]
    result = photos(*sys.argv[2:5]) if what == "photos" else foreign()
    print(json.dumps(result, indent=2))
