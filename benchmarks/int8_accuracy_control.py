"""parvis's accuracy-aware INT8 against NNCF's quantize_with_accuracy_control, same model, budget, data and clock.

    python benchmarks/int8_accuracy_control.py runs/demo/detection/best.pt data/shapes --budget 1.0

1. `parvis optimize` with torch fp32 / bf16, ONNX Runtime INT8 and OpenVINO INT8 (which brings NNCF's plain
   `nncf.quantize` row): when full INT8 is over budget, its mixed-precision search runs (timed inside optimize).
2. NNCF's `quantize_with_accuracy_control` on the same fp32 ONNX graph, the same 128 calibration images, the
   validation split as its validation set and the same metric (parvis's COCO mAP@0.5 / top-1 / mIoU scorer),
   max_drop = the budget (absolute): timed from the call to its return.
3. Every resulting model scored on the whole validation split and timed side by side in one round-robin (batch 32,
   all cores): eager and torch.compile bf16 (the best non-INT8 rows on this CPU; "vs best bf16" divides by the
   faster), ONNX Runtime plain INT8 and mixed, OpenVINO mixed, NNCF plain, NNCF accuracy-control in ONNX Runtime
   and in OpenVINO.

Writes benchmarks/results/int8-accuracy-control-<model>-<device>-<versions>.json and .md (the table).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path

import onnx
import torch

from parvis import runtime as rt
from parvis.artifact import read_metadata
from parvis.engine.loading import load_model
from parvis.export import export_model
from parvis.optimize import optimize, score, validation_batches
from parvis.quantize import calibration_feeds, quantize_onnx
from parvis.runtimes import open_runtime
from parvis.runtimes.timing import time_runtimes


def qwac(src: Path, out: Path, feeds: list[dict], val, meta, metric: str, budget: float) -> float:
    """NNCF's accuracy-control quantization of the ONNX file `src` into `out`; returns its seconds."""
    rt.quiet_cuda_home_notice()
    import nncf  # noqa: PLC0415 - the peer

    nncf.set_log_level(logging.ERROR)
    samples = [{k: v[i : i + 1] for k, v in f.items()} for f in feeds for i in range(len(next(iter(f.values()))))]

    def validate(model, _items) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "m.onnx"
            onnx.save(model, str(path))
            opened = open_runtime(str(path), "onnxruntime", precision="fp32", threads=rt.usable_cores(), given=None)
            return float(score(opened, val, meta)[metric])

    start = time.perf_counter()
    model = nncf.quantize_with_accuracy_control(
        onnx.load(str(src)),
        nncf.Dataset(samples),
        nncf.Dataset([0]),  # validate() scores the cached validation split itself
        validate,
        max_drop=budget / 100,
        drop_type=nncf.DropType.ABSOLUTE,
        subset_size=len(samples),
    )
    seconds = time.perf_counter() - start
    onnx.save(model, str(out))
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("data")
    parser.add_argument("--budget", type=float, default=1.0)
    parser.add_argument("--calib", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    threads = rt.usable_cores()
    work = Path(tempfile.mkdtemp(prefix="int8-ac-"))
    model = load_model(args.checkpoint)
    meta = model.meta
    fp32 = work / "fp32.onnx"
    export_model(model, fp32, "onnx")
    print(
        "1/3 parvis optimize (plain INT8, the mixed-precision search when over budget, NNCF's plain INT8)", flush=True
    )
    pairs = [("torch", "fp32"), ("torch", "bf16"), ("onnxruntime", "int8"), ("openvino", "int8")]
    start = time.perf_counter()
    result = optimize(args.checkpoint, args.data, work / "optimize", budget=args.budget, pairs=pairs,
                      calib=args.calib, rounds=args.rounds, progress=lambda m: print("  " + m, flush=True))  # fmt: skip
    optimize_s = time.perf_counter() - start
    metric = result["metric_name"]
    search = result["int8_search"].get("base")
    val = validation_batches(meta, args.data)
    meta_onnx = read_metadata(fp32)
    feeds, _ = calibration_feeds(fp32, meta_onnx, args.data, args.calib)

    print("2/3 NNCF quantize_with_accuracy_control", flush=True)
    qwac_path = work / "qwac.onnx"
    qwac_s = qwac(fp32, qwac_path, feeds, val, meta, metric, args.budget)
    # carry parvis's metadata so its runtimes open the file like the others
    carried = work / "qwac-meta.onnx"
    qwac_model = onnx.load(str(qwac_path))
    source = onnx.load(str(fp32))
    del qwac_model.metadata_props[:]
    qwac_model.metadata_props.extend(source.metadata_props)
    onnx.save(qwac_model, str(carried))

    print("3/3 scoring and timing every result side by side", flush=True)
    files = {"ort-plain": work / "plain.onnx"}
    quantize_onnx(fp32, files["ort-plain"], args.data, n=args.calib)
    if search and search.get("float_onnx_nodes"):
        files["mixed"] = work / "mixed.onnx"
        quantize_onnx(fp32, files["mixed"], args.data, n=args.calib, exclude=tuple(search["float_onnx_nodes"]))
    from parvis.quantize import quantize_nncf  # noqa: PLC0415 - after the peer's import

    files["nncf"] = work / "nncf.onnx"
    quantize_nncf(fp32, files["nncf"], feeds)
    rows = [(f"{name} bf16 (checkpoint)", open_runtime(args.checkpoint, name, precision="bf16", threads=threads))
            for name in ("torch", "torch-compile")]  # fmt: skip
    rows.append(("onnxruntime int8 (parvis QDQ, full)", open_runtime(str(files["ort-plain"]), "onnxruntime",
                                                                      precision="int8", threads=threads)))  # fmt: skip
    if "mixed" in files:
        for name in ("onnxruntime", "openvino"):
            label = f"{name} int8 mixed (parvis, {len(search['float_onnx_nodes'])} float)"
            rows.append((label, open_runtime(str(files["mixed"]), name, precision="int8", threads=threads)))
    rows.append(("openvino int8 (nncf.quantize)", open_runtime(str(files["nncf"]), "openvino", precision="int8",
                                                               threads=threads)))  # fmt: skip
    for name in ("onnxruntime", "openvino"):
        rows.append((f"{name} int8 (nncf accuracy control)", open_runtime(str(carried), name, precision="int8",
                                                                           threads=threads)))  # fmt: skip
    baseline = result["baseline_metric"]
    images = torch.cat([b.images for b in val])
    x = images[torch.arange(32) % len(images)].contiguous().numpy()
    speeds = time_runtimes([r for _, r in rows], x, args.rounds, 3, 20, lambda _: None, [n for n, _ in rows])
    table = []
    for (name, opened), speed in zip(rows, speeds, strict=True):
        value = float(score(opened, val, meta)[metric])
        table.append({
            "model": name, metric: round(value, 4), "drop_points": round((baseline - value) * 100, 2),
            "img_s": round(speed["img_s"], 1), "latency_ms_p50": round(speed["latency_ms_p50"], 2),
        })  # fmt: skip
    bf16 = max(table[0]["img_s"], table[1]["img_s"])  # the faster of eager and compiled bf16
    for row in table:
        row["vs_best_bf16"] = round(row["img_s"] / bf16, 2)
    out = {
        "benchmark": "int8-accuracy-control",
        "checkpoint": args.checkpoint,
        "data": args.data,
        "model": meta.name,
        "metric": metric,
        "budget_points": args.budget,
        "fp32_metric": baseline,
        "validation_images": len(images),
        "calibration_images": args.calib,
        **rt.result_header(torch.device("cpu")),
        "python": platform.python_version(),
        "versions": {p: importlib.metadata.version(p) for p in ("torch", "onnxruntime", "openvino", "nncf")},
        "tuning_seconds": {
            "parvis_mixed_search": search["seconds"] if search else None,
            "parvis_optimize_total": round(optimize_s, 1),
            "nncf_accuracy_control": round(qwac_s, 1),
        },
        "parvis_search": search,
        "rows": table,
    }
    tag = f"{meta.name}-cpu-{threads}core-pt{torch.__version__.split('+')[0]}"
    dest = Path(args.out)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / f"int8-accuracy-control-{tag}.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [
        f"| model | {metric} | drop (points) | img/s (batch 32) | vs best bf16 | p50 ms (batch 1) |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['model']} | {r[metric]:.4f} | {r['drop_points']:+.2f} | {r['img_s']:.1f} | "
              f"{r['vs_best_bf16']:.2f}x | {r['latency_ms_p50']:.2f} |" for r in table]  # fmt: skip
    t = out["tuning_seconds"]
    lines += ["", f"fp32 {metric} {baseline:.4f}, budget {args.budget:g} point(s), {len(images)} validation images, "
              f"{args.calib} calibration images; tuning: parvis mixed search {t['parvis_mixed_search']} s "
              f"(optimize in all {t['parvis_optimize_total']} s), NNCF accuracy control "
              f"{t['nncf_accuracy_control']} s"]  # fmt: skip
    (dest / f"int8-accuracy-control-{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
