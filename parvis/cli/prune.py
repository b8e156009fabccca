"""`parvis prune CHECKPOINT --data DIR --ratio 0.3 --epochs N --out DIR`: remove channels, fine-tune, measure."""

from __future__ import annotations

from parvis.cli.model_args import add_model_args, preprocess_from
from parvis.cli.output import console


def add_parser(sub) -> None:
    p = sub.add_parser("prune", help="structured channel pruning of a checkpoint, fine-tuned and measured")
    p.add_argument(
        "checkpoint", metavar="MODEL",
        help="a checkpoint written by parvis train, or a model name (registered, torchvision:, timm:) with --weights",
    )  # fmt: skip
    p.add_argument("--data", required=True, help="dataset folder: fine-tuning uses its train split, the metric its val")
    p.add_argument("--out", required=True, help="folder for pruned.pt and prune.json")
    p.add_argument("--ratio", type=float, default=0.3, help="share of channels to remove, in (0, 1) (default 0.3)")
    p.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs after pruning, 0 for none (default 1)")
    p.add_argument(
        "--scope", default="uniform", choices=("uniform", "global"), help="same ratio per layer, or ranked globally"
    )
    p.add_argument("--round-to", type=int, default=None, help="keep channel counts multiples of this (e.g. 8)")
    p.add_argument("--lr", type=float, default=None, help="fine-tuning learning rate (default: the checkpoint's)")
    p.add_argument("--batch", type=int, default=None, help="fine-tuning batch size (default: the checkpoint's)")
    p.add_argument("--no-timing", action="store_true", help="skip the CPU latency and throughput comparison")
    add_model_args(p, size=False)
    p.set_defaults(func=run)


def _count(n: float) -> str:
    return f"{n / 1e9:.2f} G" if n >= 1e9 else f"{n / 1e6:.2f} M"


def run(args) -> int:
    from pathlib import Path

    from rich.markup import escape
    from rich.table import Table

    from parvis.engine.loading import as_checkpoint
    from parvis.prune import prune_checkpoint
    from parvis.runtimes import time_checkpoints

    con = console()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    # A model name (with --weights) is saved once as a checkpoint next to the result, then pruned like one.
    source = as_checkpoint(args.checkpoint, args.out, args.weights, preprocess_from(args))
    report = prune_checkpoint(
        source,
        args.ratio,
        args.data,
        args.epochs,
        args.out,
        scope=args.scope,
        round_to=args.round_to,
        lr=args.lr,
        batch=args.batch,
        timer=None if args.no_timing else time_checkpoints,
        quiet=False,
        progress=lambda m: con.print(f"[dim]{escape(m)}[/dim]"),
    )
    name, metric = report["metric_name"], report["metric"]
    table = Table(
        title=(
            f"pruned {report['model']} ({report['task']}): {report['ratio']:.0%} of channels, {report['scope']}, "
            f"L2 magnitude, fine-tuned {report['finetune']['epochs']} epoch(s)"
        ),
        title_justify="left",
    )
    for col in ("", "before", "after", "change"):
        table.add_column(col, justify="left" if not col else "right")
    for key, label in (("params", "parameters"), ("macs", f"MACs (batch 1, {report['input_size']} px)")):
        b, a = report[key]["before"], report[key]["after"]
        table.add_row(label, _count(b), _count(a), f"{a / b:.2f}x")
    table.add_row(
        f"val {name}, no fine-tune", f"{metric['before']:.4f}", f"{metric['pruned']:.4f}",
        f"{metric['pruned'] - metric['before']:+.4f}",
    )  # fmt: skip
    table.add_row(
        f"val {name}", f"{metric['before']:.4f}", f"{metric['finetuned']:.4f}",
        f"{metric['finetuned'] - metric['before']:+.4f}",
    )  # fmt: skip
    timing = report["timing"]
    rows = {(r["model"], r["precision"]): r for r in timing["rows"]}
    for precision in dict.fromkeys(r["precision"] for r in timing["rows"]):
        b, a = rows[("before", precision)], rows[("after", precision)]
        table.add_row(
            f"{precision} p50 ms (batch 1)", f"{b['latency_ms_p50']:.2f}", f"{a['latency_ms_p50']:.2f}",
            f"{a['latency_ms_p50'] / b['latency_ms_p50']:.2f}x",
        )  # fmt: skip
        table.add_row(
            f"{precision} img/s (batch {timing['batch']})", f"{b['img_s']:,.1f}", f"{a['img_s']:,.1f}",
            f"{a['speedup']:.2f}x",
        )  # fmt: skip
    con.print(table)
    if timing["rows"]:
        con.print(f"timed on the CPU with {timing['threads']} threads, eager PyTorch, alternating before/after")
    con.print(f"wrote {escape(report['checkpoint'])} and prune.json beside it")
    return 0
