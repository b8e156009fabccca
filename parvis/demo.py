"""`parvis demo`: a classifier, a segmenter and a detector trained on the embedded data, evaluated,
shown on validation images, under one folder with an HTML summary.

Generate the shapes data (if absent), then for each task train the demo's model with `recipe=auto`
(the demo gives only the model, input size and epochs; every other choice is auto's, printed as
`auto:` lines and kept in each run's config.yaml), evaluate best.pt on the validation split, and
predict validation images with overlays. The classifier also gets its confusion matrix and a few
correct and wrong predictions. Then time fp32 against the automatic precision for the segmenter
and write summary.json (top-level `top1`, `miou`, `map50`) and index.html.
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path

import torch

from parvis import runtime
from parvis.bench.train import bench_train
from parvis.config import TrainConfig, config_to_dict, load_config
from parvis.data.check import open_dataset
from parvis.data.synth import synthesize
from parvis.engine.predict import predict_files
from parvis.engine.trainer import train
from parvis.io import atomic_write_text
from parvis.runtimes import open_predictor

# The demo's models, sizes and epochs on the shapes data; everything else is recipe=auto's. Chosen for
# a 2-core CPU (figures in docs/results.md): the conv-encoder family (full resolution in its first
# level, so small inputs keep their detail) trains fastest per second there; auto caches the decoded
# train split in RAM, so the epochs cost the model's time, not the JPEG decoder's. The segmenter's crops
# keep >= 80% of the scene (auto's 60% measured val mIoU 0.846 vs 0.857, same 10 epochs): its validation
# scores whole scenes, and stronger zoom trains on objects larger than it will see.
# The segmenter trains first, from scratch; the classifier and the detector share its encoder (the
# same conv levels) and start from it (`weights_backbone`), which their image- and box-level labels
# teach far more slowly than per-pixel masks do: on a 2-core AVX2 CPU the classifier reached top-1
# 0.995 in 2 epochs (31 s) that way against 0.941 after 9 from scratch (206 s), the detector mAP@0.5
# 0.903 at 96 px in 3 epochs (158 s) against 0.879 at 128 px in 4 (about 600 s there). `scratch` is
# each one's run without the segmenter (`--tasks classification`), the one configs/*.yaml hold.
DEMO_TASKS = {
    "segmentation": {"model": "unet_small", "size": 64, "epochs": 10, "metric": "miou", "crop_scale": (0.8, 1.0)},
    "classification": {"model": "convnet_small", "size": 64, "epochs": 2, "metric": "top1", "backbone": "segmentation",
                       "scratch": {"size": 64, "epochs": 9}},
    "detection": {"model": "centernet_small", "size": 96, "epochs": 3, "metric": "map50", "backbone": "segmentation",
                  "scratch": {"size": 128, "epochs": 4}},
}  # fmt: skip
EXAMPLES = 4  # correct and wrong classifier predictions shown
OVERLAYS = 6  # validation images predicted with overlays per segmenter / detector


def demo_config(
    task: str, data: Path, out: Path, epochs: int | None = None, backbone: Path | None = None
) -> TrainConfig:
    """The demo's run of `task`: its model, size and epochs given, the rest auto; evaluated once, at the
    end. `backbone`: the checkpoint whose encoder it starts from; without it, the task's from-scratch run."""
    spec = DEMO_TASKS[task]
    own = spec if backbone is not None or "scratch" not in spec else {**spec, **spec["scratch"]}
    n = epochs or own["epochs"]
    values = {"task": task, "model": spec["model"], "data": str(data), "size": own["size"], "epochs": n,
              "eval_every": n, "out": str(out / task)}  # fmt: skip
    if backbone is not None:
        values["weights_backbone"] = str(backbone)
    if "crop_scale" in spec:
        values["crop_scale"] = list(spec["crop_scale"])
    return load_config(TrainConfig, values=values)


