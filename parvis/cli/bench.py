"""`parvis bench ...`: benchmark suites: `data` (loader vs a torchvision baseline), `train` (precision x
layout, end to end vs model only), `runtime` (inference per runtime x precision)."""

from __future__ import annotations

from parvis.cli.output import console, write_json
from parvis.errors import ParvisError


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ParvisError(f"--workers {text!r}: expected a number or a comma-separated list like 0,1,2") from None
    if not values:
        raise ParvisError(f"--workers {text!r}: expected a number or a comma-separated list like 0,1,2")
    return values


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmark suites")
    bsub = p.add_subparsers(dest="bench_command", metavar="SUITE")
    bsub.required = True
    d = bsub.add_parser("data", help="loader images/s: parvis pipeline vs torchvision ImageFolder+PIL baseline")
    d.add_argument("path", metavar="DIR", help="dataset folder (dataset.yaml or ImageFolder)")
    d.add_argument("--workers", default=None, help="loader workers: N or a list like 0,1,2 (default: 0..usable cores)")
    d.add_argument("--size", type=int, default=224, help="crop size in pixels (default 224)")
    d.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    d.add_argument("--max-images", type=int, default=1024, help="images per timed run (default 1024)")
    d.add_argument("--repeats", type=int, default=3, help="alternating runs per pipeline; the median counts")
    d.add_argument("--split", default="train", help="split to read (default train)")
    d.add_argument("--json", metavar="OUT", default=None, help="write the result as JSON")
    d.set_defaults(func=run_data)

    t = bsub.add_parser("train", help="training img/s per precision x layout, and end to end vs model only")
    t.add_argument("model_pos", nargs="?", metavar="MODEL", help="registered model name (or use --model)")
    t.add_argument("--model", default=None)
    t.add_argument("--size", type=int, default=224, help="input size (default 224)")
    t.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    t.add_argument("--steps", type=int, default=5, help="timed steps per configuration and round (default 5)")
    t.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    t.add_argument("--rounds", type=int, default=2, help="rounds; the median counts (default 2)")
    t.add_argument("--device", default="auto")
    t.add_argument("--data", default=None, help="dataset folder: also time the real loader end to end")
    t.add_argument("--workers", type=int, default=None, help="loader workers for --data")
    t.add_argument("--compile", action="store_true", help="also time auto + torch.compile (slow to compile)")
    t.add_argument("--json", metavar="OUT", default=None)
    t.set_defaults(func=run_train)

    r = bsub.add_parser("runtime", help="inference img/s and latency per runtime x precision (eager, ONNX Runtime)")
    r.add_argument("source", metavar="MODEL", help="registered model name or a parvis checkpoint")
    r.add_argument("--batch", type=int, default=32, help="batch size for throughput (default 32)")
    r.add_argument("--rounds", type=int, default=3, help="round-robin rounds; the median counts (default 3)")
    r.add_argument("--iters", type=int, default=3, help="batches per candidate and round (default 3)")
    r.add_argument("--threads", type=int, default=None, help="threads per runtime (default: torch's)")
    r.add_argument("--data", default=None, help="dataset folder: also an INT8 candidate calibrated on its images")
    r.add_argument("--calib", type=int, default=128, help="INT8 calibration images (default 128)")
    r.add_argument("--json", metavar="OUT", default=None)
    r.set_defaults(func=run_runtime)


