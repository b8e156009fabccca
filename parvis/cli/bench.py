"""`parvis bench ...`: benchmark suites: `data` (loader vs a torchvision baseline), `train` (precision x
layout, end to end vs model only), `runtime` (inference per runtime x precision)."""

from __future__ import annotations

from pathlib import Path

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

    r = bsub.add_parser(
        "runtime", help="inference img/s and latency per runtime x precision (eager, ONNX Runtime, OpenVINO)"
    )
    r.add_argument("source", metavar="MODEL", help="model name (registered, torchvision:, timm:), checkpoint or .onnx")
    r.add_argument("--weights", default=None, metavar="FILE", help="weights for a model name (see parvis models)")
    r.add_argument("--batch", type=int, default=32, help="batch size for throughput (default 32)")
    r.add_argument("--rounds", type=int, default=3, help="round-robin rounds; the median counts (default 3)")
    r.add_argument("--iters", type=int, default=3, help="batches per candidate and round (default 3)")
    r.add_argument("--threads", type=int, default=None, help="threads per runtime (default: torch's)")
    r.add_argument("--data", default=None, help="dataset folder: also an INT8 candidate calibrated on its images")
    r.add_argument("--calib", type=int, default=128, help="INT8 calibration images (default 128)")
    r.add_argument("--compile", action="store_true", help="also time torch.compile at auto precision (slow to compile)")
    r.add_argument("--json", metavar="OUT", default=None)
    r.set_defaults(func=run_runtime)
    add_suite_parsers(bsub)
    add_serve_parser(bsub)
    add_video_parser(bsub)
    add_learn_parser(bsub)
    add_stereo_parser(bsub)
    add_inspection_parser(bsub)
    add_scale_out_parser(bsub)


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
    args.source = _model_source(args)
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
            compile_too=args.compile,
            progress=lambda m: status.update(f"benchmarking runtimes: {m}"),
        )
    table = Table(
        title=(
            f"inference {_what({**result, 'device': 'cpu'})}, batch {args.batch}, "
            f"{result['threads']} threads, median of {args.rounds} rounds"
        )
    )
    for col in ("runtime", "precision", "layout", "img/s", "vs first row", "p50 ms (b1)", "p99 ms (b1)", "max |diff|"):
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


# --------------------------------------------------------------------------- inference suites


def _model_source(args) -> str:
    """A zoo name, or any name with --weights, saved once as a checkpoint (removed at exit) so the suites
    run it like a trained model; everything else is passed as given."""
    import atexit
    import shutil
    import tempfile

    from parvis.artifact import Preprocess
    from parvis.engine.loading import as_checkpoint
    from parvis.models.zoo import is_zoo_name

    weights = getattr(args, "weights", None)
    if weights is None and not is_zoo_name(args.source):
        return args.source
    tmp = tempfile.mkdtemp(prefix="parvis-bench-model-")
    atexit.register(shutil.rmtree, tmp, True)
    return as_checkpoint(args.source, tmp, weights, Preprocess(size=getattr(args, "size", None)))


