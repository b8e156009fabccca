"""`parvis predict CHECKPOINT INPUT... --out DIR`: JSON results, PNG masks and overlay images."""

from __future__ import annotations

from parvis.cli.output import console


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help="predict images, folders or globs with a checkpoint")
    p.add_argument("checkpoint", help="a checkpoint written by parvis train")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    p.add_argument("--out", required=True, help="output folder (results.json, masks/, overlays/)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--ema", action="store_true", help="use the EMA weights")
    p.set_defaults(func=run)


def run(args) -> int:
    from parvis import runtime
    from parvis.engine.predict import expand_inputs, load_trained, predict_files

    device = runtime.resolve_device(args.device)
    precision = runtime.resolve_precision(args.precision, device, "infer")
    model = load_trained(args.checkpoint, device, use_ema=args.ema)
    files = expand_inputs(args.inputs)
    results = predict_files(model, files, args.out, device, precision, batch_size=args.batch)
    errors = [r for r in results if "error" in r]
    con = console()
    for r in results[:5]:
        if "error" in r:
            continue
        what = r.get("class_name") or ", ".join(
            f"{k} {v:.2f}" for k, v in r["class_shares"].items() if v > 0.005 and k != r.get("background", "background")
        )
        con.print(f"{r['file']}: {what or 'background only'}")
    con.print(
        f"predicted {len(results) - len(errors)} image(s) -> {args.out}/results.json"
        + (f"; {len(errors)} unreadable: " + ", ".join(r["file"] for r in errors) if errors else "")
    )
    return 1 if errors else 0
