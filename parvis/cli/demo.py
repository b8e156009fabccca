"""`parvis demo [--out DIR]`: train, evaluate, predict and time on the embedded data, with an HTML summary."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="the whole path on the embedded shapes data (writes runs/demo/index.html)")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo; replaced if it exists)")
    p.add_argument("--data", default="data/shapes", help="shapes data folder (generated if absent)")
    p.add_argument("--epochs", type=int, default=None, help="epochs for every task (default: each task's own)")
    p.add_argument(
        "--tasks", default="classification,segmentation,detection", help="comma-separated subset to run (default all)"
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    import shutil
    from pathlib import Path

    from parvis.demo import DEMO_TASKS, run_demo
    from parvis.errors import ParvisError

    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    unknown = [t for t in tasks if t not in DEMO_TASKS]
    if unknown or not tasks:
        raise ParvisError(f"--tasks {args.tasks}: choose from {', '.join(DEMO_TASKS)} (comma-separated)")
    out = Path(args.out)
    if (out / "summary.json").exists() or any((out / t / "last.pt").exists() for t in DEMO_TASKS):
        shutil.rmtree(out)  # a demo folder is parvis's own output; a fresh demo replaces the last one
    run_demo(out, args.data, epochs=args.epochs, tasks=tasks, quiet=args.quiet)
    return 0