def add_suite_parsers(bsub) -> None:
    """`bench precision | batch | scaling | roofline | partition` (parvis.bench.suites and neighbours)."""
    source_help = "model name (registered, torchvision:, timm:), parvis checkpoint, or an .onnx / .pt2 artifact"

    def common(p, batch: int | None, device: bool = True, threads: bool = True) -> None:
        p.add_argument("source", metavar="MODEL", help=source_help)
        p.add_argument("--weights", default=None, metavar="FILE", help="weights for a model name (see parvis models)")
        p.add_argument("--size", type=int, default=None, help="input size in px (default: the model's; names: 224)")
        if batch is not None:
            p.add_argument("--batch", type=int, default=batch, help=f"batch size (default {batch})")
        if threads:
            p.add_argument("--threads", type=int, default=None, help="threads per runtime (default: torch's)")
        if device:
            p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps (default auto)")
        p.add_argument("--json", metavar="OUT", default=None, help="write the result as JSON")

    p = bsub.add_parser("precision", help="img/s per precision the device supports, speedup and logit diff vs fp32")
    common(p, 32)
    p.add_argument("--rounds", type=int, default=3, help="round-robin rounds; the median counts (default 3)")
    p.add_argument("--iters", type=int, default=3, help="batches per precision and round (default 3)")
    p.add_argument("--data", default=None, help="dataset folder: also ONNX Runtime INT8 calibrated on its images")
    p.add_argument("--calib", type=int, default=64, help="INT8 calibration images (default 64)")
    p.set_defaults(func=run_precision)

    p = bsub.add_parser("batch", help="latency and throughput over batch sizes for one runtime and precision")
    common(p, None)
    p.add_argument("--batches", default="1,2,4,8,16,32,64", help="batch sizes (default 1,2,4,8,16,32,64)")
    p.add_argument(
        "--runtime",
        default=None,
        help="torch, torch-compile, onnxruntime, openvino (default: torch; .onnx: onnxruntime)",
    )
    p.add_argument("--precision", default="auto", help="auto, fp32, tf32, bf16, fp16; onnxruntime/openvino: fp32, int8")
    p.add_argument("--seconds", type=float, default=1.0, help="timing per batch size in seconds (default 1)")
    p.add_argument("--min-iters", type=int, default=3, help="at least this many batches per size (default 3)")
    p.add_argument("--data", default=None, help="dataset folder to calibrate --precision int8 on")
    p.add_argument("--calib", type=int, default=64, help="INT8 calibration images (default 64)")
    p.set_defaults(func=run_batch)

    p = bsub.add_parser("scaling", help="img/s over CPU threads, processes (cores/N threads each) and GPUs")
    common(p, 16, device=False, threads=False)
    p.add_argument("--threads", default=None, help="thread counts, e.g. 1,2,4 (default: 1, 2, 4, ... cores)")
    p.add_argument("--processes", default=None, help="process counts, e.g. 1,2 (default: divisors of cores)")
    p.add_argument("--precision", default="auto", help="auto, fp32, bf16 (default auto)")
    p.add_argument("--seconds", type=float, default=2.0, help="timing per configuration in seconds (default 2)")
    p.add_argument("--rounds", type=int, default=2, help="round-robin rounds for thread counts (default 2)")
    p.set_defaults(func=run_scaling)

    p = bsub.add_parser("roofline", help="achieved GFLOP/s per precision vs the measured peak matmul GFLOP/s")
    common(p, 32)
    p.add_argument("--rounds", type=int, default=3, help="round-robin rounds; the median counts (default 3)")
    p.add_argument("--iters", type=int, default=3, help="batches per precision and round (default 3)")
    p.add_argument("--peak-seconds", type=float, default=1.0, help="matmul peak timing per precision (default 1)")
    p.set_defaults(func=run_roofline)

    p = bsub.add_parser("partition", help="K concurrent jobs on 1/K of the device each vs one job alone")
    common(p, 8, threads=False)
    p.add_argument("--jobs", type=int, default=2, help="concurrent jobs K (default 2)")
    p.add_argument("--seconds", type=float, default=5.0, help="timed window per run in seconds (default 5)")
    p.add_argument("--precision", default="auto", help="auto, fp32, bf16, ... (default auto)")
    p.add_argument("--no-alone", action="store_true", help="skip the run of one job alone on its share")
    p.set_defaults(func=run_partition)


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        raise ParvisError(f"{flag} {text!r}: expected a number or a comma-separated list like 1,2,4")
    return values


def _table(title: str, columns: list[str], left: int = 1):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i < left else "right")
    return table


def _finish(con, args, result: dict, *tables, lines: tuple[str, ...] = ()) -> int:
    for table in tables:
        con.print(table)
    for line in lines:
        con.print(line)
    for note in result.get("notes", []):
        con.print(f"note: {note}", markup=False)  # notes quote commands: ".[peers]" is not markup
    if args.json:
        con.print(f"wrote {write_json(args.json, result)}")
    return 0


def _what(result: dict) -> str:
    size = f"{result['input_size']} px" if result.get("input_size") else "raw tensors"
    return f"{result['model']}, {size}, {result['device']}"


def _num(v, fmt: str = ".2f", none: str = "-") -> str:
    return none if v is None else format(v, fmt)


def run_precision(args) -> int:
    args.source = _model_source(args)
    from parvis.bench.suites import bench_precision

    con = console()
    with con.status("benchmarking precisions...") as status:
        result = bench_precision(
            args.source, args.size, args.batch, args.rounds, args.iters, args.threads, args.device, args.data,
            args.calib, progress=lambda m: status.update(f"benchmarking precisions: {m}"),
        )  # fmt: skip
    table = _table(
        f"precision: {_what(result)}, batch {result['batch']}, {result['threads']} threads, "
        f"median of {result['rounds']} rounds (auto = {result['auto_precision']})",
        ["runtime", "precision", "img/s", "vs fp32", "max |diff| vs fp32"],
        left=2,
    )
    for r in result["rows"]:
        table.add_row(
            r["runtime"],
            r["precision"],
            f"{r['img_s']:,.1f}",
            f"{r['speedup_vs_fp32']:.2f}x",
            f"{r['max_abs_err']:.1e}",
        )
    return _finish(con, args, result, table)


