"""`parvis export`: a trained model (or a registered name) to ONNX or a torch.export program.

Both artifacts take the model's input as it is fed during training and evaluation (float, N x 3 x
H x W, normalized with the metadata's mean/std) and return its raw output (logits), with a dynamic
batch dimension. The model metadata (task, input size, mean/std, class names, ...) travels inside the
artifact: ONNX `metadata_props["parvis.meta"]`, or the `parvis_meta.json` extra file of a
torch.export archive (`parvis.artifact` owns the format). Every export is checked against the source
model in eager fp32 on a batch size other than the one it was traced with (which also proves the batch
dimension is dynamic); the maximum absolute difference is printed and stored next to the metadata. A failed check writes
nothing.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import tempfile
import warnings
from pathlib import Path

import onnx
import torch

from parvis.artifact import STEREO_INPUTS, image_feeds, program_extra, stamp_onnx
from parvis.errors import ParvisError
from parvis.io import atomic_write_bytes
from parvis.models.base import ModelMeta, VisionModel

FORMATS = ("onnx", "torch-export")
# The ONNX graph's output name per task (the rest: "logits").
OUTPUT_NAMES = {"stereo": "disparity", "inspection": "anomaly_map"}
TRACE_BATCH, CHECK_BATCH = 2, 3
# fp32 reassociation in another runtime: differences scale with the logits' magnitude.
PARITY_RTOL = 1e-3


def export_model(model: VisionModel, out: str | Path, fmt: str = "onnx", opset: int = 18) -> dict:
    """Export `model` to `out` in format `fmt`; returns {format, path, parity_max_abs_err, ...}."""
    if fmt not in FORMATS:
        raise ParvisError(f"--format {fmt!r} is unknown; choose one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and out.is_dir():
        raise ParvisError(f"--out {out} is a folder; give the file to write, e.g. {out / 'model.onnx'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.float().to(memory_format=torch.contiguous_format).eval()
    meta: ModelMeta = model.meta
    gen = torch.Generator().manual_seed(0)
    size = meta.input_size
    stereo = meta.task == "stereo"
    if stereo and fmt != "onnx":
        raise ParvisError(f"{meta.name}: stereo models export to ONNX (--format onnx), with a left and a right input")
    # Stereo: a (6, H, 2H) pair traced, any pair size served (the graph pads to a multiple of 8 itself).
    shape = (6, size, 2 * size) if stereo else (3, size, size)
    trace_x = torch.randn(TRACE_BATCH, *shape, generator=gen)
    # Stereo graphs take any pair size: checked on one that is not the traced size nor a multiple of 8.
    check_shape = (6, size + 4, 2 * size + 12) if stereo else shape
    check_x = torch.randn(CHECK_BATCH, *check_shape, generator=gen)
    with torch.no_grad():
        reference = model(check_x).float()
    batch = torch.export.Dim("batch", min=1, max=4096)
    if fmt == "onnx":
        produced, err = _export_onnx(model, meta, out, trace_x, check_x, reference, batch, opset)
    else:
        produced, err = _export_program(model, meta, out, trace_x, check_x, reference, batch)
    return {
        "format": fmt,
        "path": str(out),
        "model": meta.name,
        "task": meta.task,
        "input": [None, *shape] if not stereo else {name: [None, 3, "H", "W"] for name in STEREO_INPUTS},
        "parity_max_abs_err": err,
        "parity_batch": CHECK_BATCH,
        "size_mb": round(out.stat().st_size / 2**20, 2),
        **produced,
    }


class TwoViews(torch.nn.Module):
    """A stereo model as its ONNX graph takes it: forward(left, right), each (N, 3, H, W)."""

    def __init__(self, model: VisionModel):
        super().__init__()
        self.model = model

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        return self.model(torch.cat([left, right], 1))


def _check_parity(meta: ModelMeta, fmt: str, err: float, reference: torch.Tensor) -> None:
    limit = PARITY_RTOL * max(1.0, float(reference.abs().max()))
    if not err <= limit:
        raise ParvisError(
            f"{meta.name}: the {fmt} export differs from the PyTorch model by up to {err:.3g} "
            f"(allowed {limit:.3g}); nothing written. Report the model and the torch/runtime versions"
        )


def _failing_operator(exc: BaseException) -> str:
    """'operator NAMESPACE.NAME' when the exporter's message names one, else its first line."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # the exporter colours its messages
    if re.search(r"data.dependent|GuardOnDataDependentSymNode|Could not guard on data-dependent", text):
        return (
            "its output shape depends on the data (e.g. detection post-processing that keeps a variable number "
            "of boxes), which torch.export cannot trace; run it in PyTorch (--runtime torch)"
        )
    overload = re.search(r"OpOverload\(op='([\w.]+)', overload='(\w+)'\)", text)
    if overload:
        return f"operator {overload.group(1)}.{overload.group(2)} has no ONNX translation"
    op = re.search(r"torch\.ops\.([\w]+\.[\w]+(?:\.\w+)?)", text) or re.search(r"\b(aten::\w+|aten\.\w+)", text)
    if op:
        return f"operator {op.group(1)}"
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]


