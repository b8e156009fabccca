"""`parvis inspect MODEL [--weights FILE] [--json]`: what parvis knows about any model or artifact."""

from __future__ import annotations

from parvis.cli.model_args import MODEL_HELP, add_model_args, preprocess_from
from parvis.cli.output import console


def add_parser(sub) -> None:
    p = sub.add_parser("inspect", help="what parvis knows about a model: inputs, outputs, preprocessing, classes")
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--json", action="store_true", help="print one JSON document")
    add_model_args(p)
    p.set_defaults(func=run)


def _shape(shape) -> str:
    if shape is None:
        return "?"
    return "[" + ", ".join("N" if i == 0 and not isinstance(d, int) else str(d) for i, d in enumerate(shape)) + "]"


def run(args) -> int:
    import json

    from rich.markup import escape

    from parvis.api import load

    report = load(args.model, weights=args.weights, device="cpu", given=preprocess_from(args)).inspect()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    con = console()
    con.print(f"[bold]{escape(report['name'])}[/bold]: {report['task']}, from {escape(report['source'])}")
    for kind in ("inputs", "outputs"):
        for t in report[kind]:
            con.print(f"  {kind[:-1]:6} {escape(t['name'])} {t['dtype']} {_shape(t['shape'])}")
    for key, item in report["preprocess"].items():
        con.print(f"  {key:13} {item['value']}  [dim]({escape(str(item['from']))})[/dim]")
    classes = report["classes"]
    if classes["count"]:
        first = ", ".join(classes["first"][:5])
        con.print(f"  classes       {classes['count']}: {escape(first)}, ...  [dim]({escape(classes['from'])})[/dim]")
    params = f"{report['params'] / 1e6:.2f} M" if report.get("params") is not None else "?"
    flops = f"{report['flops'] / 1e9:.3f} GFLOP" if report.get("flops") else "not counted"
    con.print(f"  params        {params}, {flops} per image")
    for key in ("weights", "precision", "int8_layers", "parity_max_abs_err", "optimize", "head_replaced"):
        if report.get(key) is not None:
            con.print(f"  {key:13} {escape(str(report[key]))}")
    return 0
