"""`parvis video SOURCE... --model MODEL --out DIR`: many streams through one model, batched across
streams, tracked, annotated, written per stream (MP4 + JSONL) with a summary.json."""

from __future__ import annotations

import time

from parvis.cli.model_args import MODEL_HELP, add_model_args, preprocess_from
from parvis.cli.output import console


def add_parser(sub) -> None:
    p = sub.add_parser("video", help="analyse video streams: batch across streams, detect, track, annotate, write")
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="video files (anything FFmpeg decodes), rtsp/http URLs, or folders of images")  # fmt: skip
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--out", required=True, help="output folder: stream_N.mp4, stream_N.jsonl, summary.json")
    p.add_argument("--batch", type=int, default=4, help="frames per batch across streams (default 4)")
    p.add_argument("--push-timeout-ms", type=float, default=20.0,
                   help="a partial batch goes after this long (default 20)")  # fmt: skip
    p.add_argument("--live", action="store_true",
                   help="drop the oldest frames when a stream falls behind (default for network sources; "
                        "files never drop)")  # fmt: skip
    p.add_argument("--queue", type=int, default=4, help="frames buffered per stream (default 4)")
    p.add_argument("--score-threshold", type=float, default=0.3, help="detections shown and tracked (default 0.3)")
    p.add_argument(
        "--track-threshold",
        type=float,
        default=0.4,
        help="least score that starts a track (default 0.4; scores down to 0.1 only continue one)",
    )
    p.add_argument("--no-video", action="store_true", help="write JSONL events and the summary only")
    p.add_argument("--mosaic", action="store_true", help="also write mosaic.mp4: all streams tiled in one video")
    p.add_argument("--retries", type=int, default=5, help="reconnects of a network source, with backoff (default 5)")
    p.add_argument("--runtime", default=None, help="torch|torch-compile|onnxruntime|openvino (default: by file)")
    p.add_argument("--precision", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="auto")
    add_model_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from parvis import runtime
    from parvis.errors import ParvisError
    from parvis.runtimes import open_predictor, require_images
    from parvis.video.pipeline import run_video

    if args.batch < 1 or args.queue < 1:
        raise ParvisError("--batch and --queue must be >= 1")
    device = runtime.resolve_device(args.device)
    model, info = open_predictor(
        args.model, device, args.runtime, args.precision, args.threads, weights=args.weights,
        given=preprocess_from(args),
    )  # fmt: skip
    require_images(model.meta, args.model)
    # The pipeline runs the model under this autocast: an eager checkpoint computes at the precision
    # the table names; an artifact's runtime applies its own (int8 and the like have no autocast).
    named = info.get("precision") or args.precision
    precision = runtime.resolve_precision(named, device, "infer") if named in runtime.PRECISIONS else None
    con = console()
    if info.get("weights") == "random":  # a registered name: boxes and classes will be noise
        con.print(f"{args.model}: registered name without weights: random initialization; pass a checkpoint",
                  markup=False)  # fmt: skip
    live_view = None
    if con.is_terminal:
        from rich.live import Live

        live_view = Live(console=con, refresh_per_second=2)
        live_view.start()
    last = [0.0]

    def progress(states, mux, busy):
        now = time.perf_counter()
        if live_view is not None and now - last[0] > 0.5:
            last[0] = now
            live_view.update(_table(states, mux, busy))

    try:
        summary = run_video(
            args.sources, model, args.out, batch=args.batch, live=True if args.live else None,
            push_timeout_ms=args.push_timeout_ms, queue_size=args.queue, write_video=not args.no_video,
            score_threshold=args.score_threshold, retries=args.retries, progress=progress,
            track_threshold=args.track_threshold, mosaic=args.mosaic, precision=precision, info=info,
        )  # fmt: skip
    finally:
        if live_view is not None:
            live_view.stop()
    from rich.table import Table

    what = summary["precision"] or info.get("precision")  # what the model ran at
    table = Table(title=f"video: {model.meta.name} ({info.get('runtime')} {what}), "
                        f"batch {args.batch}", title_justify="left")  # fmt: skip
    for col in ("stream", "source", "frames", "fps", "dropped", "errors", "latency p50 ms", "status"):
        table.add_column(col, justify="left" if col in ("source", "status") else "right")
    for s in summary["streams"]:
        table.add_row(str(s["stream"]), s["source"], str(s["frames"]), f"{s['fps']:.1f}", str(s["dropped"]),
                      str(s["errors"]), "-" if s["latency_ms_p50"] is None else f"{s['latency_ms_p50']:.0f}",
                      _status(s))  # fmt: skip
    con.print(table)
    busy = ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in summary["stage_busy_s"].items())
    con.print(f"{summary['frames']} frames in {summary['wall_s']:.1f} s: aggregate {summary['aggregate_fps']:.1f} fps, "
              f"mean batch {summary['mean_batch']:.1f}; busy: {busy}")  # fmt: skip
    if summary.get("tracking"):
        t = summary["tracking"]
        con.print(f"tracking vs ground truth: MOTA {t['mota']:.3f}, {t['id_switches']} ID switches, mean IDF1 "
                  f"{t['idf1_mean']:.3f} over {t['gt_boxes']} boxes in {t['streams']} stream(s)")  # fmt: skip
    con.print(f"wrote {args.out}/summary.json")
    failed = [s for s in summary["streams"] if s["error"]]
    return 1 if failed and len(failed) == len(summary["streams"]) else 0


def _status(stream: dict) -> str:
    """ok, or the status with its reason (the source column already names the file)."""
    if stream["status"] == "ok":
        return "ok"
    reason = stream["error"].removeprefix(f"{stream['source']}: ")
    return reason if reason.startswith(stream["status"]) else f"{stream['status']}: {reason}"


def _table(states, mux, busy):
    from rich.table import Table

    caption = "busy: " + ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in busy.items())
    table = Table(title="parvis video", title_justify="left", caption=caption, caption_justify="left")
    for col in ("stream", "frames", "fps", "dropped", "errors", "latency ms", "queue"):
        table.add_column(col, justify="right")
    now = time.perf_counter()
    for i, s in enumerate(states):
        span = (now - s.t_first) if s.t_first else 0
        lat = f"{1000 * sum(s.latencies[-30:]) / len(s.latencies[-30:]):.0f}" if s.latencies else "-"
        table.add_row(str(i), str(s.written), f"{s.written / span:.1f}" if span > 0 else "-", str(mux.dropped[i]),
                      str(s.corrupt + (1 if s.error else 0)), lat, str(mux.depth[i]))  # fmt: skip
    return table