def run_batch(args) -> int:
    args.source = _model_source(args)
    from parvis.bench.suites import bench_batch

    batches = _ints(args.batches, "--batches")
    if Path(args.source).is_dir():  # a parvis optimize folder: sweep its chosen configuration
        from parvis.artifact import chosen_config

        chosen = chosen_config(args.source)
        args.source, args.runtime = chosen["artifact"], args.runtime or chosen["runtime"]
        args.precision = chosen["precision"] if args.precision == "auto" else args.precision
        args.threads = args.threads or chosen["threads"]
    con = console()
    with con.status("benchmarking batch sizes...") as status:
        result = bench_batch(
            args.source, args.size, batches, args.runtime, args.precision, args.threads, args.device, args.seconds,
            args.min_iters, args.data, args.calib, progress=lambda m: status.update(f"benchmarking batch sizes: {m}"),
        )  # fmt: skip
    table = _table(
        f"batch sweep: {_what(result)}, {result['runtime']} {result['precision']}, {result['threads']} threads",
        ["batch", "img/s", "p50 ms", "p90 ms", "ms/image", "batches timed"],
        left=0,
    )
    for r in result["rows"]:
        table.add_row(
            str(r["batch"]), f"{r['img_s']:,.1f}", f"{r['latency_ms_p50']:.2f}", f"{r['latency_ms_p90']:.2f}",
            f"{r['latency_ms_per_image']:.3f}", str(r["iters"]),
        )  # fmt: skip
    best = f"best throughput: {result['best_img_s']:,.1f} img/s at batch {result['best_batch']}"
    return _finish(con, args, result, table, lines=(best,))


def run_scaling(args) -> int:
    args.source = _model_source(args)
    from parvis.bench.scaling import bench_scaling

    threads = _ints(args.threads, "--threads") if args.threads else None
    processes = _ints(args.processes, "--processes") if args.processes else None
    con = console()
    with con.status("benchmarking scaling...") as status:
        result = bench_scaling(
            args.source, args.size, args.batch, threads, processes, args.precision, args.seconds, args.rounds,
            progress=lambda m: status.update(f"benchmarking scaling: {m}"),
        )  # fmt: skip
    table = _table(
        f"scaling: {_what(result)} ({result['usable_cores']} usable cores), {result['runtime']} "
        f"{result['precision']}, batch {result['batch']}",
        ["mode", "processes", "threads each", "img/s", "efficiency"],
    )
    for r in result["rows"]:
        table.add_row(
            r["mode"], str(r["processes"]), str(r.get("threads", "-")), f"{r['img_s']:,.1f}", _num(r["efficiency"])
        )
    how = "efficiency = img/s / (cores used x 1-thread img/s); GPUs: / (GPUs x 1-GPU img/s)"
    return _finish(con, args, result, table, lines=(how,))


def run_roofline(args) -> int:
    args.source = _model_source(args)
    from parvis.bench.roofline import bench_roofline

    con = console()
    with con.status("benchmarking the roofline...") as status:
        result = bench_roofline(
            args.source, args.size, args.batch, args.rounds, args.iters, args.threads, args.device, args.peak_seconds,
            progress=lambda m: status.update(f"benchmarking the roofline: {m}"),
        )  # fmt: skip
    table = _table(
        f"roofline: {_what(result)}, batch {result['batch']}, {result['threads']} threads, "
        f"{result['flops_per_image'] / 1e9:.3f} GFLOP/image, memory {result['memory_bandwidth_gbs']:.1f} GB/s",
        ["precision", "img/s", "achieved GFLOP/s", "peak GFLOP/s", "of peak", "FLOP/byte", "bound"],
    )
    for r in result["rows"]:
        table.add_row(
            r["precision"], f"{r['img_s']:,.1f}", f"{r['achieved_gflops']:.1f}", _num(r["peak_gflops"], ".1f"),
            _num(r["fraction_of_peak"], ".1%"), f"{r['arithmetic_intensity']:.1f}", r["bound"] or "-",
        )  # fmt: skip
    return _finish(con, args, result, table)


def run_partition(args) -> int:
    args.source = _model_source(args)
    from parvis.bench.partition import bench_partition

    con = console()
    with con.status("benchmarking partitions...") as status:
        result = bench_partition(
            args.source, args.size, args.batch, args.jobs, args.seconds, args.precision, args.device,
            alone=not args.no_alone, progress=lambda m: status.update(f"benchmarking partitions: {m}"),
        )  # fmt: skip
    solo, alone = result["solo"], result["alone_same_share"]
    table = _table(
        f"partition: {_what(result)}, {result['jobs']} jobs ({result['mode']}), {result['precision']}, "
        f"batch {result['batch']}, {result['seconds']:.0f} s window",
        ["run", result["share_kind"], "threads", "img/s", "kept vs solo", "kept vs alone on share"],
    )
    table.add_row("solo", str(solo["share"]), str(solo["threads"] or "-"), f"{solo['img_s']:,.1f}", "1.00", "-")
    if alone:
        table.add_row(
            "alone on share", str(alone["share"]), str(alone["threads"] or "-"), f"{alone['img_s']:,.1f}",
            f"{alone['img_s'] / solo['img_s']:.2f}", "1.00",
        )  # fmt: skip
    for r in result["rows"]:
        table.add_row(
            f"job {r['job']}", r["share"], str(r["threads"] or "-"), f"{r['img_s']:,.1f}", f"{r['kept_vs_solo']:.2f}",
            _num(r["kept_vs_alone_same_share"]),
        )  # fmt: skip
    table.add_row("aggregate", "", "", f"{result['aggregate_img_s']:,.1f}", f"{result['aggregate_vs_solo']:.2f}", "")
    return _finish(con, args, result, table)


