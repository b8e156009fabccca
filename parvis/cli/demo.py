"""`parvis demo [--out DIR]`: train, evaluate, predict and time on the embedded data, with an HTML summary."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="the whole path on the embedded shapes data (writes runs/demo/index.html)")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo; replaced if it exists)")
    p.add_argument("--data", default="data/shapes", help="shapes data folder (generated if absent)")
    p.add_argument("--epochs", type=int, default=8, help="segmentation epochs (default 8)")
    p.add_argument("--classifier-epochs", type=int, default=2, help="classification epochs (default 2)")
    p.add_argument("--size", type=int, default=64, help="training and evaluation size in px (default 64)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    import shutil
    from pathlib import Path

    from parvis.demo import run_demo

    out = Path(args.out)
    if (out / "summary.json").exists() or (out / "segmentation" / "last.pt").exists():
        shutil.rmtree(out)  # a demo folder is parvis's own output; a fresh demo replaces the last one
    run_demo(
        out, args.data, epochs=args.epochs, size=args.size, classifier_epochs=args.classifier_epochs, quiet=args.quiet
    )
    return 0
