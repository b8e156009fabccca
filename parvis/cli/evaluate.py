"""`parvis eval CHECKPOINT --data DIR`: the task metrics of a trained model on a split."""

from __future__ import annotations

from parvis.cli.output import console, write_json


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint on a dataset split")
    p.add_argument("checkpoint", help="a checkpoint written by parvis train (last.pt / best.pt)")
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--split", default="val", help="split to evaluate (default val)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", help="auto|fp32|tf32|bf16|fp16")
    p.add_argument("--scales", default=None, help="HMSA inference scales, e.g. 0.5,1.0,2.0")
    p.add_argument("--ema", action="store_true", help="evaluate the EMA weights")
    p.add_argument("--json", metavar="OUT", default=None, help="write the metrics as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from rich.markup import escape

    from parvis import runtime
    from parvis.engine.evaluate import evaluate_checkpoint

    device = runtime.resolve_device(args.device)
    precision = runtime.resolve_precision(args.precision, device, "infer")
    scales = [float(s) for s in args.scales.split(",")] if args.scales else None
    metrics, meta = evaluate_checkpoint(
        args.checkpoint, args.data, args.split, device, precision, args.batch, args.workers, scales, args.ema
    )
    from parvis.runtimes import ARTIFACT_SUFFIXES

    # An artifact runs at the precision stored in it, in its own runtime.
    precision_name = "artifact" if str(args.checkpoint).endswith(ARTIFACT_SUFFIXES) else precision.name
    result = {
        "checkpoint": args.checkpoint,
        "model": meta.name,
        "task": meta.task,
        "split": args.split,
        "precision": precision_name,
        "device": str(device),
        **metrics,
    }
    if args.scales:
        result["scales"] = [float(s) for s in args.scales.split(",")]
    con = console()
    main_keys = {"classification": ("top1", "top5"), "detection": ("map50", "map", "map75")}.get(
        meta.task, ("miou", "pixel_acc")
    )
    con.print(
        f"{meta.name} on {escape(args.data)} \\[{args.split}], {metrics['images']} images, "
        f"{precision_name} on {device}: "
        + ", ".join(f"{k} {metrics[k]:.4f}" for k in main_keys if k in metrics)
        + f", loss {metrics['loss']:.4f}, {metrics['images_per_s']:,.0f} img/s"
    )
    per_class = {k[4:]: v for k, v in metrics.items() if k.startswith("iou_")}
    if per_class:
        con.print("per-class IoU: " + ", ".join(f"{k} {v:.3f}" for k, v in per_class.items()))
    per_class_ap = {k[5:]: v for k, v in metrics.items() if k.startswith("ap50_")}
    if per_class_ap:
        con.print("per-class AP@0.5: " + ", ".join(f"{k} {v:.3f}" for k, v in per_class_ap.items()))
    if args.json:
        write_json(args.json, result)
    return 0
