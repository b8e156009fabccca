"""`parvis demo`: the whole path on the embedded data, written under one folder with an HTML summary.

Generate the shapes data (if absent), train a U-Net segmenter with the automatic settings,
evaluate it, predict a few validation images with overlays, and time fp32 against the automatic
setting for the same model; then write summary.json and index.html.
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path

import torch

from parvis import runtime
from parvis.config import TrainConfig, config_to_dict
from parvis.io import atomic_write_text


def run_demo(
    out: str | Path = "runs/demo",
    data: str | Path = "data/shapes",
    epochs: int = 6,
    size: int = 128,
    model: str = "unet_resnet18",
    quiet: bool = False,
) -> dict:
    from parvis.bench.train import bench_train
    from parvis.data.check import open_dataset
    from parvis.data.loader import DevicePrefetcher, build_loader
    from parvis.data.synth import synthesize
    from parvis.data.transforms import build_transform
    from parvis.engine.evaluate import evaluate
    from parvis.engine.predict import load_trained, predict_files
    from parvis.engine.trainer import train

    out, data = Path(out), Path(data)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def say(msg: str) -> None:
        if not quiet:
            print(f"[demo {time.perf_counter() - t0:5.0f} s] {msg}", flush=True)

    if not (data / "dataset.yaml").exists():
        say(f"generating the shapes data in {data}")
        synthesize(data, n=1000, size=256, progress=False)
    timings["data_s"] = time.perf_counter() - t0

    run = out / "train"
    cfg = TrainConfig(
        task="segmentation",
        model=model,
        data=str(data),
        epochs=epochs,
        size=size,
        batch=16,
        lr=2e-3,
        weight_decay=1e-4,
        warmup_epochs=0.5,
        out=str(run),
    )
    say(f"training {model} for {epochs} epochs at {size} px (precision and layout: auto)")
    train(cfg, quiet=quiet)
    timings["train_s"] = time.perf_counter() - t0 - timings["data_s"]

    say("evaluating best.pt on the validation split")
    device = runtime.default_device()
    precision = runtime.resolve_precision("auto", device, "infer")
    trained = load_trained(run / "best.pt", device)
    meta = trained.meta
    val = open_dataset(data, "segmentation", "val", transform=build_transform("segmentation", False, size))
    loader = build_loader(val, 32, train=False, device=device, mean=meta.mean, std=meta.std)
    metrics = evaluate(trained, DevicePrefetcher(loader, device, meta.mean, meta.std), meta, precision, device)
    atomic_write_text(out / "eval.json", json.dumps(metrics, indent=2) + "\n")

    say("predicting 6 validation images")
    files = sorted((data / "images" / "val").glob("*.jpg"))[:6]
    predictions = predict_files(trained, files, out / "predict", device, precision)

    say("timing fp32 vs auto training steps")
    bench = bench_train(model, size=size, batch=16, steps=3, warmup=1, rounds=1, only=("auto",))
    atomic_write_text(out / "bench-train.json", json.dumps(bench, indent=2) + "\n")
    timings["total_s"] = time.perf_counter() - t0

    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    summary = {
        "model": model,
        "size": size,
        "epochs": epochs,
        "device": str(device),
        "precision": runtime.resolve_precision("auto", device, "train").to_dict(),
        "val": {k: metrics[k] for k in metrics if k.startswith(("miou", "pixel_acc", "iou_", "loss"))},
        "history": history,
        "bench_train": bench["rows"],
        "predictions": predictions,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "config": config_to_dict(cfg),
        "torch": torch.__version__,
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / "index.html", _html(summary, out))
    say(
        f"val mIoU {metrics['miou']:.3f}, pixel accuracy {metrics['pixel_acc']:.3f}; "
        f"summary in {out / 'index.html'} ({timings['total_s']:.0f} s)"
    )
    return summary


def _html(s: dict, out: Path) -> str:
    e = html.escape
    rows = "".join(
        f"<tr><td>{r['epoch']}</td><td>{r['train_loss']:.4f}</td><td>{r['train_img_s']:.1f}</td>"
        f"<td>{r['train_data_wait'] * 100:.0f}%</td><td>{r.get('val_miou', float('nan')):.4f}</td>"
        f"<td>{r.get('val_pixel_acc', float('nan')):.4f}</td></tr>"
        for r in s["history"]
    )
    ious = "".join(f"<tr><td>{e(k[4:])}</td><td>{v:.3f}</td></tr>" for k, v in s["val"].items() if k.startswith("iou_"))
    bench = "".join(
        f"<tr><td>{e(r['config'] + (' = ' + r['resolved'] if 'resolved' in r else ''))}</td><td>{r['img_s']:.1f}</td>"
        f"<td>{r['speedup_vs_fp32']:.2f}x</td></tr>"
        for r in s["bench_train"]
    )
    images = "".join(
        f'<figure><img src="{e(str(Path(p["overlay"]).relative_to(out)))}" width="192">'
        f"<figcaption>{e(Path(p['file']).name)}</figcaption></figure>"
        for p in s["predictions"]
        if "overlay" in p
    )
    prec = s["precision"]
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>parvis demo</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;
padding:3px 8px;text-align:right}} figure{{display:inline-block;margin:4px}}</style></head><body>
<h1>parvis demo: {e(s["model"])} on the shapes data</h1>
<p>{s["size"]} px, {s["epochs"]} epochs on {e(s["device"])}, precision {e(prec["name"])} ({e(prec["reason"])}),
torch {e(s["torch"])}. Val mIoU <b>{s["val"]["miou"]:.4f}</b>, pixel accuracy {s["val"]["pixel_acc"]:.4f}.
Times: {", ".join(f"{k} {v} s" for k, v in s["timings_s"].items())}.</p>
<h2>Training</h2><table><tr><th>epoch</th><th>train loss</th><th>img/s</th><th>data wait</th><th>val mIoU</th>
<th>val pixel acc</th></tr>{rows}</table>
<h2>Per-class IoU</h2><table>{ious}</table>
<h2>Training speed, fp32 vs auto</h2><table><tr><th>config</th><th>img/s</th><th>vs fp32</th></tr>{bench}</table>
<h2>Predictions (overlays)</h2>{images}
</body></html>
"""