def run_demo(
    out: str | Path = "runs/demo",
    data: str | Path = "data/shapes",
    epochs: int | None = None,
    tasks: tuple[str, ...] = tuple(DEMO_TASKS),
    quiet: bool = False,
) -> dict:
    """Train, evaluate and show each of `tasks`; `epochs` replaces every task's own count (a quick try)."""
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
    device = runtime.default_device()
    precision = runtime.resolve_precision("auto", device, "infer")

    sections: dict[str, dict] = {}
    for task in sorted(tasks, key=list(DEMO_TASKS).index):  # the segmenter first: the others start from it
        source = DEMO_TASKS[task].get("backbone")
        backbone = out / source / "best.pt" if source in tasks else None
        cfg = demo_config(task, data, out, epochs, backbone)
        start = f", its encoder from the {source} run" if backbone else ""
        say(f"training {cfg.model} ({task}) for {cfg.epochs} epochs at {cfg.size} px{start}, recipe=auto")
        train(cfg, quiet=quiet)
        mark = lap(f"train_{task}_s", mark)
        best = out / task / "best.pt"
        history = [json.loads(line) for line in (out / task / "metrics.jsonl").read_text().splitlines()]
        # The run evaluates once, after its last epoch, on the whole val split: best.pt is that epoch's
        # weights and those are its metrics (evaluating best.pt again would repeat the same pass).
        metrics = {k[4:]: v for k, v in history[-1].items() if k.startswith("val_")}
        atomic_write_text(out / f"eval-{task}.json", json.dumps(metrics, indent=2) + "\n")
        trained, _ = open_predictor(best, device, precision=precision.name)
        meta = trained.meta
        section = {
            "model": cfg.model,
            "epochs": cfg.epochs,
            "size": cfg.size,
            "metric": DEMO_TASKS[task]["metric"],
            "value": metrics[DEMO_TASKS[task]["metric"]],
            "val": metrics,
            "history": history,
            "auto": [x[2:] for x in (out / task / "config.yaml").read_text().splitlines() if x.startswith("# auto")],
            "config": config_to_dict(cfg),
            "class_names": list(meta.class_names),
        }  # fmt: skip
        if task == "classification":
            section.update(_classifier_details(trained, data, out / "classification-val", device))
        else:
            files = sorted(p for p in (data / "images" / "val").iterdir() if p.suffix == ".jpg")[:OVERLAYS]
            section["predictions"] = predict_files(trained, files, out / f"predict-{task}", device)
        sections[task] = section
        mark = lap(f"eval_{task}_s", mark)
        say(f"{task}: {cfg.model} val {section['metric']} {section['value']:.3f}")

    bench = None
    if "segmentation" in sections:
        say("timing fp32 vs auto training steps of the segmenter")
        bench = bench_train(DEMO_TASKS["segmentation"]["model"], size=64, batch=16, steps=5, warmup=2, rounds=1,
                            only=("auto",))  # fmt: skip
        atomic_write_text(out / "bench-train.json", json.dumps(bench, indent=2) + "\n")
        lap("bench_train_s", mark)
    timings["total_s"] = time.perf_counter() - t0

    summary = {
        **{DEMO_TASKS[t]["metric"]: s["value"] for t, s in sections.items()},
        "device": str(device),
        "precision": runtime.resolve_precision("auto", device, "train").to_dict(),
        **sections,
        "bench_train": bench["rows"] if bench else [],
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "torch": torch.__version__,
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / "index.html", _html(summary, out))
    headline = ", ".join(f"{t} val {s['metric']} {s['value']:.3f}" for t, s in sections.items())
    say(f"{headline}; summary in {out / 'index.html'} ({timings['total_s']:.0f} s)")
    return summary


def _classifier_details(model, data: Path, out: Path, device: torch.device) -> dict:
    """Predict every validation image: the confusion matrix (rows: true class, columns: predicted)
    and EXAMPLES correct and EXAMPLES wrong predictions, each with its image (an overlay naming the
    predicted class) - the wrong ones most confident first, the correct ones one per class."""
    val = open_dataset(data, "classification", "val")
    files = [Path(path) for path, _ in val.samples]
    results = predict_files(model, files, out, device, batch_size=64, overlays=False)
    names = list(val.classes)
    k = len(names)
    confusion = [[0] * k for _ in range(k)]
    rows = []
    for (path, truth), result in zip(val.samples, results, strict=True):
        if "label" not in result:
            continue
        confusion[truth][result["label"]] += 1
        rows.append((Path(path), truth, result["label"], result["score"]))
    wrong = sorted((r for r in rows if r[1] != r[2]), key=lambda r: -r[3])[:EXAMPLES]
    correct, seen = [], set()
    for row in rows:
        if row[1] == row[2] and row[1] not in seen and len(correct) < EXAMPLES:
            correct.append(row)
            seen.add(row[1])
    shown = predict_files(model, [r[0] for r in correct + wrong], out / "examples", device)
    overlay = {Path(p["file"]): p.get("overlay") for p in shown}

    def example(row) -> dict:
        path, truth, pred, score = row
        return {"file": str(path), "true": names[truth], "predicted": names[pred], "score": round(score, 4),
                "overlay": overlay.get(path)}  # fmt: skip

    return {
        "confusion": {"classes": names, "matrix": confusion},
        "correct": [example(r) for r in correct],
        "wrong": [example(r) for r in wrong],
    }


# ----------------------------------------------------------------------------------------------- HTML


def _history_table(history: list[dict], keys: tuple[str, ...]) -> str:
    head = "".join(f"<th>{k}</th>" for k in ("epoch", "train loss", "img/s", "data wait", *keys))
    rows = "".join(
        f"<tr><td>{r['epoch']}</td><td>{r['train_loss']:.4f}</td><td>{r['train_img_s']:.1f}</td>"
        f"<td>{r['train_data_wait'] * 100:.0f}%</td>"
        + "".join(f"<td>{r[k]:.4f}</td>" if k in r else "<td>-</td>" for k in keys)
        + "</tr>"
        for r in history
    )
    return f"<table><tr>{head}</tr>{rows}</table>"