@contextlib.contextmanager
def _exporter_quiet():
    """The exporters print a whole graph and their guard logs when tracing fails; the user gets the one
    line ParvisError instead (rerun with --debug for the traceback). Their warnings (axis renaming, ...)
    are about the exporter's internals, not the user's model: silenced too."""
    logging.disable(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
    finally:
        logging.disable(logging.NOTSET)


def _export_onnx(model, meta, out, trace_x, check_x, reference, batch, opset) -> tuple[dict, float]:
    import onnxruntime as ort  # noqa: PLC0415 - heavy, optional at export: only the parity check runs it

    inputs, names, dynamic = (trace_x,), ["images"], ({0: batch},)
    if meta.task == "stereo":
        model = TwoViews(model).eval()
        height, width = torch.export.Dim("height", min=8, max=8192), torch.export.Dim("width", min=8, max=8192)
        inputs, names = (trace_x[:, :3], trace_x[:, 3:]), list(STEREO_INPUTS)
        dynamic = ({0: batch, 2: height, 3: width},) * 2
    try:
        with _exporter_quiet():
            program = torch.onnx.export(
                model,
                inputs,
                dynamo=True,
                opset_version=opset,
                input_names=names,
                output_names=[OUTPUT_NAMES.get(meta.task, "logits")],
                dynamic_shapes=dynamic,
                verbose=False,
            )
    except Exception as exc:  # the exporter raises many types; the user needs the operator
        raise ParvisError(f"cannot export {meta.name} to ONNX: {_failing_operator(exc)}") from exc
    proto = program.model_proto
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, image_feeds(names, check_x.numpy()))[0])
    err = float((got - reference).abs().max())
    _check_parity(meta, "ONNX", err, reference)
    stamp_onnx(proto, meta, err)
    onnx.checker.check_model(proto)
    atomic_write_bytes(out, proto.SerializeToString())
    return {"opset": opset}, err


def _export_program(model, meta, out, trace_x, check_x, reference, batch) -> tuple[dict, float]:
    try:
        with _exporter_quiet():
            program = torch.export.export(model, (trace_x,), dynamic_shapes=({0: batch},))
    except Exception as exc:
        raise ParvisError(f"cannot export {meta.name} with torch.export: {_failing_operator(exc)}") from exc
    with torch.no_grad():
        got = program.module()(check_x).float()
    err = float((got - reference).abs().max())
    _check_parity(meta, "torch.export", err, reference)
    extra = program_extra(meta, err)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.stem}.", suffix=".tmp.pt2")
    os.close(fd)
    try:
        torch.export.save(program, tmp, extra_files=extra)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return {"torch": torch.__version__}, err