# --------------------------------------------------------------------------- serving


def add_serve_parser(bsub) -> None:
    p = bsub.add_parser("serve", help="HTTP load sweep over concurrency; --compare-batching: batching on vs off")
    p.add_argument("source", nargs="?", metavar="MODEL", help="with --compare-batching: what to serve (any MODEL "
                   "parvis serve takes); both servers are started on free loopback ports")  # fmt: skip
    p.add_argument("--url", default=None, help="a running server (loopback only), e.g. http://127.0.0.1:8000")
    p.add_argument("--model", default=None, help="model name on --url (default: the first it serves)")
    p.add_argument("--concurrency", default="1,8,32,64", help="client counts (default 1,8,32,64)")
    p.add_argument("--requests", type=int, default=200, help="answered requests per level (default 200)")
    p.add_argument("--time-limit", type=float, default=60.0, help="seconds per level at most (default 60)")
    p.add_argument("--images", default=None, help="folder of request images (default: 8 synthetic 256 px JPEGs)")
    p.add_argument("--image-size", type=int, default=256, help="side of the synthetic JPEGs (default 256)")
    p.add_argument("--api-key", default=None, help="sent as a Bearer token")
    p.add_argument("--compare-batching", action="store_true", help="start MODEL twice: batching on and off")
    p.add_argument("--max-batch-size", type=int, default=32, help="batching server's max batch (default 32)")
    p.add_argument("--max-queue-delay-ms", type=float, default=5.0, help="batching server's delay (default 5)")
    p.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra `parvis serve` argument for both servers, e.g. --serve-arg=--threads --serve-arg=2",
    )
    p.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="another running server measured in the same loop (same request protocol)",
    )
    p.add_argument(
        "--burst",
        type=float,
        default=0.0,
        metavar="FACTOR",
        help="then overload: requests at FACTOR x the best measured throughput for --burst-seconds "
        "(open loop): statuses, 503 latency, memory before/after, service right after",
    )
    p.add_argument("--burst-seconds", type=float, default=3.0, help="length of the --burst (default 3)")
    p.add_argument("--client", default="aiohttp", choices=["aiohttp", "httpx"],
                   help="HTTP client of the load generator (default aiohttp: 0.15 ms CPU per request here, "
                        "httpx 2-6 ms)")  # fmt: skip
    p.add_argument("--soak", type=int, default=0, help="then N requests in a row: resident memory before/after")
    p.add_argument("--json", metavar="OUT", default=None)
    p.set_defaults(func=run_serve)


