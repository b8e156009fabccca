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
from parvis.bench.train import bench_train
from parvis.config import TrainConfig, config_to_dict
from parvis.data.synth import synthesize
from parvis.engine.evaluate import evaluate_checkpoint
from parvis.engine.predict import predict_files
from parvis.engine.trainer import train
from parvis.io import atomic_write_text
from parvis.runtimes import open_predictor

SEGMENTATION_RECIPE = dict(
    task="segmentation", batch=16, lr=3e-3, weight_decay=1e-4, warmup_epochs=0.2, crop_scale=(0.6, 1.0)
)
CLASSIFICATION_RECIPE = dict(
    task="classification",
    batch=64,
    lr=3e-3,
    weight_decay=0.05,
    warmup_epochs=1.0,
    label_smoothing=0.1,
    crop_scale=(0.6, 1.0),
)


def run_demo(
    out: str | Path = "runs/demo",
    data: str | Path = "data/shapes",
    epochs: int = 8,
    size: int = 64,
    model: str = "unet_small",
    classifier: str = "resnet18",
    classifier_epochs: int = 2,
    quiet: bool = False,
) -> dict:
    out, data = Path(out), Path(data)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def say(msg: str) -> None:
        if not quiet:
            print(f"[demo {time.perf_counter() - t0:5.0f} s] {msg}", flush=True)

    def lap(name: str, start: float) -> float:
        now = time.perf_counter()
        timings[name] = now - start
        return now

    if not (data / "dataset.yaml").exists():
        say(f"generating the shapes data in {data}")
        synthesize(data, n=4000, size=128, progress=False)
    mark = lap("data_s", t0)

    seg_cfg = TrainConfig(
        model=model, data=str(data), epochs=epochs, size=size, out=str(out / "segmentation"), **SEGMENTATION_RECIPE
    )
    say(f"training {model} (segmentation) for {epochs} epochs at {size} px (precision and layout: auto)")
    train(seg_cfg, quiet=quiet)
    mark = lap("train_segmentation_s", mark)

    # Small datasets (tests, a user's tiny folder) get a batch that fits their training split.
    n_train = sum(1 for _ in (data / "images" / "train").glob("*.jpg"))
    cls_recipe = {**CLASSIFICATION_RECIPE, "batch": max(1, min(CLASSIFICATION_RECIPE["batch"], n_train))}
    cls_cfg = TrainConfig(
        model=classifier,
        data=str(data),
        epochs=classifier_epochs,
        size=size,
        out=str(out / "classification"),
        **cls_recipe,
    )
    say(f"training {classifier} (classification) for {classifier_epochs} epochs at {size} px")
    train(cls_cfg, quiet=quiet)
    mark = lap("train_classification_s", mark)

    device = runtime.default_device()
    precision = runtime.resolve_precision("auto", device, "infer")
    say("evaluating both best.pt checkpoints on the validation split")
    seg_metrics, _ = evaluate_checkpoint(out / "segmentation" / "best.pt", data, device=device, precision=precision)
    cls_metrics, _ = evaluate_checkpoint(out / "classification" / "best.pt", data, device=device, precision=precision)
    atomic_write_text(out / "eval-segmentation.json", json.dumps(seg_metrics, indent=2) + "\n")
    atomic_write_text(out / "eval-classification.json", json.dumps(cls_metrics, indent=2) + "\n")
    mark = lap("eval_s", mark)

    say("predicting 6 validation images with the segmenter")
    files = sorted((data / "images" / "val").glob("*.jpg"))[:6]
    trained, _ = open_predictor(out / "segmentation" / "best.pt", device, precision=precision.name)
    predictions = predict_files(trained, files, out / "predict", device)
    mark = lap("predict_s", mark)

    say(f"timing fp32 vs auto training steps of {model}")
    bench = bench_train(model, size=size, batch=16, steps=5, warmup=2, rounds=1, only=("auto",))
    atomic_write_text(out / "bench-train.json", json.dumps(bench, indent=2) + "\n")
    lap("bench_train_s", mark)
    timings["total_s"] = time.perf_counter() - t0

    def history(run: str) -> list[dict]:
        return [json.loads(line) for line in (out / run / "metrics.jsonl").read_text().splitlines()]

    summary = {
        "miou": seg_metrics["miou"],
        "top1": cls_metrics["top1"],
        "size": size,
        "device": str(device),
        "precision": runtime.resolve_precision("auto", device, "train").to_dict(),
        "segmentation": {
            "model": model,
            "epochs": epochs,
            "val": {k: v for k, v in seg_metrics.items() if k.startswith(("miou", "pixel_acc", "iou_", "loss"))},
            "history": history("segmentation"),
            "config": config_to_dict(seg_cfg),
        },
        "classification": {
            "model": classifier,
            "epochs": classifier_epochs,
            "val": {k: v for k, v in cls_metrics.items() if k.startswith(("top1", "top5", "loss"))},
            "history": history("classification"),
            "config": config_to_dict(cls_cfg),
        },
        "bench_train": bench["rows"],
        "predictions": predictions,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "torch": torch.__version__,
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / "index.html", _html(summary, out))
    say(
        f"segmentation val mIoU {seg_metrics['miou']:.3f} (pixel accuracy {seg_metrics['pixel_acc']:.3f}), "
        f"classification val top-1 {cls_metrics['top1']:.3f}; summary in {out / 'index.html'} "
        f"({timings['total_s']:.0f} s)"
    )
    return summary


def _history_table(history: list[dict], keys: tuple[str, ...]) -> str:
    head = "".join(f"<th>{k}</th>" for k in ("epoch", "train loss", "img/s", "data wait", *keys))
    rows = "".join(
        f"<tr><td>{r['epoch']}</td><td>{r['train_loss']:.4f}</td><td>{r['train_img_s']:.1f}</td>"
        f"<td>{r['train_data_wait'] * 100:.0f}%</td>"
        + "".join(f"<td>{r.get(k, float('nan')):.4f}</td>" for k in keys)
        + "</tr>"
        for r in history
    )
    return f"<table><tr>{head}</tr>{rows}</table>"


def _html(s: dict, out: Path) -> str:
    e = html.escape
    seg, cls = s["segmentation"], s["classification"]
    ious = "".join(
        f"<tr><td>{e(k[4:])}</td><td>{v:.3f}</td></tr>" for k, v in seg["val"].items() if k.startswith("iou_")
    )
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
<h1>parvis demo on the shapes data</h1>
<p>{s["size"]} px on {e(s["device"])}, precision {e(prec["name"])} ({e(prec["reason"])}), torch {e(s["torch"])}.
Times: {", ".join(f"{k} {v} s" for k, v in s["timings_s"].items())}.</p>
<h2>Segmentation: {e(seg["model"])}, {seg["epochs"]} epochs</h2>
<p>Val mIoU <b>{s["miou"]:.4f}</b>, pixel accuracy {seg["val"]["pixel_acc"]:.4f}.</p>
{_history_table(seg["history"], ("val_miou", "val_pixel_acc"))}
<h3>Per-class IoU</h3><table>{ious}</table>
<h2>Classification: {e(cls["model"])}, {cls["epochs"]} epochs</h2>
<p>Val top-1 <b>{s["top1"]:.4f}</b>.</p>
{_history_table(cls["history"], ("val_top1",))}
<h2>Training speed of {e(seg["model"])}, fp32 vs auto</h2>
<table><tr><th>config</th><th>img/s</th><th>vs fp32</th></tr>{bench}</table>
<h2>Predictions (overlays)</h2>{images}
</body></html>
"""
