"""`parvis data synth` (the embedded shapes set) and `parvis data check` (find every bad file)."""

from __future__ import annotations

from parvis.cli.output import console, write_json


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="make and check datasets")
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    dsub.required = True

    s = dsub.add_parser("synth", help="generate the shapes dataset (classification, segmentation, detection)")
    s.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    s.add_argument("--n", type=int, default=1000, help="number of scenes (default 1000)")
    s.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    s.add_argument("--seed", type=int, default=0, help="seed; the same seed gives byte-identical files")
    s.add_argument("--val-fraction", type=float, default=0.2, help="share of scenes in the val split (default 0.2)")
    s.add_argument("--workers", type=int, default=None, help="processes (default: all usable cores)")
    s.set_defaults(func=run_synth)

    c = dsub.add_parser("check", help="decode every file and report each problem by file name")
    c.add_argument("path", metavar="DIR", help="a dataset folder (dataset.yaml, ImageFolder, images+masks, COCO)")
    c.add_argument("--workers", type=int, default=None, help="processes (default: all usable cores)")
    c.add_argument("--json", metavar="OUT", default=None, help="also write the summary and problems as JSON")
    c.set_defaults(func=run_check)


def run_synth(args) -> int:
    from parvis.data.synth import synthesize

    con = console()
    result = synthesize(
        args.out,
        n=args.n,
        size=args.size,
        seed=args.seed,
        val_fraction=args.val_fraction,
        workers=args.workers,
        progress=con.is_terminal,
    )
    con.print(_synth_line(args.out, result))
    return 0


def _synth_line(out: str, result: dict) -> str:
    splits = result.get("splits", {})
    split_text = ", ".join(f"{k} {v}" for k, v in splits.items())
    return (
        f"wrote {result['n']} scenes ({split_text}) at {result['size']} px to {out} "
        f"in {result['seconds']:.1f} s ({result['images_per_s']:.0f} img/s)"
    )


def run_check(args) -> int:
    from parvis.data.check import check_dataset

    con = console()
    report = check_dataset(args.path, workers=args.workers, progress=con.is_terminal)
    _print_summary(report, con)
    if args.json:
        write_json(
            args.json,
            {
                "layouts": report.layouts,
                "summary": report.summary,
                "ok": report.ok,
                "problems": [{"path": p.path, "message": p.message, "severity": p.severity} for p in report.problems],
            },
        )
    for line in report.lines():  # warnings too: worth fixing even when training would work
        print(line)
    errors = sum(p.severity == "error" for p in report.problems)
    warnings = len(report.problems) - errors
    if report.ok:
        con.print(f"[green]no problems[/] in {args.path}" + (f" ({warnings} warning(s))" if warnings else ""))
        return 0
    con.print(f"[red]{errors} problem(s)[/]" + (f" and {warnings} warning(s)" if warnings else "") + f" in {args.path}")
    return 1


def _print_summary(report, con) -> None:
    from rich.table import Table

    for layout, splits in report.summary.items():
        if not isinstance(splits, dict):
            continue
        for split, info in splits.items():
            if not isinstance(info, dict):
                continue
            table = Table(title=f"{layout} / {split}", title_justify="left", show_header=True)
            table.add_column("key")
            table.add_column("value")
            for key, value in info.items():
                if isinstance(value, dict):
                    value = ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
                table.add_row(str(key), _fmt(value))
            con.print(table)


def _fmt(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
