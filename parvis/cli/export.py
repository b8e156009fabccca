"""`parvis export CHECKPOINT --format onnx|torch-export --out FILE`: a verified deployable artifact."""

from __future__ import annotations

from parvis.cli.model_args import MODEL_HELP, add_model_args, preprocess_from
from parvis.cli.output import console, write_json


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export a checkpoint (or a registered model) to ONNX or torch.export")
    p.add_argument("checkpoint", metavar="MODEL", help=MODEL_HELP.split(", .onnx")[0] + " (PyTorch models)")
    p.add_argument("--format", default="onnx", choices=("onnx", "torch-export"))
    p.add_argument("--out", required=True, help="artifact file (.onnx, or .pt2 for torch-export)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    p.add_argument("--json", metavar="OUT", default=None, help="write the export report as JSON")
    add_model_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from rich.markup import escape

    from parvis.api import load

    model = load(args.checkpoint, weights=args.weights, device="cpu", given=preprocess_from(args))
    report = model.export(args.out, args.format, opset=args.opset)
    console().print(
        f"exported {report['model']} ({report['task']}) to {escape(report['path'])} \\[{report['format']}, "
        f"{report['size_mb']:.1f} MB, batch dynamic]; parity vs PyTorch fp32 at batch {report['parity_batch']}: "
        f"max abs err {report['parity_max_abs_err']:.2e}"
    )
    if args.json:
        write_json(args.json, report)
    return 0