def run_serve(args) -> int:
    from parvis.bench import serve as bs

    con = console()
    concurrencies = _ints(args.concurrency, "--concurrency")
    if min(concurrencies) < 1 or args.requests < 1:
        raise ParvisError("--concurrency values and --requests must be >= 1")
    images = bs.request_images(8, args.image_size, folder=args.images)
    if args.compare_batching:
        if not args.source:
            raise ParvisError("--compare-batching needs a MODEL to serve (it starts the servers itself)")
        peers = {}
        for item in args.peer:
            name, sep, url = item.partition("=")
            if not sep or not name or not url:
                raise ParvisError(f"--peer {item!r}: expected NAME=URL, e.g. ray=http://127.0.0.1:8001")
            peers[name] = url
        con.print(f"serving {args.source} twice (max batch {args.max_batch_size} and 1) on loopback ...")
        result = bs.compare_batching(
            args.source, images, concurrencies, args.requests, args.time_limit, args.max_batch_size,
            args.max_queue_delay_ms, args.serve_arg, peers,
            progress=lambda r: con.print(
                f"  concurrency {r['concurrency']}: {r['throughput_rps']:.1f} req/s batching, "
                f"{r['off_throughput_rps']:.1f} off, mean batch {_num(r['mean_batch_size'], '.1f')}"
            ),
            burst_factor=args.burst, burst_seconds=args.burst_seconds, soak_n=args.soak, client=args.client,
        )  # fmt: skip
    else:
        if not args.url:
            raise ParvisError("give --url URL of a running server, or MODEL with --compare-batching")
        url = bs.check_loopback(args.url)
        import httpx

        try:
            model = args.model or bs._served_name(url, args.api_key)
        except httpx.HTTPError as exc:
            raise ParvisError(f"{url}: no server answers ({type(exc).__name__}); start one with parvis serve") from None
        served = bs.served_config(url, model, args.api_key)

        def progress(r):
            con.print(f"  concurrency {r['concurrency']}: {r['throughput_rps']:.1f} req/s")

        rows = bs.sweep(url, model, images, concurrencies, args.requests, args.time_limit, args.api_key, progress,
                        client=args.client)  # fmt: skip
        result = {"benchmark": "serve", "url": url, "model": served.get("architecture", model), "served_name": model,
                  "task": served.get("task"), "runtime": served.get("runtime"), "precision": served.get("precision"),
                  "batching": served.get("batching"), "requests_per_level": args.requests, **bs._machine(),
                  "rows": rows}  # fmt: skip
        if args.burst:
            rate = args.burst * max(r["throughput_rps"] for r in rows)
            result["burst"] = {"factor": args.burst, **bs.burst(url, model, images, rate, args.burst_seconds,
                                                                args.api_key, client=args.client)}  # fmt: skip
        if args.soak:
            result["soak"] = bs.soak(url, model, images, args.soak, api_key=args.api_key, client=args.client)
    cols = ["concurrency", "req/s", "p50 ms", "p95 ms", "p99 ms", "mean batch", "errors"]
    if args.compare_batching:
        cols += ["off req/s", "speedup", "ceiling req/s", "ceiling ratio"]
        cols += [f"{k[5:-4]} req/s" for k in result["rows"][0] if k.startswith("peer_") and k.endswith("_rps")]
    table = _table(f"serve: {result['model']} ({result.get('runtime')} {result.get('precision')})", cols)
    for r in result["rows"]:
        cells = [
            str(r["concurrency"]),
            _num(r["throughput_rps"], ".1f"),
            _num(r["p50_ms"], ".1f"),
            _num(r["p95_ms"], ".1f"),
            _num(r["p99_ms"], ".1f"),
            _num(r["mean_batch_size"], ".1f"),
            str(r["errors"]),
        ]
        if args.compare_batching:
            cells += [
                _num(r["off_throughput_rps"], ".1f"),
                _num(r["speedup"]),
                _num(r["ceiling_rps"], ".1f"),
                _num(r["ceiling_ratio"]),
            ]
            cells += [_num(v, ".1f") for k, v in r.items() if k.startswith("peer_") and k.endswith("_rps")]
        table.add_row(*cells)  # fmt: skip
    lines = []
    if args.compare_batching:
        lines.append(
            "ceiling = 1 / (preprocess + inference per image at the level's batch), timed in this process after "
            "each level: "
            + "; ".join(
                f"{r['concurrency']}: {r['preprocess_ms']:.2f} + {r['infer_ms_per_image']:.2f} ms at batch "
                f"{r['ceiling_batch']}"
                for r in result["rows"]
            )  # fmt: skip
        )
    if result.get("c1_overhead_ms") is not None:
        lines.append(f"concurrency 1: p50 is {result['c1_overhead_ms']:.2f} ms above preprocess + batch-1 inference")
    if "burst" in result:
        b = result["burst"]
        lines.append(
            f"burst at {b['factor']:g}x ({b['offered_rps']:.0f} req/s offered for {b['seconds']:g} s, "
            f"{b['burst_requests']} requests): {b['statuses']}; 503 p99 {_num(b['rejected_p99_ms'], '.1f')} ms; "
            f"RSS {_num(b['rss_mb_before'], '.0f')} -> {_num(b['rss_mb_after'], '.0f')} MB; "
            f"after: {b['after_ok']} ok, {b['after_errors']} errors, p50 {_num(b['after_p50_ms'], '.1f')} ms"
        )
    if "soak" in result:
        s = result["soak"]
        lines.append(
            f"soak of {s['requests']}: {s['errors']} errors, RSS {_num(s['rss_mb_before'], '.0f')} -> "
            f"{_num(s['rss_mb_after'], '.0f')} MB"
        )
    return _finish(con, args, result, table, lines=tuple(lines))


# --------------------------------------------------------------------------- video


def add_video_parser(bsub) -> None:
    p = bsub.add_parser("video", help="multi-stream video: aggregate fps vs model-only, ceiling and a sequential peer")
    p.add_argument("source", metavar="MODEL", help="checkpoint, artifact, optimize folder or registered name")
    p.add_argument("--streams", default="1,2,4", help="stream counts (default 1,2,4)")
    p.add_argument("--batch", default=None, help="batch sizes (default: 1 and the stream count)")
    p.add_argument("--clips", default=None, help="folder of clips (parvis data synth --task video output, or *.mp4); "
                   "default: synthetic clips made for the run")  # fmt: skip
    p.add_argument("--frames", type=int, default=150, help="frames per synthetic clip (default 150)")
    p.add_argument("--size", default="320x240", help="synthetic clip size WxH (default 320x240)")
    p.add_argument("--runtime", default=None, help="torch|torch-compile|onnxruntime|openvino (default: by file)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--versus", action="append", default=[], metavar="MODEL",
                   help="also run this model (e.g. the bf16 checkpoint next to an INT8 optimize folder) on the same "
                   "clips, streams and batches; the table compares fps and MOTA (repeatable)")  # fmt: skip
    p.add_argument("--json", metavar="OUT", default=None)
    p.set_defaults(func=run_video_bench)


