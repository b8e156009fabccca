"""`parvis data synth` (shapes images, video clips, stereo pairs, inspection parts), `data check` (find every bad file),
`data convert` (detection)."""

from __future__ import annotations

from parvis.cli.output import console, write_json


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="make and check datasets")
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    dsub.required = True

    s = dsub.add_parser(
        "synth",
        help="generate the shapes dataset (classification, segmentation, detection), video clips, stereo pairs or "
        "inspection parts with defects",
    )
    s.add_argument(
        "--task",
        choices=("image", "video", "stereo", "inspection"),
        default="image",
        help="image: the shapes scenes (default); video: MP4 clips with MOTChallenge ground-truth tracks; "
        "stereo: rectified left/right pairs with disparity ground truth; inspection: surfaces with defects and "
        "their masks in MVTec AD's layout",
    )
    s.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    s.add_argument(
        "--n",
        type=int,
        default=None,
        help="number of scenes (default 1000), video clips (4), stereo pairs (2000) or inspection images (400)",
    )
    s.add_argument(
        "--size",
        default=None,
        help="image side in pixels (default 128; inspection 256); video: WxH (default 320x240); "
        "stereo: WxH (default 256x128)",
    )
    s.add_argument("--max-disp", type=int, default=None, help="stereo: largest disparity in pixels (default 48)")
    s.add_argument(
        "--texture",
        default=None,
        help="inspection: the surface, metal (default), fabric, wood, or brick, grass, gravel (need scikit-image)",
    )
    s.add_argument("--seed", type=int, default=0, help="seed; the same seed gives byte-identical files")
    s.add_argument("--val-fraction", type=float, default=None, help="share of scenes in the val split (default 0.2)")
    s.add_argument("--frames", type=int, default=None, help="video: frames per clip (default 150)")
    s.add_argument("--fps", type=float, default=None, help="video: frames per second (default 15)")
    s.add_argument("--workers", type=int, default=None, help="processes (default: all usable cores)")
    s.set_defaults(func=run_synth, torch_free=True)

    c = dsub.add_parser("check", help="decode every file and report each problem by file name")
    c.add_argument(
        "path", metavar="DIR", help="a dataset folder (dataset.yaml, ImageFolder, images+masks, COCO, stereo)"
    )
    c.add_argument("--workers", type=int, default=None, help="processes (default: all usable cores)")
    c.add_argument("--json", metavar="OUT", default=None, help="also write the summary and problems as JSON")
    c.set_defaults(func=run_check)

    v = dsub.add_parser("convert", help="rewrite a detection dataset (COCO, YOLO, VOC) as COCO or YOLO")
    v.add_argument("src", metavar="SRC", help="a detection dataset folder (COCO JSON, YOLO data.yaml, Pascal VOC)")
    v.add_argument("--to", required=True, choices=("coco", "yolo"), help="the layout to write")
    v.add_argument("--out", required=True, help="output folder (must not exist or be empty); images are hard-linked")
    v.set_defaults(func=run_convert)


def run_synth(args) -> int:
    from parvis.errors import ParvisError

    if args.max_disp is not None and args.task != "stereo":
        raise ParvisError("--max-disp applies to --task stereo only")
    if args.texture is not None and args.task != "inspection":
        raise ParvisError("--texture applies to --task inspection only")
    if args.task == "video":
        return run_synth_video(args)
    for flag, value in (("--frames", args.frames), ("--fps", args.fps)):
        if value is not None:
            raise ParvisError(f"{flag} applies to --task video only")
    if args.task == "stereo":
        return run_synth_stereo(args)
    if args.task == "inspection":
        return run_synth_inspection(args)
    from parvis.data.synth import synthesize

    size = _whole_size(args.size, 128)
    con = console()
    result = synthesize(
        args.out,
        n=1000 if args.n is None else args.n,
        size=size,
        seed=args.seed,
        val_fraction=0.2 if args.val_fraction is None else args.val_fraction,
        workers=args.workers,
        progress=con.is_terminal,
    )
    con.print(_synth_line(args.out, result))
    return 0


