"""Does `parvis predict` overlap decoding with inference? End-to-end images/s vs the limit 1 / (decode
time + inference time per image), all three measured in the same run, in alternating rounds.

    .venv/bin/python benchmarks/predict_overlap.py MODEL IMAGE_DIR [--batch 32] [--rounds 3] [--json OUT]

MODEL: a checkpoint, an .onnx/.pt2 artifact or a `parvis optimize` folder (as `parvis predict` takes).
decode: the predict pipeline's own decode + resize of every file, alone (same thread count);
inference: the model alone over the same batches, already decoded; end to end: `predict_files`
with and without overlay images written. ratio = e2e img/s / (1 / (decode + inference per image)).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from parvis import runtime
from parvis.data.transforms import Normalize, build_transform
from parvis.engine.predict import _decode, expand_inputs, open_predictor, predict_files


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("images")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--decode-threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    cpu = torch.device("cpu")
    model, info = open_predictor(args.model, cpu)
    files = expand_inputs([args.images])
    meta = model.meta
    transform = build_transform(meta.task, False, meta.input_size)
    normalize = Normalize(meta.mean, meta.std, memory_format=runtime.preferred_memory_format(cpu))
    chunks = [files[i : i + args.batch] for i in range(0, len(files), args.batch)]

    def decode_all():
        with ThreadPoolExecutor(args.decode_threads) as pool:
            return [list(pool.map(lambda p: _decode(p, transform), chunk)) for chunk in chunks]

    decoded = decode_all()  # warm-up, and the inputs of the inference-alone timing
    batches = [normalize(torch.stack([d[2] for d in c]).permute(0, 3, 1, 2)) for c in decoded]
    with torch.no_grad():  # the model applies its own precision
        model(batches[0])
    runs = {"decode_s": [], "infer_s": [], "e2e_s": [], "e2e_overlays_s": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            t0 = time.perf_counter()
            decode_all()
            runs["decode_s"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            with torch.no_grad():  # the model applies its own precision
                for b in batches:
                    model(b)
            runs["infer_s"].append(time.perf_counter() - t0)
            for key, overlays in (("e2e_s", False), ("e2e_overlays_s", True)):
                stats: dict = {}
                predict_files(
                    model, files, Path(tmp) / f"{key}{r}", cpu, args.batch, args.decode_threads,
                    overlays=overlays, stats=stats,
                )  # fmt: skip
                runs[key].append(stats["wall_s"])
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in runs.items()), file=sys.stderr)
    n = len(files)
    med = {k: statistics.median(v) for k, v in runs.items()}
    limit = n / (med["decode_s"] + med["infer_s"])
    result = {
        "benchmark": "predict-overlap",
        "model": args.model,
        "runtime": info,
        "images": n,
        "image_dir": args.images,
        "input_size": meta.input_size,
        "batch": args.batch,
        "decode_threads": args.decode_threads,
        "cores": runtime.usable_cores(),
        "torch": torch.__version__,
        "rounds": args.rounds,
        "runs_s": runs,
        "decode_ms_per_image": 1000 * med["decode_s"] / n,
        "infer_ms_per_image": 1000 * med["infer_s"] / n,
        "limit_img_s": limit,
        "e2e_img_s": n / med["e2e_s"],
        "e2e_overlays_img_s": n / med["e2e_overlays_s"],
        "ratio": n / med["e2e_s"] / limit,
        "ratio_with_overlays": n / med["e2e_overlays_s"] / limit,
    }
    print(
        f"{n} images, {result['runtime']['runtime']} {result['runtime']['precision']}: "
        f"decode {result['decode_ms_per_image']:.2f} ms/img + inference {result['infer_ms_per_image']:.2f} ms/img "
        f"-> limit {limit:.1f} img/s; end to end {result['e2e_img_s']:.1f} img/s = {result['ratio']:.2f}x the limit "
        f"({result['e2e_overlays_img_s']:.1f} img/s = {result['ratio_with_overlays']:.2f}x with overlay images)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