def run_data(args) -> int:
    from rich.table import Table

    from parvis.bench.data import bench_data

    con = console()
    workers = _int_list(args.workers) if args.workers is not None else None
    if args.size < 8:
        raise ParvisError(f"--size {args.size} is too small; use at least 8 (e.g. 224)")
    if args.repeats < 1 or args.max_images < 1:
        raise ParvisError("--repeats and --max-images must be at least 1")
    with con.status("benchmarking the data pipeline...") as status:
        result = bench_data(
            args.path,
            size=args.size,
            workers=workers,
            batch_size=args.batch_size,
            max_images=args.max_images,
            repeats=args.repeats,
            split=args.split,
            progress=lambda msg: status.update(f"benchmarking the data pipeline: {msg}"),
        )
    shape = result["source_image_shape"]
    table = Table(
        title=(
            f"loader throughput, {result['crop']} px crops from {shape[1]}x{shape[0]} JPEGs, "
            f"batch {result['batch_size']}, median of {result['repeats']} (img/s)"
        ),
        title_justify="left",
    )
    for col in ("workers", "torchvision baseline", "parvis", "speedup"):
        table.add_column(col, justify="right")
    for row in result["rows"]:
        table.add_row(
            str(row["workers"]),
            f"{row['baseline_img_s']:,.0f}",
            f"{row['parvis_img_s']:,.0f}",
            f"{row['speedup']:.2f}x",
        )
    con.print(table)
    dec = Table(title="JPEG decoders (one core)", title_justify="left")
    for col in ("decoder", "img/s", "mean |diff| vs PIL", f"img/s at >= {result['crop']} px"):
        dec.add_column(col, justify="right")
    for row in result["decoders"]:
        if "error" in row:
            dec.add_row(row["decoder"], "-", "-", row["error"])
            continue
        dec.add_row(
            row["decoder"],
            f"{row['img_s_per_core']:,.0f}",
            f"{row['mean_abs_diff_vs_pil']:.2f}",
            f"{row['reduced_img_s_per_core']:,.0f}" if "reduced_img_s_per_core" in row else "-",
        )
    con.print(dec)
    con.print(
        f"parvis {result['parvis_img_s']:,.0f} img/s vs baseline {result['baseline_img_s']:,.0f} img/s "
        f"with {result['workers']} worker(s): [bold]{result['speedup']:.2f}x[/] (decoder: {result['decoder']})"
    )
    if args.json:
        write_json(args.json, result)
        con.print(f"wrote {args.json}")
    return 0


def run_train(args) -> int:
    from rich.table import Table

    from parvis.bench.train import bench_train

    model = args.model or args.model_pos
    if not model:
        raise ParvisError("name a model: parvis bench train resnet18 (or --model resnet18)")
    con = console()
    with con.status("benchmarking training...") as status:
        result = bench_train(
            model,
            size=args.size,
            batch=args.batch,
            steps=args.steps,
            warmup=args.warmup,
            rounds=args.rounds,
            device=args.device,
            data=args.data,
            compile_too=args.compile,
            workers=args.workers,
            progress=lambda m: status.update(f"benchmarking training: {m}"),
        )
    table = Table(
        title=(
            f"training {model}, {args.size} px, batch {args.batch}, {result['device']}, "
            f"median of {args.rounds} x {args.steps} steps"
        ),
        title_justify="left",
    )
    for col in ("config", "img/s", "vs fp32"):
        table.add_column(col, justify="right" if col != "config" else "left")
    for row in result["rows"]:
        label = row["config"] + (f" (= {row['resolved']})" if "resolved" in row else "")
        table.add_row(label, f"{row['img_s']:,.1f}", f"{row['speedup_vs_fp32']:.2f}x")
    con.print(table)
    e2e = result.get("end_to_end")
    if e2e:
        con.print(
            f"auto on the real loader ({e2e['loader_workers']} workers): {e2e['end_to_end_img_s']:,.1f} img/s "
            f"vs {e2e['model_only_img_s']:,.1f} model only = {e2e['ratio']:.2f}; "
            f"data wait {e2e['data_wait_fraction'] * 100:.0f}% of the loop"
        )
    if args.json:
        write_json(args.json, result)
        con.print(f"wrote {args.json}")
    return 0


def run_runtime(args) -> int:
    from rich.table import Table

    from parvis.bench.runtime import bench_runtime

    if args.batch < 1 or args.rounds < 1 or args.iters < 1:
        raise ParvisError("--batch, --rounds and --iters must be at least 1")
    con = console()
    with con.status("benchmarking runtimes...") as status:
        result = bench_runtime(
            args.source,
            batch=args.batch,
            rounds=args.rounds,
            iters=args.iters,
            threads=args.threads,
            data=args.data,
            calib=args.calib,
            progress=lambda m: status.update(f"benchmarking runtimes: {m}"),
        )
    table = Table(
        title=(
            f"inference {result['model']}, {result['input_size']} px, batch {args.batch}, cpu, "
            f"{result['threads']} threads, median of {args.rounds} rounds"
        )
    )
    for col in ("runtime", "precision", "layout", "img/s", "vs eager fp32", "p50 ms (b1)", "p99 ms (b1)", "max |diff|"):
        table.add_column(col, justify="left" if col in ("runtime", "precision", "layout") else "right")
    for r in result["rows"]:
        table.add_row(
            r["runtime"],
            r["precision"],
            r["layout"],
            f"{r['img_s']:.1f}",
            f"{r['speedup_vs_eager_fp32']:.2f}x",
            f"{r['latency_ms_p50']:.2f}",
            f"{r['latency_ms_p99']:.2f}",
            f"{r['max_abs_err']:.1e}",
        )
    con.print(table)
    if args.json:
        con.print(f"wrote {write_json(args.json, result)}")
    return 0
