"""`parvis eval CHECKPOINT --data DIR`: the task metrics of a trained model on a split."""

from __future__ import annotations

from parvis.cli.model_args import MODEL_HELP, add_model_args, preprocess_from
from parvis.cli.output import console, write_json


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a model (checkpoint, artifact, zoo name with weights) on a dataset split")
    p.add_argument("checkpoint", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--split", default="val", help="split to evaluate (default val)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", help="auto|fp32|tf32|bf16|fp16")
    p.add_argument("--scales", default=None, help="HMSA inference scales, e.g. 0.5,1.0,2.0")
    p.add_argument("--ema", action="store_true", help="evaluate the EMA weights")
    p.add_argument("--json", metavar="OUT", default=None, help="write the metrics as JSON")
    p.add_argument("--runtime", default=None, help="torch|torch-compile|onnxruntime|openvino (default: by file)")
    add_model_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from rich.markup import escape

    from parvis.api import evaluate, load

    scales = [float(s) for s in args.scales.split(",")] if args.scales else None
    model = load(
        args.checkpoint, weights=args.weights, device=args.device, runtime=args.runtime, precision=args.precision,
        ema=args.ema, given=preprocess_from(args),
    )  # fmt: skip
    metrics = evaluate(model, args.data, args.split, args.batch, args.workers, scales)
    result = {"checkpoint": args.checkpoint, **metrics}
    precision_name, device, meta = metrics["precision"], metrics["device"], model.meta
    if args.scales:
        result["scales"] = [float(s) for s in args.scales.split(",")]
    con = console()
    main_keys = {
        "classification": ("top1", "top5"),
        "detection": ("map50", "map", "map75"),
        "stereo": ("epe", "bad1", "bad3", "d1", "plane_acc"),
        "inspection": ("image_auroc", "pixel_auroc", "pro", "f1", "false_reject", "escape"),
    }.get(meta.task, ("miou", "pixel_acc"))
    con.print(
        f"{meta.name} on {escape(args.data)} \\[{args.split}], {metrics['images']} images, "
        f"{metrics['runtime']} {precision_name} on {device}: "
        + ", ".join(f"{k} {metrics[k]:.4f}" for k in main_keys if k in metrics)
        + f", loss {metrics['loss']:.4f}, {metrics['images_per_s']:,.0f} img/s"
        + (" (epe in px; bad, d1 in % of pixels with ground truth)" if meta.task == "stereo" else "")
        + (f" (OK/NG at threshold {metrics['threshold']:.4g})" if "threshold" in metrics else "")
    )
    for prefix, label in (("iou_", "IoU"), ("acc_", "accuracy"), ("ap50_", "AP@0.5")):
        per_class = {k[len(prefix) :]: v for k, v in metrics.items() if k.startswith(prefix)}
        if per_class:
            con.print(f"per-class {label}: " + ", ".join(f"{k} {v:.3f}" for k, v in per_class.items()))
    if args.json:
        write_json(args.json, result)
    return 0