def run_video_bench(args) -> int:
    import tempfile

    import torch

    from parvis.bench.suites import header
    from parvis.bench.video import bench_video
    from parvis.runtimes import open_predictor

    streams = _ints(args.streams, "--streams")
    batches = _ints(args.batch, "--batch") if args.batch else None
    opened = [open_predictor(source, torch.device("cpu"), args.runtime if i == 0 else None, "auto", args.threads)
              for i, source in enumerate([args.source, *args.versus])]  # fmt: skip
    model, info = opened[0]
    for (other, _), source in zip(opened[1:], args.versus, strict=True):
        if other.meta.task != model.meta.task:
            raise ParvisError(f"--versus {source}: a {other.meta.task} model; {args.source} is a {model.meta.task} one")
    con = console()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        clips = Path(args.clips) if args.clips else None
        if clips is None:
            from parvis.data.video_synth import synthesize_video

            try:
                width, height = (int(v) for v in args.size.lower().split("x"))
            except ValueError:
                raise ParvisError(f"--size {args.size!r}: expected WxH, e.g. 320x240") from None
            clips = Path(tmp) / "clips"
            synthesize_video(clips, max(streams), args.frames, width, height)
        elif not clips.is_dir():
            raise ParvisError(f"--clips {clips}: no such folder")
        for (each, each_info), source in zip(opened, [args.source, *args.versus], strict=True):
            label = _video_label(source, each_info)
            if len(opened) > 1:
                con.print(f"{label}:")
            runs.append((source, each_info, bench_video(each, clips, streams, batches, progress=lambda r: con.print(
                f"  {r['streams']} stream(s), batch {r['batch']}: {r['aggregate_fps']:.1f} fps"))))  # fmt: skip
    source, info, result = runs[0]
    result = {**header("video", args.source, model.meta, max(streams), args.threads, torch.device("cpu")),
              "runtime": info.get("runtime"), "precision": info.get("precision"), **result,
              "ceiling_kind": "cpu: 1 / sum of stage times per frame"}  # fmt: skip
    cols = ["model", "streams", "batch", "fps", "model-only img/s", "ceiling fps", "ceiling ratio", "peer fps",
            "vs peer", "MOTA", "ID sw"]  # fmt: skip
    from parvis import runtime as rt

    what = info.get("precision") or rt.resolve_precision("auto", torch.device("cpu"), "infer").name
    result["precision"] = what
    # The headline of the first model: its most streams at its largest batch (what the table's last row shows).
    head = max(result["rows"], key=lambda r: (r["streams"], r["batch"]))
    result.update({k: head.get(k) for k in ("aggregate_fps", "ceiling_ratio", "mota")})
    result["versus"] = [
        {"source": src, "runtime": inf.get("runtime"), "precision": inf.get("precision"), "rows": res["rows"]}
        for src, inf, res in runs[1:]
    ]
    table = _table(f"video: {model.meta.name} ({info.get('runtime')} {what})", cols)
    for src, inf, res in runs:
        for r in res["rows"]:
            table.add_row(_video_label(src, inf), str(r["streams"]), str(r["batch"]), _num(r["aggregate_fps"], ".1f"),
                          _num(r["model_only_img_s"], ".1f"), _num(r["ceiling_fps"], ".1f"), _num(r["ceiling_ratio"]),
                          _num(r["peer_fps"], ".1f"), _num(r["vs_peer"]), _num(r.get("mota"), ".3f"),
                          str(r.get("id_switches", "-")))  # fmt: skip
    r0 = result["rows"][-1]
    lines = [
        (
            f"per frame, each stage alone (last row): decode {r0['decode_ms']:.2f} ms, inference "
            f"{r0['infer_ms']:.2f} ms, tracking {r0['track_ms']:.2f} ms, annotate + encode {r0['encode_ms']:.2f} ms"
        )
    ]
    for src, inf, res in runs[1:]:
        other = max(res["rows"], key=lambda r: (r["streams"], r["batch"]))
        ratio = head["aggregate_fps"] / other["aggregate_fps"] if other["aggregate_fps"] else float("nan")
        line = (f"{_video_label(args.source, info)} vs {_video_label(src, inf)} at {head['streams']} stream(s), "
                f"batch {head['batch']}: {ratio:.2f}x the fps")  # fmt: skip
        if head.get("mota") is not None and other.get("mota") is not None:
            line += f", MOTA {head['mota']:.3f} vs {other['mota']:.3f} ({head['mota'] - other['mota']:+.3f})"
        lines.append(line)
    return _finish(con, args, result, table, lines=tuple(lines))


def _video_label(source: str, info: dict) -> str:
    return f"{Path(source).name} ({info.get('runtime')} {info.get('precision')})"


# --------------------------------------------------------------------------- learn


def add_learn_parser(bsub) -> None:
    p = bsub.add_parser("learn", help="accuracy vs wall-clock time: parvis recipe=auto vs a plain PyTorch loop")
    p.add_argument("--task", choices=("classification", "segmentation"), default="classification")
    p.add_argument("--model", required=True, help="registered model name (both sides train this network)")
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--time", default="3m", help="training budget per side, e.g. 90s, 3m (default 3m)")
    p.add_argument("--target", type=float, default=None, help="also report the seconds each side needs to reach it")
    p.add_argument("--out", default=None, help="folder for both runs (default: a temporary one)")
    p.add_argument("--peer", default=None, help="the peer loop (default benchmarks/peer_train.py of the repository)")
    p.add_argument("--json", metavar="OUT", default=None)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="TrainConfig keys for the parvis side")
    p.set_defaults(func=run_learn)


