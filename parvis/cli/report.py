"""`parvis report RESULT... --out FILE.html`: benchmark and optimize results as one HTML page (+ JSON, CSV)."""

from __future__ import annotations

from parvis.cli.output import console


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="render result JSON files (bench suites, optimize) as one HTML page")
    p.add_argument("inputs", nargs="+", metavar="RESULT", help="result .json files, or folders: every *.json in them")
    p.add_argument("--out", required=True, metavar="FILE.html", help="HTML to write; FILE.json and FILE.csv beside it")
    p.add_argument("--title", default="parvis report", help="page title (default 'parvis report')")
    p.add_argument("--skip-unknown", action="store_true", help="skip files that are not parvis results (say which)")
    p.set_defaults(func=run, torch_free=True)


def run(args) -> int:
    from rich.markup import escape

    from parvis.report import write_report

    con = console()
    with con.status("rendering the report..."):
        done = write_report(args.inputs, args.out, skip_unknown=args.skip_unknown, title=args.title)
    for s in done["skipped"]:
        con.print(f"skipped {escape(s)}")
    con.print(
        f"report of {done['results']} result(s), {done['plots']} plot(s), {done['rows']} table row(s) -> "
        f"{escape(done['html'])} (+ {escape(done['json'])}, {escape(done['csv'])})"
    )
    return 0