PER_CLASS = {"classification": ("acc_", "accuracy"), "segmentation": ("iou_", "IoU"), "detection": ("ap50_", "AP@0.5")}


def _per_class(task: str, val: dict) -> str:
    prefix, label = PER_CLASS[task]
    rows = "".join(
        f"<tr><td>{html.escape(k[len(prefix) :])}</td><td>{v:.3f}</td></tr>"
        for k, v in val.items()
        if k.startswith(prefix)
    )
    return f"<table><tr><th>class</th><th>{label}</th></tr>{rows}</table>"


def _confusion(conf: dict) -> str:
    e = html.escape
    names = conf["classes"]
    head = "".join(f"<th>{e(n)}</th>" for n in names)
    body = "".join(
        f"<tr><th>{e(names[i])}</th>"
        + "".join(f'<td class="{"diag" if i == j else ("off" if v else "")}">{v}</td>' for j, v in enumerate(row))
        + "</tr>"
        for i, row in enumerate(conf["matrix"])
    )
    return f"<table><tr><th>true \\ predicted</th>{head}</tr>{body}</table>"


def _figures(examples: list[dict], out: Path) -> str:
    e = html.escape
    return (
        "".join(
            f'<figure><img src="{e(str(Path(x["overlay"]).relative_to(out)))}" width="160">'
            f"<figcaption>{e(Path(x['file']).name)}: {e(x['predicted'])} ({x['score']:.2f}), true {e(x['true'])}"
            "</figcaption></figure>"
            for x in examples
            if x.get("overlay")
        )
        or "<p>none</p>"
    )


def _overlays(predictions: list[dict], out: Path) -> str:
    e = html.escape
    return "".join(
        f'<figure><img src="{e(str(Path(p["overlay"]).relative_to(out)))}" width="192">'
        f"<figcaption>{e(Path(p['file']).name)}</figcaption></figure>"
        for p in predictions
        if "overlay" in p
    )


def _section(task: str, s: dict, out: Path) -> str:
    e = html.escape
    metric_keys = {"classification": ("val_top1",), "segmentation": ("val_miou", "val_pixel_acc"),
                   "detection": ("val_map50", "val_map")}[task]  # fmt: skip
    backbone = s["config"].get("weights_backbone")
    start = f", encoder from {e(backbone)}" if backbone else ", from scratch"
    parts = [
        f"<h2>{task.capitalize()}: {e(s['model'])}, {s['epochs']} epochs at {s['size']} px{start}</h2>",
        f"<p>Val {s['metric']} <b>{s['value']:.4f}</b>.</p>",
        "<details><summary>recipe=auto's choices</summary><ul>"
        + "".join(f"<li>{e(line)}</li>" for line in s["auto"])
        + "</ul></details>",
        _history_table(s["history"], metric_keys),
        f"<h3>Per class</h3>{_per_class(task, s['val'])}",
    ]
    if task == "classification":
        parts += [
            f"<h3>Confusion matrix</h3>{_confusion(s['confusion'])}",
            f"<h3>Correct predictions</h3>{_figures(s['correct'], out)}",
            f"<h3>Wrong predictions (most confident first)</h3>{_figures(s['wrong'], out)}",
        ]
    else:
        parts.append(f"<h3>Validation images</h3>{_overlays(s['predictions'], out)}")
    return "\n".join(parts)


def _html(s: dict, out: Path) -> str:
    e = html.escape
    bench = "".join(
        f"<tr><td>{e(r['config'] + (' = ' + r['resolved'] if 'resolved' in r else ''))}</td><td>{r['img_s']:.1f}</td>"
        f"<td>{r['speedup_vs_fp32']:.2f}x</td></tr>"
        for r in s["bench_train"]
    )
    prec = s["precision"]
    sections = "\n".join(_section(task, s[task], out) for task in DEMO_TASKS if task in s)
    speed = (
        f"<h2>Training speed of {e(s['segmentation']['model'])}, fp32 vs auto</h2>"
        f"<table><tr><th>config</th><th>img/s</th><th>vs fp32</th></tr>{bench}</table>"
        if bench
        else ""
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>parvis demo</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse;margin:.5em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
figure{{display:inline-block;margin:4px;vertical-align:top}} figcaption{{font-size:small;max-width:160px}}
td.diag{{background:#d8f0d8}} td.off{{background:#f6d5d5}}</style>
</head><body>
<h1>parvis demo on the shapes data</h1>
<p>{e(s["device"])}, precision {e(prec["name"])} ({e(prec["reason"])}), torch {e(s["torch"])}.
Times: {", ".join(f"{k} {v} s" for k, v in s["timings_s"].items())}.</p>
{sections}
{speed}
</body></html>
"""
