"""The `parvis` command: parse, dispatch to one small module per command, turn user errors into one line."""

from __future__ import annotations

import argparse
import sys

from parvis import __version__
from parvis.errors import ParvisError


def build_parser() -> argparse.ArgumentParser:
    from parvis.cli import (
        bench,
        data,
        demo,
        doctor,
        evaluate,
        export,
        inspect,
        models,
        optimize,
        predict,
        prune,
        quantize,
        report,
        serve,
        train,
        video,
    )

    parser = argparse.ArgumentParser(
        prog="parvis", description="Computer-vision workloads at the speed of the hardware."
    )
    parser.add_argument("--version", action="version", version=f"parvis {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in (
        doctor,
        models,
        inspect,
        data,
        train,
        evaluate,
        predict,
        export,
        quantize,
        prune,
        optimize,
        serve,
        video,
        bench,
        report,
        demo,
    ):
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        args.argv = argv
        # parvis.runtime imports torch (about 2 s); a command that never touches torch (data synth,
        # report) says so with set_defaults(torch_free=True) and starts without it.
        if not getattr(args, "torch_free", False):
            from parvis import runtime

            runtime.configure_host_allocator()
        return int(args.func(args) or 0)
    except ParvisError as exc:
        if debug:
            raise
        print(f"parvis: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("parvis: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not a user mistake: say so in one line, keep the traceback for --debug
        if debug:
            raise
        print(
            f"parvis: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
