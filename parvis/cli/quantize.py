"""`parvis quantize ARTIFACT.onnx --data DIR --out FILE`: INT8 static quantization, calibrated on real images."""

from __future__ import annotations

from parvis.cli.model_args import add_model_args, preprocess_from
from parvis.cli.output import console, write_json


def add_parser(sub) -> None:
    p = sub.add_parser("quantize", help="INT8 post-training quantization of an exported ONNX model (ONNX Runtime QDQ)")
    p.add_argument(
        "artifact", metavar="MODEL",
        help="fp32 .onnx (written by parvis export, or made elsewhere), or a PyTorch model (checkpoint, model name "
        "with --weights), exported to ONNX first",
    )  # fmt: skip
    p.add_argument(
        "--data", default=None,
        help="images to calibrate on: a dataset's train split, or any folder of images (image models)",
    )  # fmt: skip
    p.add_argument(
        "--calib-data", default=None, metavar="FILE.npz",
        help="raw-tensor models: samples per input name (first axis); default: seeded random samples",
    )  # fmt: skip
    p.add_argument("--out", required=True, help="INT8 .onnx to write")
    p.add_argument("--calib", type=int, default=128, help="calibration images (default 128)")
    p.add_argument("--method", default="minmax", choices=("minmax", "entropy", "percentile"))
    p.add_argument("--json", metavar="OUT", default=None, help="write the settings and sizes as JSON")
    add_model_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import tempfile
    from pathlib import Path

    from rich.markup import escape

    from parvis.engine.loading import is_model_name, load_model
    from parvis.export import export_model
    from parvis.quantize import quantize_onnx

    given = preprocess_from(args)
    with tempfile.TemporaryDirectory() as tmp:
        source = args.artifact
        if is_model_name(source) or (Path(source).is_file() and Path(source).suffix in (".pt", ".pth")):
            # A PyTorch model: exported (parity checked) to a scratch ONNX file first.
            source = str(Path(tmp) / "model.onnx")
            export_model(load_model(args.artifact, weights=args.weights, given=given), source)
        report = quantize_onnx(
            source, args.out, args.data, n=args.calib, method=args.method, calib_data=args.calib_data, given=given
        )
        report["source"] = args.artifact
    if "output_snr_db" in report:
        check = f"outputs vs fp32 on the calibration samples: SNR {report['output_snr_db']:.1f} dB"
    else:
        check = f"measure it with `parvis eval {escape(report['path'])} --data DIR`"
    console().print(
        f"quantized {report['model']} to INT8 ({report['method']}, {report['calibration_images']} calibration "
        f"samples from {escape(report['calibration_data'])}) -> {escape(report['path'])}, "
        f"{report['size_mb']:.2f} MB; {check}"
    )
    if args.json:
        write_json(args.json, report)
    return 0
