"""`parvis predict MODEL INPUT... --out DIR`: JSON results, PNG masks and overlay images.

MODEL is anything parvis loads (see parvis.cli.model_args): a checkpoint, a registered or zoo name with
`--weights`, an artifact (.onnx, .pt2; foreign ONNX with its preprocessing given) or a `parvis optimize`
output folder (its chosen artifact, runtime, precision and threads)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from parvis.cli.launch import add_launcher_args, relaunch_under_torchrun
from parvis.cli.model_args import MODEL_HELP, add_model_args, preprocess_from
from parvis.cli.output import console
from parvis.errors import ParvisError
from parvis.io import atomic_write_text


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help="predict images, folders or globs with a checkpoint or an optimized artifact")
    p.add_argument("checkpoint", metavar="MODEL", help=MODEL_HELP)
    p.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns (stereo: LEFT RIGHT)"
    )
    p.add_argument("--out", required=True, help="output folder (results.json, masks/, overlays/)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", help="auto: the device's best for checkpoints, the file's own")
    p.add_argument("--runtime", default=None, help="torch|torch-compile|onnxruntime|openvino (default: by file)")
    p.add_argument("--threads", type=int, default=None, help="inference threads (default: the runtime's)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--decode-threads", type=int, default=1, help="threads decoding ahead of the model (default 1)")
    p.add_argument("--no-overlays", action="store_true", help="write results.json (and masks) only")
    p.add_argument("--ema", action="store_true", help="use the EMA weights of a checkpoint")
    p.add_argument("--planes", default=None, help="stereo: 'closer than' masks at these disparities (px), e.g. 8,16,32")
    p.add_argument("--depths", default=None, help="stereo: 'closer than' masks at these depths, e.g. 2m,5m")
    p.add_argument(
        "--focal-baseline", dest="focal_baseline", type=float, default=None,
        help="stereo: the camera's focal length (px) x baseline (m), for --depths and depth in metres",
    )  # fmt: skip
    p.add_argument(
        "--engine", choices=("local", "ray", "torchrun"), default="local",
        help="local (this process), ray (Ray Data: decode tasks, an actor pool, Parquet parts; resumable) or "
        "torchrun (one shard of the inputs per process; --nproc N)",
    )  # fmt: skip
    p.add_argument("--address", default=None, help="ray: the cluster to join (default: a local instance on 127.0.0.1)")
    p.add_argument("--actors", type=int, default=None, help="ray: model actors (default: from the cluster's resources)")
    p.add_argument(
        "--shard-size",
        dest="shard_size",
        type=int,
        default=None,
        help="ray/torchrun: images per Parquet part, the unit a rerun skips when done (default 1000, fewer for "
        "a job of under 16,000 images: at least 16 parts)",
    )
    p.add_argument("--overlays", action="store_true", help="ray/torchrun: also write overlays (off at scale)")
    add_launcher_args(p)
    add_model_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from parvis.api import load
    from parvis.engine.predict import expand_inputs

    if args.engine == "torchrun" and "LOCAL_RANK" not in os.environ:
        if args.nproc < 1:
            raise ParvisError(f"--nproc {args.nproc} must be at least 1")
        return relaunch_under_torchrun(args, args.argv)
    if args.engine != "local":
        return run_at_scale(args, load)

    model = load(
        args.checkpoint, weights=args.weights, device=args.device, runtime=args.runtime, precision=args.precision,
        threads=args.threads, ema=args.ema, given=preprocess_from(args),
    )  # fmt: skip
    info = model.info
    con = console()
    if model.meta.task == "stereo":
        return run_stereo(args, model, con)
    expand_inputs(args.inputs)
    if info.get("weights") == "random":
        con.print(f"{args.checkpoint}: a model name without --weights: random initialization, predictions mean nothing")
    what_runs = f"{info['runtime']} {info['precision']}"
    stats: dict = {}
    results = model.predict(
        args.inputs, out=args.out, batch=args.batch, overlays=not args.no_overlays,
        decode_threads=args.decode_threads, stats=stats,
    )  # fmt: skip
    errors = [r for r in results if "error" in r]
    for r in results[:5]:
        if "error" in r:
            continue
        if "detections" in r:
            what = ", ".join(f"{d['class_name']} {d['score']:.2f}" for d in r["detections"] if d["score"] >= 0.3)
        elif "heatmap" in r:  # inspection
            what = f"{r.get('decision', 'score')} {r['score']:.4g}" + (
                f" (threshold {r['threshold']:.4g})" if "threshold" in r else ""
            )
        else:
            what = r.get("class_name") or ", ".join(
                f"{k} {v:.2f}" for k, v in r["class_shares"].items()
                if v > 0.005 and k != r.get("background", "background")
            )  # fmt: skip
        con.print(f"{r['file']}: {what or 'background only'}")
    summary = {"engine": "local", "model": args.checkpoint, "images": len(results), "errors": len(errors),
               "seconds": round(stats["wall_s"], 3), "img_s": round(stats["images_per_s"], 2)}  # fmt: skip
    atomic_write_text(os.path.join(args.out, "summary.json"), json.dumps(summary, indent=2) + "\n")
    con.print(
        f"predicted {len(results) - len(errors)} image(s) with {what_runs}"
        f" in {stats['wall_s']:.2f} s ({stats['images_per_s']:,.1f} img/s) -> {args.out}/results.json"
        + (f"; {len(errors)} unreadable: " + ", ".join(r["file"] for r in errors) if errors else "")
    )
    return 1 if errors else 0


def run_at_scale(args, load) -> int:
    from parvis.api import predict_at_scale

    con = console()
    if args.actors is not None and args.actors < 1:
        raise ParvisError(f"--actors {args.actors}: must be at least 1")
    model = load(
        args.checkpoint, weights=args.weights, device=args.device, runtime=args.runtime, precision=args.precision,
        threads=args.threads, ema=args.ema, given=preprocess_from(args),
    )  # fmt: skip
    if args.engine == "ray" and model.info.get("weights") == "random":
        con.print(f"{args.checkpoint}: a model name without --weights: random initialization, predictions mean nothing")
    t0 = time.perf_counter()
    last = [0.0]

    def progress(done: int, total: int, img_s: float, what: str = "images") -> None:
        now = time.perf_counter()
        if done < total and now - last[0] < 2:
            return
        last[0] = now
        eta = (total - done) / img_s if img_s > 0 else 0
        con.print(f"[{now - t0:5.0f} s] {done:,}/{total:,} {what}, {img_s:,.1f} img/s, ETA {eta:,.0f} s")

    summary = predict_at_scale(
        model, args.inputs, args.out, args.engine, address=args.address, actors=args.actors, batch=args.batch,
        overlays=args.overlays, shard_size=args.shard_size, decode_threads=args.decode_threads, progress=progress,
        device=args.device,
    )  # fmt: skip
    if summary is None:  # a torchrun rank other than 0
        return 0
    skipped = summary.get("skipped_shards", 0)
    con.print(
        f"{args.engine}: {summary['processed_this_run']:,} image(s) in {summary['seconds']:.1f} s "
        f"({summary['img_s']:,.1f} img/s)"
        + (f" after {summary['startup_s']:.1f} s of actor start-up" if "startup_s" in summary else "")
        + (f", {skipped} finished shard(s) skipped" if skipped else "")
        + f"; {summary['rows']:,} rows for {summary['images']:,} images, {summary['errors']} error(s), "
        f"{summary['duplicates']} duplicate(s), {summary['missing']} missing -> {args.out}/results/ "
        f"(per node: {', '.join(f'{k}: {v:,}' for k, v in sorted(summary['rows_per_node'].items()))})"
    )
    return 1 if summary["duplicates"] or summary["missing"] else 0


def run_stereo(args, model, con) -> int:
    from parvis.engine.predict_stereo import parse_planes, predict_pairs, stereo_pairs
    from parvis.errors import ParvisError

    if len(args.inputs) != 2:
        raise ParvisError(f"a stereo model takes LEFT RIGHT (two images or two folders), got {len(args.inputs)} inputs")
    focal_baseline = args.focal_baseline or model.meta.extra.get("focal_baseline")
    planes = parse_planes(args.planes, args.depths, focal_baseline)
    pairs = stereo_pairs(*args.inputs)
    opened, info = model._open()
    if focal_baseline:
        opened.meta.extra["focal_baseline"] = focal_baseline
    results = predict_pairs(opened, pairs, args.out, model.device, planes)
    for r in results[:5]:
        line = f"{Path(r['left']).name}: disparity {r['disparity_min']:.1f}..{r['disparity_max']:.1f} px"
        if "nearest_m" in r:
            line += f", nearest {r['nearest_m']:.2f} m"
        for plane, p in r.get("planes", {}).items():
            line += f"; closer than {plane} px: {p['closer_share']:.1%}"
        con.print(line + (f" ({r['planes_from']})" if r.get("planes") else ""))
    ms = sum(r["ms"] for r in results) / len(results)
    con.print(f"predicted {len(results)} pair(s) with {info['runtime']} {info['precision']}, {ms:.1f} ms/pair -> "
              f"{args.out}/results.json (disparity/ 16-bit PNG = px x 256, color/, planes/)")  # fmt: skip
    return 0
