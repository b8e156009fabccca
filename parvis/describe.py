"""What parvis can name (`parvis models`) and what it knows about any model (`parvis inspect`).

    list_models(task="classification", source="timm")   # [{"name": "timm:resnet18", "task": ..., "source": ...}]
    inspect_model("torchvision:mobilenet_v2", weights="mobilenet_v2-b0353104.pth")
    inspect_model("model.onnx")                           # a foreign file: its graph's inputs and outputs

`inspect_model` reports the source, task, inputs and outputs, the preprocessing with where each value
came from (checkpoint, torchvision meta, timm cfg, flag, sidecar, graph), the classes, parameters,
FLOPs at the input size (one image, counted with torch's FlopCounterMode on the PyTorch model; for an
artifact, on the architecture its metadata names), and for artifacts the precision and stored parity.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from parvis.artifact import (
    TENSOR_TASK,
    Preprocess,
    chosen_config,
    graph_io,
    is_optimize_folder,
    load_onnx,
    parity,
    quantized_layers,
    read_metadata,
)
from parvis.engine.loading import is_model_name, load_model
from parvis.errors import ParvisError
from parvis.models import MODELS, ModelMeta
from parvis.models.zoo import timm_names, torchvision_names

SOURCES = ("parvis", "torchvision", "timm")


def list_models(task: str | None = None, source: str | None = None) -> list[dict]:
    """Every model name parvis can build, optionally of one task and one source."""
    if source is not None and source not in SOURCES:
        raise ParvisError(f"--source {source!r} is unknown; choose one of {', '.join(SOURCES)}")
    rows: list[dict] = []
    if source in (None, "parvis"):
        rows += [{"name": n, "task": MODELS.info(n)["task"], "source": "parvis"} for n in MODELS.names()]
    if source in (None, "torchvision"):
        tv = torchvision_names().items()
        rows += [{"name": f"torchvision:{n}", "task": t, "source": "torchvision"} for n, t in tv]
    if source in (None, "timm"):
        try:
            names = timm_names()
        except ParvisError:
            names = ()  # timm not installed: nothing to list from it
        rows += [{"name": f"timm:{n}", "task": "classification", "source": "timm"} for n in names]
    if task is not None:
        rows = [r for r in rows if r["task"] == task]
    return rows


def _preprocess(meta: ModelMeta, default: str) -> dict:
    prov = meta.extra.get("provenance", {})
    if meta.task == TENSOR_TASK:
        return {}
    values = {
        "input_size": meta.input_size,
        "mean": list(meta.mean),
        "std": list(meta.std),
        "crop_pct": meta.extra.get("crop_pct"),
        "interpolation": meta.extra.get("interpolation", "bilinear"),
    }
    return {k: {"value": v, "from": prov.get(k, default)} for k, v in values.items()}


def _default_origin(report: dict) -> str:
    """Where a value without recorded provenance came from."""
    return {"checkpoint": "checkpoint", "name": "parvis registry default"}.get(report.get("kind"), "artifact metadata")


def _flops(model: torch.nn.Module, size: int) -> int | None:
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model.float().eval()(torch.zeros(1, 3, size, size))
        return int(counter.get_total_flops())
    except Exception:  # noqa: BLE001 - a model the counter cannot trace still gets the rest of the report
        return None


def inspect_model(spec: str | Path, weights: str | Path | None = None, given: Preprocess | None = None) -> dict:
    """What parvis knows about `spec` (see the module docstring); JSON-ready."""
    spec = str(spec)
    path = Path(spec)
    report: dict = {"model": spec}
    if is_optimize_folder(spec):
        chosen = chosen_config(spec)
        report["optimize"] = {k: chosen[k] for k in ("runtime", "precision", "threads", "batch", "streams")}
        path = Path(chosen["artifact"])
        spec = str(path)
    if path.suffix in (".onnx", ".pt2") and path.is_file():
        if weights is not None:
            raise ParvisError(f"{spec}: --weights applies to model names, not to artifacts")
        meta = read_metadata(path, given)
        report["kind"] = "onnx" if path.suffix == ".onnx" else "torch.export"
        report["size_mb"] = round(path.stat().st_size / 2**20, 2)
        if path.suffix == ".onnx":
            proto = load_onnx(path)
            inputs, outputs = graph_io(proto)
            report["params"] = int(sum(int(torch.Size(i.dims).numel()) for i in proto.graph.initializer))
            layers = quantized_layers(path)
            report["precision"] = "int8" if layers["int8_layers"] else "fp32"
            report["int8_layers"] = f"{layers['int8_layers']}/{layers['layers']}"
            report["parity_max_abs_err"] = parity(path)
            report["foreign"] = bool(meta.extra.get("foreign"))
        else:
            inputs = [{"name": "images", "shape": [None, 3, meta.input_size, meta.input_size], "dtype": "FP32"}]
            outputs = [{"name": "logits", "shape": None, "dtype": "FP32"}]
            report["precision"] = "fp32"
            report["parity_max_abs_err"] = parity(path)
        architecture = None
        if meta.task != TENSOR_TASK and is_model_name(meta.name):
            try:
                architecture = load_model(meta.name, given=Preprocess(size=meta.input_size))
            except ParvisError:
                architecture = None
        report["flops"] = _flops(architecture, meta.input_size) if architecture is not None else None
        report["source"] = "foreign onnx" if meta.extra.get("foreign") else f"parvis {report['kind']} artifact"
    else:
        model = load_model(spec, weights=weights, given=given)
        meta = model.meta
        size = meta.input_size
        inputs = [{"name": "images", "shape": [None, 3, size, size], "dtype": "FP32"}]
        with torch.no_grad():
            out = model.float().eval()(torch.zeros(1, 3, size, size))
        outputs = [{"name": "logits", "shape": [None, *out.shape[1:]], "dtype": "FP32"}]
        report["kind"] = "checkpoint" if path.is_file() else "name"
        report["source"] = meta.extra.get("source", "parvis") if not path.is_file() else "parvis checkpoint"
        report["params"] = int(sum(p.numel() for p in model.parameters()))
        report["flops"] = _flops(model, size)
        report["precision"] = "fp32 (the runtime's choice at run time: --precision)"
        report["weights"] = "random" if meta.extra.get("random_init") else str(meta.extra.get("weights", spec))
        if meta.extra.get("head_replaced"):
            report["head_replaced"] = meta.extra["head_replaced"]
    report.update(
        name=meta.name,
        task=meta.task,
        inputs=inputs,
        outputs=outputs,
        preprocess=_preprocess(meta, _default_origin(report)),
        classes={
            "count": meta.num_classes,
            "first": meta.class_names[:10],
            "from": meta.extra.get("provenance", {}).get("class_names", _default_origin(report)),
        },  # fmt: skip
    )
    return report
