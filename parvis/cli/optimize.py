"""`parvis optimize CHECKPOINT --data DIR [--budget POINTS] [--out DIR]`: the fastest configuration
within the accuracy budget, every candidate measured, every rejection explained."""

from __future__ import annotations

from parvis.cli.model_args import add_model_args, preprocess_from
from parvis.cli.output import console
from parvis.errors import ParvisError


def _ints(flag: str, text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise ParvisError(f"{flag} {text!r}: expected positive numbers like 1,8,32")
    return values


def _pairs(text: str) -> list[tuple[str, str]]:
    from parvis.runtimes import RUNTIMES

    pairs = []
    for item in text.split(","):
        runtime, _, precision = item.strip().partition(":")
        if runtime not in RUNTIMES or not precision:
            raise ParvisError(
                f"--candidates {item!r}: expected RUNTIME:PRECISION with RUNTIME one of {', '.join(RUNTIMES)}, "
                "e.g. torch:fp32,openvino:int8"
            )
        pairs.append((runtime, precision))
    return pairs


def add_parser(sub) -> None:
    p = sub.add_parser("optimize", help="measure runtime x precision x batch, keep the fastest within a metric budget")
    p.add_argument("checkpoint", metavar="MODEL", help="a checkpoint written by parvis train, or a model name "
                   "(registered, torchvision:NAME, timm:NAME) with --weights")  # fmt: skip
    p.add_argument(
        "--metric", default="auto",
        choices=("auto", "labels", "agreement", "top1", "miou", "map50", "map", "epe", "bad3", "d1"),
        help="labels: the task metric on --data's labelled val split (top1, miou, detection map50, stereo epe); a "
        "metric name: that one (detection: map = COCO mAP@0.5:0.95; stereo: epe in px, bad3 or d1 in %%); "
        "agreement: agreement with eager fp32 on the images under "
        "--data (for data without labels the model knows); auto: labels when there are",
    )  # fmt: skip
    p.add_argument("--data", required=True, help="dataset folder: validation split scores, train split calibrates")
    p.add_argument("--budget", type=float, default=1.0,
                   help="allowed metric drop vs eager fp32, in points (stereo epe: in px; default 1)")  # fmt: skip
    p.add_argument("--out", default="runs/optimize", help="output folder (default runs/optimize)")
    p.add_argument("--batch", default="32", help="batch sizes for throughput, e.g. 1,8,32 (default 32)")
    p.add_argument("--threads", default=None, help="thread counts to try, e.g. 1,2 (default: usable cores)")
    p.add_argument("--streams", default="1", help="OpenVINO stream counts to try, e.g. 1,2 (default 1)")
    p.add_argument("--objective", default="throughput", help="throughput (img/s) or latency (batch-1 p50)")
    p.add_argument("--candidates", default=None, help="RUNTIME:PRECISION list instead of the device's matrix")
    p.add_argument("--candidate", action="append", default=[], metavar="ARTIFACT", help="also try this artifact")
    p.add_argument("--prune", type=float, default=None, metavar="RATIO", help="also try a channel-pruned variant")
    p.add_argument("--prune-epochs", type=int, default=2, help="fine-tune epochs of the pruned variant (default 2)")
    p.add_argument("--calib", type=int, default=128, help="INT8 calibration images (default 128)")
    p.add_argument("--no-int8-search", action="store_true",
                   help="when full INT8 is over budget, list it as such instead of searching for the layers to keep "
                   "in float (the search costs about a minute per 30 quantized layers on 2 cores)")  # fmt: skip
    p.add_argument("--rounds", type=int, default=3, help="round-robin timing rounds; the median counts (default 3)")
    p.add_argument("--device", default="auto")
    add_model_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import shutil
    from pathlib import Path

    from rich.markup import escape
    from rich.table import Table

    from parvis.api import load
    from parvis.optimize import precision_label

    con = console()
    variants = []
    if args.prune is not None:
        from parvis.prune import prune_checkpoint

        pruned_dir = Path(args.out) / f"pruned-{args.prune:g}"
        con.print(f"pruning {args.prune:.0%} of channels, fine-tuning {args.prune_epochs} epoch(s)")
        shutil.rmtree(pruned_dir, ignore_errors=True)  # this command's own output of an earlier run
        # optimize times every candidate itself, side by side: prune's own timing is skipped (no timer).
        report = prune_checkpoint(args.checkpoint, args.prune, args.data, args.prune_epochs, pruned_dir)
        variants.append((f"pruned{args.prune:g}", str(report["checkpoint"])))
    model = load(args.checkpoint, weights=args.weights, given=preprocess_from(args))
    result = model.optimize(
        args.data,
        args.out,
        budget=args.budget,
        batches=_ints("--batch", args.batch),
        threads=_ints("--threads", args.threads) if args.threads else None,
        objective=args.objective,
        device=args.device,
        pairs=_pairs(args.candidates) if args.candidates else None,
        extra=tuple(args.candidate),
        variants=tuple(variants),
        calib=args.calib,
        streams=_ints("--streams", args.streams),
        rounds=args.rounds,
        metric=args.metric,
        int8_search=not args.no_int8_search,
        progress=lambda msg: con.print(f"[dim]{escape(msg)}[/dim]") if con.is_terminal else None,
    )
    name = result["metric_name"]
    scored_on = "val images" if result["metric_mode"] == "labels" else f"images, agreement with {result['baseline']}"
    table = Table(
        title=f"optimize {result['model']}, {result['input_size']} px, {result['device']}, "
        f"budget {result['budget_points']:g} {name} {'px' if name == 'epe' else 'points'}, "
        f"{result['validation_images']} {scored_on}"
    )
    for col in (
        "variant",
        "runtime",
        "precision",
        "batch",
        "thr",
        "status",
        "size MB",
        name,
        "drop",
        "ms/img b1",
        "img/s",
        "speedup",
    ):
        table.add_column(col, justify="left" if col in ("variant", "runtime", "precision", "status") else "right")
    for r in result["candidates"]:
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        status = r["status"] + (" *" if r["chosen"] else "")
        table.add_row(
            r["variant"],
            r["runtime"] + (f" x{r['streams']}" if r.get("streams", 1) > 1 else ""),
            precision_label(r),
            str(r["batch"]),
            str(r["threads"]),
            status,
            fmt(r["size_mb"], ".1f"),
            fmt(r["metric"], ".4f"),
            fmt(r["metric_drop"], "+.2f"),
            fmt(r["latency_ms_p50"], ".2f"),
            fmt(r["img_s"], ",.1f"),
            "-" if r["speedup_vs_eager_fp32"] is None else f"{r['speedup_vs_eager_fp32']:.2f}x",
        )
    con.print(table)
    for r in result["candidates"]:
        if r["reason"] and r["batch"] == result["batches"][0] and r["threads"] == result["threads"][0]:
            if r.get("streams", 1) == 1:
                con.print(f"  {r['variant']}/{r['runtime']}/{precision_label(r)}: {escape(r['reason'])}")
    c = result["chosen"]
    streams = f" ({c['streams']} streams)" if c.get("streams", 1) > 1 else ""
    con.print(
        f"chosen: {c['runtime']}{streams} {precision_label(c)} ({c['variant']}) at batch {c['batch']}, "
        f"{c['threads']} thread(s): "
        f"{c['img_s']:,.1f} img/s, {c['speedup_vs_eager_fp32']:.2f}x {result['baseline']}, {name} {c['metric']:.4f} "
        f"({c['metric_drop']:+.2f} {'px' if name == 'epe' else 'points'}) -> {escape(c['artifact'])}"
    )
    con.print(f"wrote {escape(str(Path(args.out) / 'optimize.json'))}")
    return 0
