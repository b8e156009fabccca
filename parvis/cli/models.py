"""`parvis models [--task T] [--source parvis|torchvision|timm] [--json]`: every model name parvis can build."""

from __future__ import annotations

from parvis.cli.output import console, write_json


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="list the model names parvis can build (its own, torchvision:, timm:)")
    p.add_argument("--task", choices=("classification", "segmentation", "detection"), default=None)
    p.add_argument("--source", choices=("parvis", "torchvision", "timm"), default=None)
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="OUT", help="JSON to OUT (or stdout)")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from parvis.describe import list_models

    rows = list_models(args.task, args.source)
    if args.json == "-":
        print(json.dumps(rows, indent=2))
        return 0
    if args.json:
        write_json(args.json, rows)
    con = console()
    by_source: dict[str, list[dict]] = {}
    for r in rows:
        by_source.setdefault(r["source"], []).append(r)
    for source, items in by_source.items():
        names = ", ".join(r["name"].partition(":")[2] or r["name"] for r in items)
        prefix = "" if source == "parvis" else f"{source}:"
        con.print(f"[bold]{source}[/bold] ({len(items)}, named {prefix}NAME): {names}", soft_wrap=False)
    con.print(
        f"{len(rows)} models; weights: `--weights FILE` (a local state dict) or `--weights default` for files already "
        "in torch's or Hugging Face's cache"
    )
    return 0