def run_learn(args) -> int:
    from parvis.bench.learn import bench_learn

    con = console()
    con.print(f"bench learn: {args.model} on {args.data}, {args.time} per side (parvis first, then the peer)")
    result = bench_learn(args.task, args.model, args.data, args.time, args.target, args.out, args.peer,
                         tuple(args.overrides), quiet=True)  # fmt: skip
    metric = result["metric"]
    table = _table(f"learn: {args.model}, {result['task']} ({metric}), {result['threads']} threads",
                   ["engine", "recipe", f"final {metric}", "train s", "img/s", "s to target", "s to peer's final",
                    "vs peer time"])  # fmt: skip
    for r in result["rows"]:
        table.add_row(r["engine"], r["recipe"], _num(r["final_metric"], ".4f"), _num(r["train_s"], ".0f"),
                      _num(r["img_s"], ".0f"), _num(r["time_to_target_s"], ".0f"),
                      _num(r["time_to_peer_final_s"], ".0f"), _num(r["vs_peer_time"]))  # fmt: skip
    lines = [f"parvis {p['epoch']} epochs" for p in result["parvis"]["curve"][-1:]]
    lines.append("auto: " + "; ".join(line[6:].split(" (")[0] for line in result["parvis"]["auto"]))
    return _finish(con, args, result, table, lines=tuple(lines))


# --------------------------------------------------------------------------- scale-out


