"""INT8 post-training static quantization of an ONNX artifact with ONNX Runtime (QDQ format).

Calibration runs the fp32 model on N real images from the user's dataset (train split, seeded
sample, the model's own eval preprocessing), collects activation ranges with the chosen method
(MinMax, Entropy or Percentile) and writes QuantizeLinear/DequantizeLinear pairs: activations
uint8, weights int8 per output channel (the U8S8 pair that x86 VNNI kernels run fastest). The
parvis metadata is carried over, with the quantization settings added.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.metadata
import importlib.util
import inspect
import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from parvis import runtime as rt
from parvis.artifact import META_KEY, TENSOR_TASK, Preprocess, graph_io, image_feeds, load_onnx, read_metadata
from parvis.data.check import open_dataset
from parvis.data.decode import read_image, to_tensor
from parvis.engine.predict import expand_inputs
from parvis.errors import ParvisError
from parvis.io import atomic_write_bytes
from parvis.models import eval_transform

METHODS = ("minmax", "entropy", "percentile")
QUANT_KEY = "parvis.quantization"


def calibration_batches(meta, data: str | Path, n: int, batch: int = 8, seed: int = 0) -> list[np.ndarray]:
    """`n` training images of `data` (its train split, or any images under the folder when it is not a
    dataset the model's task reads), preprocessed as the model expects, in float32 batches."""
    transform = eval_transform(meta)
    try:
        ds = open_dataset(data, meta.task, "train", transform=transform)
        load = [lambda j=j: ds[j][0].as_subclass(torch.Tensor) for j in range(len(ds))]
    except ParvisError:  # a plain folder of images (e.g. a user's photos): calibrate on those
        files = expand_inputs([str(data)])
        load = [lambda p=p: transform(to_tensor(read_image(p))) for p in files]
    if not load:
        raise ParvisError(f"{data}: no images to calibrate with")
    order = torch.randperm(len(load), generator=torch.Generator().manual_seed(seed))[: min(n, len(load))].tolist()
    mean = torch.tensor(meta.mean).view(1, -1, 1, 1)
    std = torch.tensor(meta.std).view(1, -1, 1, 1)
    out = []
    for i in range(0, len(order), batch):
        images = torch.stack([load[j]() for j in order[i : i + batch]])
        out.append(((images.float() / 255 - mean) / std).contiguous().numpy())
    return out


def tensor_calibration(meta, n: int, calib_data: str | Path | None = None, seed: int = 0) -> list[dict]:
    """Calibration feeds for a raw-tensor model: the samples of `calib_data` (.npz, one array per input
    name, samples along the first axis), or `n` seeded standard-normal samples of the graph's shapes."""
    inputs = meta.extra["inputs"]
    if calib_data is not None:
        path = Path(calib_data)
        try:
            arrays = dict(np.load(path))
        except (OSError, ValueError) as exc:
            raise ParvisError(f"--calib-data {path}: not a readable .npz ({exc}); save it with numpy.savez") from None
        missing = [t["name"] for t in inputs if t["name"] not in arrays]
        if missing:
            raise ParvisError(f"--calib-data {path}: has no array named {missing[0]!r} (the model's inputs: "
                              f"{', '.join(t['name'] for t in inputs)})")  # fmt: skip
        count = min(len(arrays[t["name"]]) for t in inputs)
        return [{t["name"]: arrays[t["name"]][i : i + 1] for t in inputs} for i in range(min(n, count))]
    rng = np.random.default_rng(seed)
    shapes = {}
    for t in inputs:
        rest = t["shape"][1:]
        if not all(isinstance(d, int) for d in rest) or t["dtype"] != "FP32":
            raise ParvisError(
                f"input {t['name']!r} ({t['dtype']} {t['shape']}) cannot be filled with random calibration data; "
                "give --calib-data FILE.npz with real samples"
            )
        shapes[t["name"]] = [1, *rest]
    return [{k: rng.standard_normal(v).astype(np.float32) for k, v in shapes.items()} for _ in range(n)]


def output_snr_db(reference: list[np.ndarray], got: list[np.ndarray]) -> float:
    """Signal-to-noise ratio of `got` against `reference` over all outputs, in dB (higher is closer)."""
    signal = sum(float(np.sum(r.astype(np.float64) ** 2)) for r in reference)
    noise = sum(float(np.sum((r.astype(np.float64) - g) ** 2)) for r, g in zip(reference, got, strict=True))
    return float("inf") if noise == 0 else 10 * float(np.log10(max(signal, 1e-30) / noise))


class Int8Quantizer:
    """ONNX Runtime static QDQ quantization of one fp32 file, calibrated once and written as often as needed
    with different nodes kept in float (the mixed-precision search quantizes the same model dozens of times).

    The calibrated ranges are cached (ONNX Runtime's calibration_cache_path, where this version has it), so a
    rewrite with other float nodes costs the quantization pass only, not another calibration run.
    """

    def __init__(self, src: Path, feeds: list[dict], method: str, workdir: Path):
        from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: PLC0415 - heavy

        self.src, self.feeds, self.method = Path(src), feeds, method
        self.pre = Path(workdir) / "pre.onnx"
        self.cache = Path(workdir) / "calibration.json"
        try:
            quant_pre_process(str(self.src), str(self.pre), skip_symbolic_shape=True)
        except Exception:  # pre-processing only helps; quantize the original when it fails
            self.pre = self.src

    def write(self, out: Path, exclude: tuple[str, ...] = ()) -> onnx.ModelProto:
        """Quantize into `out` (a scratch path) with the nodes named in `exclude` left in float."""
        from onnxruntime.quantization import CalibrationDataReader, quantize_static  # noqa: PLC0415 - heavy

        feeds = self.feeds

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.it = iter(feeds)

            def get_next(self):
                return next(self.it, None)

        options = {}
        if "calibration_cache_path" in inspect.signature(quantize_static).parameters:
            options["calibration_cache_path"] = str(self.cache)
        with _root_log_level(logging.ERROR):  # its "consider pre-processing" advice, printed on every call
            self._quantize(quantize_static, out, Reader(), exclude, options)
        return onnx.load(str(out))

    def _quantize(self, quantize_static, out: Path, reader, exclude: tuple[str, ...], options: dict) -> None:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType  # noqa: PLC0415 - heavy

        quantize_static(
            str(self.pre),
            str(out),
            reader,
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method={
                "minmax": CalibrationMethod.MinMax,
                "entropy": CalibrationMethod.Entropy,
                "percentile": CalibrationMethod.Percentile,
            }[self.method],
            nodes_to_exclude=list(exclude),
            extra_options={"CalibTensorRangeSymmetric": False},
            **options,
        )


@contextlib.contextmanager
def _root_log_level(level: int):
    root = logging.getLogger()
    previous = root.level
    root.setLevel(max(level, previous))
    try:
        yield
    finally:
        root.setLevel(previous)


def quantized_nodes(model: onnx.ModelProto) -> list[str]:
    """The nodes that compute on quantized tensors (an input from a DequantizeLinear), in graph order."""
    dequantized = {o for node in model.graph.node if node.op_type == "DequantizeLinear" for o in node.output}
    return [
        node.name
        for node in model.graph.node
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") and any(i in dequantized for i in node.input)
    ]


@dataclass
class QuantPart:
    """One quantized activation tensor and the nodes that quantize it: the node that writes it and those that
    read it. A tensor keeps one scale for all of them, so it is float only when every one of them is."""

    tensor: str
    nodes: tuple[str, ...]


def quantized_parts(model: onnx.ModelProto) -> list[QuantPart]:
    """The parts a mixed-precision model can keep in float, one per quantized activation tensor, in graph order."""
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    computing = set(quantized_nodes(model))
    parts = []
    for q in graph.node:
        if q.op_type != "QuantizeLinear" or q.input[0] in initializers:
            continue
        tensor = q.input[0]
        dequantized = {
            dq.output[0] for dq in graph.node if dq.op_type == "DequantizeLinear" and dq.input[0] in q.output
        }
        users = [n.name for n in graph.node if n.name in computing and any(i in dequantized for i in n.input)]
        writer = producer.get(tensor)
        if writer is not None and writer.name in computing:
            users.insert(0, writer.name)
        if users and all(users):  # an unnamed node cannot be excluded by name: such a tensor stays quantized
            parts.append(QuantPart(tensor, tuple(dict.fromkeys(users))))
    return parts


def node_labels(model: onnx.ModelProto) -> dict[str, str]:
    """{node name: "module.path (Op)"} from the exporter's name scopes, so a user reads which layer of their
    model a node is (a Conv with its BatchNorm folded in carries the norm's scope: its block is named)."""
    labels = {}
    for node in model.graph.node:
        props = {p.key: p.value for p in node.metadata_props}
        try:
            scopes = ast.literal_eval(props.get("pkg.torch.onnx.name_scopes", "[]"))
            classes = ast.literal_eval(props.get("pkg.torch.onnx.class_hierarchy", "[]"))
        except (ValueError, SyntaxError):
            scopes, classes = [], []
        modules = [s for s in scopes[:-1] if s]  # the last scope is the op itself
        if not modules:  # an op of the model's own forward (a final concatenation)
            labels[node.name] = f"{node.name} ({node.op_type})"
            continue
        path = modules[-1]
        if classes and "norm" in str(classes[-1]).lower() and len(modules) > 1:
            path = modules[-2]
        labels[node.name] = f"{path} ({node.op_type})"
    return labels


def nncf_available() -> bool:
    return importlib.util.find_spec("nncf") is not None


def quantize_nncf(src: str | Path, out: str | Path, feeds: list[dict], given: Preprocess | None = None) -> dict:
    """INT8 with NNCF (OpenVINO's quantization tool) on the ONNX file: its CPU quantization scheme and fast bias
    correction, written as a QDQ ONNX file that OpenVINO (and ONNX Runtime) run as INT8, carrying the metadata."""
    rt.quiet_cuda_home_notice()  # nncf imports torch.utils.cpp_extension, which logs it on a GPU-less machine
    import nncf  # noqa: PLC0415 - optional heavy dependency (pip install nncf)

    nncf.set_log_level(logging.ERROR)
    src, out = Path(src), Path(out)
    meta = read_metadata(src, given)
    if not feeds:
        raise ParvisError(f"{src}: no calibration data for NNCF")
    samples = [
        {k: v[i : i + 1] for k, v in feed.items()} for feed in feeds for i in range(len(next(iter(feed.values()))))
    ]
    with _quiet_progress():
        model = nncf.quantize(onnx.load(str(src)), nncf.Dataset(samples), subset_size=len(samples))
    settings = {"method": "nncf", "nncf": importlib.metadata.version("nncf"), "calibration_images": len(samples),
                "activations": "nncf (OpenVINO CPU scheme)", "weights": "int8 per-channel"}  # fmt: skip
    atomic_write_bytes(out, _with_metadata(model, meta, settings))
    return {"path": str(out), "source": str(src), "model": meta.name, **settings}


@contextlib.contextmanager
def _quiet_progress():
    """NNCF draws rich progress bars on stdout; parvis prints its own progress lines instead."""
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


def _with_metadata(model: onnx.ModelProto, meta, settings: dict) -> bytes:
    del model.metadata_props[:]
    for key, value in ((META_KEY, json.dumps(meta.to_dict())), (QUANT_KEY, json.dumps(settings))):
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    return model.SerializeToString()


def quantize_onnx(
    src: str | Path,
    out: str | Path,
    data: str | Path | None,
    n: int = 128,
    method: str = "minmax",
    calib_data: str | Path | None = None,
    given: Preprocess | None = None,
    exclude: tuple[str, ...] = (),
    quantizer: Int8Quantizer | None = None,
) -> dict:
    """Write an INT8 QDQ model of the fp32 ONNX file `src` to `out`; returns the settings used.

    Image models calibrate on `n` images of `data`; a raw-tensor model (a foreign ONNX file without
    preprocessing) on `calib_data` (.npz) or seeded random samples, and reports its outputs' SNR vs fp32.
    `exclude`: node names kept in float (a mixed-precision model); `quantizer`: one already calibrated on
    this `src` (the mixed-precision search reuses it)."""
    if method not in METHODS:
        raise ParvisError(f"--method {method!r} is unknown; choose one of {', '.join(METHODS)}")
    if n < 1:
        raise ParvisError(f"--calib {n}: need at least 1 calibration image")
    src, out = Path(src), Path(out)
    if not src.is_file():
        raise ParvisError(f"{src}: no such artifact")
    if src.suffix.lower() != ".onnx":
        # a .pt2 or a checkpoint reached ONNX Runtime's loader before, which died in an onnx ValidationError
        raise ParvisError(
            f"{src}: quantize needs an .onnx artifact, not {src.suffix or 'a file without suffix'}; "
            "export one with `parvis export MODEL --format onnx --out FILE.onnx`"
        )
    meta = read_metadata(src, given)
    if quantizer is not None:
        feeds, source_of_data = quantizer.feeds, str(data)
    else:
        feeds, source_of_data = calibration_feeds(src, meta, data, n, calib_data)
    images_used = int(sum(len(next(iter(f.values()))) for f in feeds))
    try:  # like every command, make the output folder (after the inputs were checked: no empty folder on error)
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ParvisError(f"cannot write {out}: {exc.strerror or exc}; choose a writable --out") from None
    with tempfile.TemporaryDirectory() as tmp:
        q = Path(tmp) / "int8.onnx"
        model = (quantizer or Int8Quantizer(src, feeds, method, Path(tmp))).write(q, tuple(exclude))
    settings = {
        "method": method if quantizer is None else quantizer.method,
        "calibration_images": images_used,
        "calibration_data": source_of_data,
        "activations": "uint8",
        "weights": "int8 per-channel",
    }
    if exclude:
        settings["float_nodes"] = list(exclude)
    atomic_write_bytes(out, _with_metadata(model, meta, settings))
    if meta.task == TENSOR_TASK:
        settings["output_snr_db"] = round(_snr_vs_fp32(src, out, feeds), 2)
    return {
        "path": str(out),
        "source": str(src),
        "model": meta.name,
        **settings,
        "size_mb": round(out.stat().st_size / 2**20, 2),
    }


def calibration_feeds(
    src: Path, meta, data: str | Path | None, n: int, calib_data: str | Path | None = None
) -> tuple[list[dict], str]:
    """The calibration inputs of `src` (feed dicts by input name) and where they came from."""
    input_names = [i["name"] for i in graph_io(load_onnx(src))[0]]
    if meta.task == TENSOR_TASK:
        return tensor_calibration(meta, n, calib_data), str(
            calib_data
        ) if calib_data else "random (seeded standard normal)"
    if data is None:
        raise ParvisError(f"{src}: quantizing an image model needs --data DIR with images to calibrate on")
    return [image_feeds(input_names, b) for b in calibration_batches(meta, data, n)], str(data)


def channel_snr_db(reference: list[np.ndarray], got: list[np.ndarray]) -> float:
    """Like output_snr_db, but every output channel (axis 1) weighs the same: its squared error is divided by
    its own fp32 variance before averaging. A detector's heatmap logits and its box sizes (pixels) share one
    output tensor; unweighted, the larger box values would hide an error in the scores that decides the mAP."""
    errors = []
    for r, g in zip(reference, got, strict=True):
        r, g = r.astype(np.float64), g.astype(np.float64)
        axes = tuple(i for i in range(r.ndim) if i != 1) if r.ndim > 1 else None
        mse = np.mean((r - g) ** 2, axis=axes)
        var = np.var(r, axis=axes)
        errors.append(np.atleast_1d(mse / np.maximum(var, 1e-12)))
    mean = float(np.mean(np.concatenate(errors)))
    return float("inf") if mean == 0 else -10 * float(np.log10(mean))


class SensitivityProbe:
    """Scores INT8 models of one quantizer, with any set of nodes kept in float: how closely their outputs follow
    fp32's on a few calibration batches (channel_snr_db) and, when the caller can score the task metric on
    labelled images (`scorer`: an ONNX file -> metric), that metric."""

    def __init__(
        self,
        quantizer: Int8Quantizer,
        feeds: list[dict],
        workdir: Path,
        scorer: Callable[[Path], float] | None = None,
    ):
        import onnxruntime as ort  # noqa: PLC0415 - heavy

        self.quantizer, self.feeds, self.scorer = quantizer, feeds, scorer
        self.path = Path(workdir) / "probe.onnx"
        self.options = ort.SessionOptions()
        self.options.log_severity_level = 3
        self.reference = self._outputs(quantizer.src)

    def _outputs(self, path: Path) -> list[np.ndarray]:
        import onnxruntime as ort  # noqa: PLC0415 - heavy

        session = ort.InferenceSession(str(path), self.options, providers=["CPUExecutionProvider"])
        got = []
        for feed in self.feeds:
            got += session.run(None, feed)
        return got

    def measure(self, floating: tuple[str, ...] = ()) -> tuple[float, float]:
        """(task metric or 0 without a scorer, channel_snr_db) of the INT8 model with `floating` kept in float."""
        self.quantizer.write(self.path, floating)
        metric = self.scorer(self.path) if self.scorer is not None else 0.0
        return metric, channel_snr_db(self.reference, self._outputs(self.path))

    def gains(
        self, parts: list[QuantPart], floating: tuple[str, ...] = (), progress=lambda _: None
    ) -> dict[str, tuple[float, float]]:
        """For each part (by tensor): how much keeping its nodes in float too (next to `floating`) recovers, as
        (metric gain, dB gain); a ranking sorts by the metric, then the dB. Parts interact (a tensor read by
        several layers stays quantized until all of them are float), so a search asks again after each pick."""
        base_metric, base_snr = self.measure(floating)
        found = {}
        for i, part in enumerate(parts):
            if i % 10 == 0:
                progress(f"INT8 sensitivity with {len(floating)} node(s) in float: part {i + 1}/{len(parts)}")
            metric, snr = self.measure(tuple(dict.fromkeys((*floating, *part.nodes))))
            found[part.tensor] = (metric - base_metric, snr - base_snr)
        return found


def _snr_vs_fp32(src: Path, out: Path, feeds: list[dict]) -> float:
    """The INT8 model's outputs against the fp32 model's on the calibration samples, in dB."""
    import onnxruntime as ort  # noqa: PLC0415 - heavy: only the SNR check runs it

    fp32 = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    reference, got = [], []
    for feed in feeds:
        reference += fp32.run(None, feed)
        got += int8.run(None, feed)
    return output_snr_db(reference, got)