def run_synth_video(args) -> int:
    import re

    from parvis.data.video_synth import check_size, synthesize_video
    from parvis.errors import ParvisError

    if args.val_fraction is not None:
        raise ParvisError("--val-fraction applies to --task image only")
    width, height = 320, 240
    if args.size is not None:
        match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", args.size)
        if not match:
            raise ParvisError(f"--size for video must be WIDTHxHEIGHT in pixels, like 320x240; got {args.size!r}")
        width, height = int(match[1]), int(match[2])
        try:
            check_size(width, height)
        except ParvisError as exc:
            raise ParvisError(f"--size {args.size}: {exc}") from None
    con = console()
    result = synthesize_video(
        args.out,
        n_clips=4 if args.n is None else args.n,
        frames=150 if args.frames is None else args.frames,
        width=width,
        height=height,
        fps=15 if args.fps is None else args.fps,
        seed=args.seed,
        workers=args.workers,
        progress=con.is_terminal,
    )
    con.print(
        f"wrote {result['clips']} clips x {result['frames']} frames at {width}x{height}, {result['fps']:g} fps "
        f"({result['codec']}) to {args.out} in {result['seconds']:.1f} s ({result['frames_per_s']:.0f} frames/s)"
    )
    return 0


def run_synth_stereo(args) -> int:
    import re

    from parvis.data.stereo_synth import synthesize_stereo
    from parvis.errors import ParvisError

    size = (256, 128)
    if args.size is not None:
        match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", args.size)
        if not match:
            raise ParvisError(f"--size for stereo must be WIDTHxHEIGHT in pixels, like 256x128; got {args.size!r}")
        size = (int(match[1]), int(match[2]))
    con = console()
    result = synthesize_stereo(
        args.out,
        n=2000 if args.n is None else args.n,
        size=size,
        max_disp=48 if args.max_disp is None else args.max_disp,
        seed=args.seed,
        workers=args.workers,
        progress=con.is_terminal,
        val_fraction=0.2 if args.val_fraction is None else args.val_fraction,
    )
    splits = ", ".join(f"{k} {v}" for k, v in result["splits"].items())
    con.print(
        f"wrote {result['n']} stereo pairs ({splits}) at {size[0]}x{size[1]}, disparity up to {result['max_disp']} px "
        f"({result['valid_fraction']:.0%} of pixels with ground truth) to {args.out} in {result['seconds']:.1f} s "
        f"({result['pairs_per_s']:.0f} pairs/s)"
    )
    return 0


def run_synth_inspection(args) -> int:
    from parvis.data.inspection_synth import synthesize_inspection
    from parvis.errors import ParvisError

    if args.val_fraction is not None:
        raise ParvisError("--val-fraction does not apply to --task inspection: its splits are fixed (see the docs)")
    size = _whole_size(args.size, 256)
    con = console()
    result = synthesize_inspection(
        args.out,
        n=400 if args.n is None else args.n,
        size=size,
        texture=args.texture or "metal",
        seed=args.seed,
        workers=args.workers,
        progress=con.is_terminal,
    )
    splits = ", ".join(f"{split} {sum(c.values())} ({c.get('good', 0)} good)" for split, c in result["counts"].items())
    con.print(
        f"wrote {result['n']} {result['texture']} parts ({splits}) at {size} px to {args.out} in "
        f"{result['seconds']:.1f} s ({result['images_per_s']:.0f} img/s); defects cover "
        f"{result['defect_area_median']:.2%} of an image (median)"
    )
    return 0


def _synth_line(out: str, result: dict) -> str:
    splits = result.get("splits", {})
    split_text = ", ".join(f"{k} {v}" for k, v in splits.items())
    return (
        f"wrote {result['n']} scenes ({split_text}) at {result['size']} px to {out} "
        f"in {result['seconds']:.1f} s ({result['images_per_s']:.0f} img/s)"
    )


def run_convert(args) -> int:
    from parvis.data.convert import convert_detection

    con = console()
    result = convert_detection(args.src, args.to, args.out, progress=con.is_terminal)
    splits = ", ".join(f"{k} {v}" for k, v in result["splits"].items())
    how = "hard-linked" if result["linked"] == result["images"] else f"{result['linked']} hard-linked, rest copied"
    con.print(
        f"wrote {result['images']} images ({splits}; {how}) and {result['boxes']} boxes of "
        f"{len(result['classes'])} classes in the {result['to'].upper()} layout to {args.out} "
        f"in {result['seconds']:.1f} s"
    )
    if result["dropped_ignored"]:
        con.print(f"left out {result['dropped_ignored']} crowd/difficult objects: YOLO labels have no 'ignore' flag")
    return 0


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


def _whole_size(value, default: int) -> int:
    """--size as a whole number of pixels (`default` when not given), else a one-line error."""
    from parvis.errors import ParvisError

    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ParvisError(f"--size must be a whole number of pixels, got {value!r}") from None
