"""INT8 post-training static quantization of an ONNX artifact with ONNX Runtime (QDQ format).

Calibration runs the fp32 model on N real images from the user's dataset (train split, seeded
sample, the model's own eval preprocessing), collects activation ranges with the chosen method
(MinMax, Entropy or Percentile) and writes QuantizeLinear/DequantizeLinear pairs: activations
uint8, weights int8 per output channel (the U8S8 pair that x86 VNNI kernels run fastest). The
parvis metadata is carried over, with the quantization settings added.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

from parvis.artifact import META_KEY, TENSOR_TASK, Preprocess, graph_io, load_onnx, read_metadata
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
    mean = torch.tensor(meta.mean).view(1, 3, 1, 1)
    std = torch.tensor(meta.std).view(1, 3, 1, 1)
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


def quantize_onnx(
    src: str | Path,
    out: str | Path,
    data: str | Path | None,
    n: int = 128,
    method: str = "minmax",
    calib_data: str | Path | None = None,
    given: Preprocess | None = None,
) -> dict:
    """Write an INT8 QDQ model of the fp32 ONNX file `src` to `out`; returns the settings used.

    Image models calibrate on `n` images of `data`; a raw-tensor model (a foreign ONNX file without
    preprocessing) on `calib_data` (.npz) or seeded random samples, and reports its outputs' SNR vs fp32."""
    from onnxruntime.quantization import (  # noqa: PLC0415 - heavy: onnxruntime's quantization tools
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: PLC0415 - as above

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
    input_name = graph_io(load_onnx(src))[0][0]["name"]
    if meta.task == TENSOR_TASK:
        feeds = tensor_calibration(meta, n, calib_data)
        source_of_data = str(calib_data) if calib_data else "random (seeded standard normal)"
    else:
        if data is None:
            raise ParvisError(f"{src}: quantizing an image model needs --data DIR with images to calibrate on")
        feeds = [{input_name: b} for b in calibration_batches(meta, data, n)]
        source_of_data = str(data)
    images_used = int(sum(len(next(iter(f.values()))) for f in feeds))
    try:  # like every command, make the output folder (after the inputs were checked: no empty folder on error)
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ParvisError(f"cannot write {out}: {exc.strerror or exc}; choose a writable --out") from None

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(batches)

        def get_next(self):
            return next(self.it, None)

    batches = feeds
    calibrate = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    with tempfile.TemporaryDirectory() as tmp:
        pre, q = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        except Exception:  # pre-processing only helps; quantize the original when it fails
            pre = src
        quantize_static(
            str(pre),
            str(q),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=calibrate,
            extra_options={"CalibTensorRangeSymmetric": False},
        )
        model = onnx.load(str(q))
    settings = {
        "method": method,
        "calibration_images": images_used,
        "calibration_data": source_of_data,
        "activations": "uint8",
        "weights": "int8 per-channel",
    }
    del model.metadata_props[:]
    for key, value in ((META_KEY, json.dumps(meta.to_dict())), (QUANT_KEY, json.dumps(settings))):
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    atomic_write_bytes(out, model.SerializeToString())
    if meta.task == TENSOR_TASK:
        settings["output_snr_db"] = round(_snr_vs_fp32(src, out, feeds), 2)
    return {
        "path": str(out),
        "source": str(src),
        "model": meta.name,
        **settings,
        "size_mb": round(out.stat().st_size / 2**20, 2),
    }


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
