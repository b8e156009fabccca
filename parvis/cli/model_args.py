"""The flags every command that takes a MODEL shares: `--weights` and the preprocessing a foreign model needs.

MODEL is a parvis registry name, `torchvision:NAME`, `timm:NAME`, a parvis checkpoint, an .onnx / .pt2
artifact (parvis's or made elsewhere) or a `parvis optimize` folder.
"""

from __future__ import annotations

MODEL_HELP = (
    "registered name (parvis models), torchvision:NAME, timm:NAME, checkpoint, .onnx/.pt2 (also made elsewhere) "
    "or parvis optimize folder"
)
WEIGHTS_HELP = (
    "local weights for a model name (.pth/.pt with weights_only, .safetensors; parvis, torchvision or timm keys), "
    "or `default` / a weights tag found in torch's or Hugging Face's cache (nothing downloads)"
)


def _floats(text: str) -> tuple[float, ...]:
    import argparse

    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give 3 comma-separated numbers, e.g. 0.485,0.456,0.406") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"{text!r}: give 3 comma-separated numbers (R,G,B)")
    return values


def add_model_args(p, weights: bool = True, preprocess: bool = True, size: bool = True) -> None:
    """`--weights` and (for image commands) `--task --size --mean --std --labels --crop-pct --interpolation`."""
    if weights:
        p.add_argument("--weights", default=None, metavar="FILE|default|TAG", help=WEIGHTS_HELP)
    if not preprocess:
        return
    g = p.add_argument_group("preprocessing (for a model that does not carry it, e.g. an ONNX file made elsewhere)")
    g.add_argument("--task", dest="pre_task", choices=("classification", "segmentation", "detection"), default=None)
    if size:
        g.add_argument("--size", dest="pre_size", type=int, default=None, help="input side in pixels")
    g.add_argument("--mean", dest="pre_mean", type=_floats, default=None, metavar="R,G,B")
    g.add_argument("--std", dest="pre_std", type=_floats, default=None, metavar="R,G,B")
    g.add_argument("--labels", dest="pre_labels", default=None, metavar="FILE", help="class names, one per line")
    g.add_argument("--crop-pct", dest="pre_crop_pct", type=float, default=None, help="eval resize = size / crop_pct")
    g.add_argument("--interpolation", dest="pre_interpolation", default=None, help="bilinear|bicubic|nearest")


def preprocess_from(args):
    """The `parvis.artifact.Preprocess` the flags state (None values: not given)."""
    from parvis.artifact import Preprocess, read_labels

    labels = getattr(args, "pre_labels", None)
    return Preprocess(
        task=getattr(args, "pre_task", None),
        size=getattr(args, "pre_size", None),
        mean=getattr(args, "pre_mean", None),
        std=getattr(args, "pre_std", None),
        labels=read_labels(labels) if labels else None,
        crop_pct=getattr(args, "pre_crop_pct", None),
        interpolation=getattr(args, "pre_interpolation", None),
    )