def add_scale_out_parser(bsub) -> None:
    p = bsub.add_parser("scale-out", help="one predict job on every engine: single process, Ray actors, torchrun ranks")
    p.add_argument("model", metavar="MODEL", help="anything parvis predict loads")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or globs")
    p.add_argument("--actors", default="1,2", help="Ray actor counts to run (default 1,2)")
    p.add_argument("--ranks", default="1,2", help="torchrun process counts to run (default 1,2)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=None, help="input size for a model name without metadata")
    p.add_argument("--weights", default=None, metavar="FILE", help="weights for a model name")
    p.add_argument("--json", metavar="OUT", default=None)
    p.set_defaults(func=run_scale_out)


def run_scale_out(args) -> int:
    from parvis.bench.scale_out import bench_scale_out

    extra = (["--size", str(args.size)] if args.size else []) + (["--weights", args.weights] if args.weights else [])
    con = console()
    with con.status("bench scale-out...") as status:
        result = bench_scale_out(args.model, args.inputs, _int_list(args.actors), _int_list(args.ranks), args.batch,
                                 extra, progress=lambda m: status.update(f"bench scale-out: {m}"))  # fmt: skip
    table = _table(
        f"scale-out: {result['images']:,} images, {args.model}, batch {args.batch}",
        ["engine", "workers", "ok", "img/s", "img/s wall", "vs 1 process", "overhead ms/img", "peak RSS MB"],
    )
    for r in result["rows"]:
        table.add_row(r["engine"], str(r["workers"]), "yes" if r["ok"] else "NO", _num(r["img_s"], ".1f"),
                      _num(r["img_s_wall"], ".1f"), _num(r.get("vs_single_process"), ".2f"),
                      _num(r.get("overhead_ms"), ".2f"), _num(r["peak_rss_mb"], ".0f"))  # fmt: skip
    con.print(table)
    for r in result["rows"]:
        if not r["ok"]:
            con.print(
                f"{r['engine']} x{r['workers']} failed (exit {r['exit_code']}): {r.get('stderr_tail', '')[-300:]}"
            )
    if args.json:
        write_json(args.json, result)
        con.print(f"wrote {args.json}")
    return 0 if all(r["ok"] for r in result["rows"]) else 1


# --------------------------------------------------------------------------- inspection


def add_inspection_parser(bsub) -> None:
    p = bsub.add_parser("inspection", help="inspection: parvis's PatchCore vs anomalib's, same data and weights "
                        "(image/pixel AUROC, fit s, ms/image)")  # fmt: skip
    p.add_argument(
        "--data", required=True, help="inspection folder (MVTec AD layout: train/good, test/, ground_truth/)"
    )
    p.add_argument("--backbone", default="mobilenet_v2", help="backbone name (anomalib's row: mobilenet_v2)")
    p.add_argument("--weights", default=None, help="the backbone's weights file (torchvision layout)")
    p.add_argument("--size", type=int, default=256, help="image side both methods resize to (default 256)")
    p.add_argument("--coreset", type=float, default=0.01, help="memory bank share of the patches, both methods")
    p.add_argument("--threads", type=int, default=None, help="threads for both (default: all cores)")
    p.add_argument("--no-peer", dest="peer", action="store_false", help="parvis's row only")
    p.add_argument("--seed", type=int, default=0, help="seed of both coreset searches (default 0)")
    p.add_argument("--json", metavar="OUT", default=None)
    p.set_defaults(func=run_inspection)


def run_inspection(args) -> int:
    from parvis.bench.inspection import bench_inspection

    con = console()
    with con.status("bench inspection...") as status:
        result = bench_inspection(args.data, args.backbone, args.weights, args.size, args.coreset, args.threads,
                                  args.peer, progress=lambda m: status.update(f"bench inspection: {m}"),
                                  seed=args.seed)  # fmt: skip
    table = _table(
        f"inspection: {result['backbone']} at {result['image_size']} px, coreset {result['coreset']:.0%} "
        f"(seed {result['seed']}), {result['threads']} threads, eager fp32 on the CPU",
        ["method", "image AUROC", "pixel AUROC", "PRO", "fit s", "ms/image", "memory bank", "train", "test"],
    )
    for r in result["rows"]:
        table.add_row(r["method"], _num(r["image_auroc"], ".4f"), _num(r["pixel_auroc"], ".4f"),
                      _num(r.get("pro"), ".4f"), _num(r["fit_s"], ".1f"), _num(r["ms_per_image"], ".1f"),
                      str(r["memory_bank"]), str(r["n_train"]), str(r["n_test"]))  # fmt: skip
    lines = []
    versus = result["rows"][0].get("vs_anomalib")
    if versus:
        lines.append(f"parvis vs anomalib: image AUROC {versus['image_auroc_diff']:+.4f}, pixel AUROC "
                     f"{versus['pixel_auroc_diff']:+.4f}, {versus['ms_ratio']:.2f}x the time per image, "
                     f"{versus['fit_ratio']:.2f}x the fit time")  # fmt: skip
    return _finish(con, args, result, table, lines=tuple(lines))


# --------------------------------------------------------------------------- stereo


def add_stereo_parser(bsub) -> None:
    p = bsub.add_parser("stereo", help="stereo: OpenCV StereoSGBM vs learned models on the same pairs (EPE, bad-3, ms)")
    p.add_argument("models", nargs="+", metavar="MODEL_OR_CHECKPOINT",
                   help="parvis stereo checkpoints, artifacts or optimize folders")  # fmt: skip
    p.add_argument("--data", required=True, help="stereo dataset folder (left/ right/ disparity/ per split)")
    p.add_argument("--split", default="val")
    p.add_argument("--threads", type=int, default=None, help="threads for every method (default: all cores)")
    p.add_argument("--max-pairs", dest="max_pairs", type=int, default=None, help="score only the first N pairs")
    p.add_argument("--json", metavar="OUT", default=None)
    p.set_defaults(func=run_stereo)


def run_stereo(args) -> int:
    import torch

    from parvis.bench.stereo import bench_stereo, open_stereo_model

    threads = args.threads or torch.get_num_threads()
    con = console()
    opened = [open_stereo_model(source, threads) for source in args.models]
    with con.status("bench stereo...") as status:
        result = bench_stereo(opened, args.data, args.split, threads, args.max_pairs,
                              progress=lambda m: status.update(f"bench stereo: {m}"))  # fmt: skip
    table = _table(
        f"stereo: {result['pairs']} {result['split']} pairs at {result['size']}, max disparity "
        f"{result['max_disp']}, {threads} threads",
        ["method", "runtime", "precision", "EPE px", "bad-1 %", "bad-3 %", "D1 %", "ms p50", "ms p95",
         "ms/plane", "plane acc"],
    )  # fmt: skip
    for r in result["rows"]:
        table.add_row(r["method"], str(r["runtime"]), str(r["precision"]), _num(r["epe"], ".3f"),
                      _num(r["bad1"]), _num(r["bad3"]), _num(r["d1"]), _num(r["ms_p50"], ".1f"),
                      _num(r["ms_p95"], ".1f"), _num(r.get("ms_per_plane_p50"), ".1f"),
                      _num(r.get("plane_acc"), ".4f"))  # fmt: skip
    lines = []
    sgbm = result["rows"][0]
    lines.append(f"sgbm answered {sgbm['density']:.1%} of pixels; its holes are filled (KITTI background "
                 "interpolation) and scored like every other pixel")  # fmt: skip
    for r in result["rows"][1:]:
        verdict = "beats" if r["epe"] < sgbm["epe"] and r["bad3"] < sgbm["bad3"] else "does not beat"
        lines.append(f"{r['method']} {verdict} sgbm (EPE {r['epe']:.3f} vs {sgbm['epe']:.3f} px, bad-3 "
                     f"{r['bad3']:.2f} vs {sgbm['bad3']:.2f}%)")  # fmt: skip
        if "plane_cost_ratio" in r:
            lines.append(f"{r['method']}: one proximity plane costs {r['plane_cost_ratio']:.2f}x a dense "
                         f"inference ({r['ms_per_plane_p50']:.1f} vs {r['ms_p50']:.1f} ms)")  # fmt: skip
    return _finish(con, args, result, table, lines=tuple(lines))
