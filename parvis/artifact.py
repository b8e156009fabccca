"""The on-disk format of everything parvis's producers make, and how foreign artifacts are described.

- ONNX from `parvis export`: the model metadata (`ModelMeta`) as JSON in `metadata_props["parvis.meta"]`,
  the export's parity (max abs difference to eager fp32) in `metadata_props["parvis.parity_max_abs_err"]`.
- torch.export archives (.pt2): the same metadata plus parity in the extra file `parvis_meta.json`.
- INT8: an ONNX file is quantized when it holds QuantizeLinear / DynamicQuantizeLinear nodes.
- `parvis optimize` folders: `optimize.json` with a `chosen` entry (artifact, runtime, precision,
  threads, batch, streams); the chosen artifact sits next to it.
- ONNX files made elsewhere (no parvis metadata): inputs and outputs (names, shapes, dtypes,
  dynamic axes) are read from the graph. Raw tensors need nothing else. Image commands need the
  preprocessing, from flags (`Preprocess`) or a sidecar YAML next to the file (`NAME.parvis.yaml`
  for `NAME.onnx`, keys: task, size, mean, std, labels, crop_pct, interpolation); flags win.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
import yaml

from parvis.errors import ParvisError
from parvis.models.base import TASKS, ModelMeta

META_KEY = "parvis.meta"
PARITY_KEY = "parvis.parity_max_abs_err"
TORCH_EXPORT_META = "parvis_meta.json"
OPTIMIZE_RESULT = "optimize.json"
SIDECAR_SUFFIX = ".parvis.yaml"
# The task of a model that takes and returns plain tensors (a foreign ONNX file without preprocessing).
TENSOR_TASK = "tensor"
# A stereo model's ONNX graph takes the two views as two inputs; parvis's runtimes hold a pair as one
# (N, 6, H, W) tensor (left RGB, right RGB) and split it here.
STEREO_INPUTS = ("left", "right")


def image_feeds(input_names, x) -> dict:
    """The feed dict of an image model's graph for normalized images `x`: {name: x}, or for a stereo
    graph {"left": x[:, :3], "right": x[:, 3:]}."""
    names = tuple(input_names)
    if names == STEREO_INPUTS:
        return {names[0]: np.ascontiguousarray(x[:, :3]), names[1]: np.ascontiguousarray(x[:, 3:])}
    return {names[0]: x}


SIDECAR_KEYS = ("task", "size", "mean", "std", "labels", "crop_pct", "interpolation")

_ONNX_DTYPES = {
    1: "FP32",
    2: "UINT8",
    3: "INT8",
    5: "INT16",
    6: "INT32",
    7: "INT64",
    9: "BOOL",
    10: "FP16",
    11: "FP64",
    16: "BF16",
}


@dataclass
class Preprocess:
    """What a user states about a model's preprocessing (flags); None = not given."""

    task: str | None = None
    size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    labels: list[str] | None = None
    crop_pct: float | None = None
    interpolation: str | None = None

    def given(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def read_labels(path: str | Path) -> list[str]:
    """Class names from a text file (one per line) or a JSON list."""
    path = Path(path)
    if not path.is_file():
        raise ParvisError(f"--labels {path}: no such file; give a text file with one class name per line")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            names = json.loads(text)
        except ValueError as exc:
            raise ParvisError(f"{path}: not valid JSON ({exc}); give a JSON list of class names") from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ParvisError(f"{path}: must hold a JSON list of class names (strings)")
        return names
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise ParvisError(f"{path}: holds no class names; write one per line")
    return names


# ----------------------------------------------------------------------------------------------
# ONNX


def load_onnx(path: str | Path) -> onnx.ModelProto:
    path = Path(path)
    if not path.is_file():
        raise ParvisError(f"{path}: no such file")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise ParvisError(f"{path}: not a readable ONNX file ({type(exc).__name__}); check the file") from None


def onnx_props(proto: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in proto.metadata_props}


def is_quantized(path: str | Path) -> bool:
    """Whether an ONNX file holds quantized (QDQ or dynamically quantized) operators."""
    model = load_onnx(path)
    return any(n.op_type in ("QuantizeLinear", "DynamicQuantizeLinear") for n in model.graph.node)


def quantized_layers(path: str | Path) -> dict:
    """How many compute layers (Conv, MatMul, Gemm) read quantized inputs, of how many."""
    model = load_onnx(path)
    produced_by = {out: n.op_type for n in model.graph.node for out in n.output}
    compute = [n for n in model.graph.node if n.op_type in ("Conv", "MatMul", "Gemm", "ConvInteger", "MatMulInteger")]
    int8 = sum(
        1
        for n in compute
        if n.op_type.endswith("Integer") or (n.input and produced_by.get(n.input[0]) == "DequantizeLinear")
    )
    return {"int8_layers": int8, "layers": len(compute)}


def describe_tensors(values) -> list[dict]:
    """[{name, shape (ints, or names for dynamic axes), dtype (KServe v2 names), dynamic_axes}]."""
    out = []
    for v in values:
        t = v.type.tensor_type
        shape: list = []
        dynamic = []
        for i, d in enumerate(t.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                shape.append(int(d.dim_value))
            else:
                shape.append(d.dim_param or None)
                dynamic.append(i)
        out.append(
            {
                "name": v.name,
                "shape": shape,
                "dtype": _ONNX_DTYPES.get(t.elem_type, f"onnx:{t.elem_type}"),
                "dynamic_axes": dynamic,
            }
        )
    return out


def graph_io(proto: onnx.ModelProto) -> tuple[list[dict], list[dict]]:
    """(inputs, outputs) of the graph; initializers listed as inputs (old exporters) are left out."""
    inits = {i.name for i in proto.graph.initializer}
    return describe_tensors([i for i in proto.graph.input if i.name not in inits]), describe_tensors(proto.graph.output)


def read_sidecar(path: Path) -> dict:
    """The preprocessing a sidecar YAML next to a foreign artifact states ({} when there is none)."""
    side = path.with_name(path.stem + SIDECAR_SUFFIX)
    if not side.is_file():
        return {}
    try:
        data = yaml.safe_load(side.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ParvisError(f"{side}: not valid YAML ({str(exc).splitlines()[0]}); fix the file") from None
    if not isinstance(data, dict):
        raise ParvisError(f"{side}: must be a mapping of {', '.join(SIDECAR_KEYS)}")
    unknown = sorted(set(data) - set(SIDECAR_KEYS))
    if unknown:
        raise ParvisError(f"{side}: unknown key {unknown[0]!r}; keys are {', '.join(SIDECAR_KEYS)}")
    if isinstance(data.get("labels"), str):
        data["labels"] = read_labels(side.parent / data["labels"])
    return data


def foreign_meta(path: Path, proto: onnx.ModelProto, given: Preprocess | None = None) -> ModelMeta:
    """The metadata of an ONNX file made elsewhere: its graph's inputs/outputs, plus the preprocessing
    from the sidecar and flags (flags win). Without a task it is a raw-tensor model."""
    inputs, outputs = graph_io(proto)
    stated = {**read_sidecar(path), **(given.given() if given else {})}
    prov = {k: ("flag" if given and k in given.given() else f"sidecar {path.stem}{SIDECAR_SUFFIX}") for k in stated}
    extra = {"source": "onnx", "foreign": True, "inputs": inputs, "outputs": outputs, "provenance": prov}
    if proto.producer_name:
        extra["producer"] = f"{proto.producer_name} {proto.producer_version}".strip()
    task = stated.get("task")
    if task is None:
        return ModelMeta(path.stem, TENSOR_TASK, 0, [], 0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), None, extra)
    if task not in TASKS:
        raise ParvisError(f"--task {task!r} is unknown; choose one of {', '.join(TASKS)}")
    if len(inputs) != 1 or inputs[0]["dtype"] != "FP32" or len(inputs[0]["shape"]) != 4:
        shapes = ", ".join(f"{i['name']} {i['dtype']} {i['shape']}" for i in inputs)
        raise ParvisError(
            f"{path}: image commands need one FP32 input of shape (N, 3, H, W); this file takes {shapes}. "
            "Use raw tensors (parvis serve's /infer, parvis bench runtime) instead"
        )
    shape = inputs[0]["shape"]
    size = stated.get("size") or (shape[3] if isinstance(shape[3], int) else None)
    if size is None:
        raise ParvisError(f"{path}: the input size is not fixed in the graph; give it with --size PX (or `size:` in "
                          f"{path.stem}{SIDECAR_SUFFIX})")  # fmt: skip
    if "size" not in stated:
        prov["input_size"] = "graph"
    else:
        prov["input_size"] = prov.pop("size")
    for key in ("mean", "std"):
        if key not in stated:
            raise ParvisError(f"{path}: the {key} of its input normalization is unknown; give --{key} R,G,B "
                              f"(e.g. --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225) or `{key}:` in "
                              f"{path.stem}{SIDECAR_SUFFIX}")  # fmt: skip
        if len(stated[key]) != 3:
            raise ParvisError(f"--{key} needs 3 values (R,G,B), got {list(stated[key])}")
    labels = stated.get("labels")
    out_shape = outputs[0]["shape"] if outputs else []
    channel = out_shape[1] if len(out_shape) > 1 and isinstance(out_shape[1], int) else None
    if labels is None:
        if channel is None:
            raise ParvisError(f"{path}: the class count is not fixed in the graph; give --labels FILE")
        labels = [f"class_{i}" for i in range(channel)]
        prov["class_names"] = "numbered from the graph's output shape"
    else:
        prov["class_names"] = prov.pop("labels")
        if task != "detection" and channel is not None and channel != len(labels):
            raise ParvisError(f"{path}: {len(labels)} labels given for an output of {channel} classes; fix --labels")
    for key in ("crop_pct", "interpolation"):
        if key in stated:
            extra[key] = stated[key]
    return ModelMeta(
        path.stem, task, len(labels), list(labels), int(size), tuple(map(float, stated["mean"])),
        tuple(map(float, stated["std"])), 255 if task == "segmentation" else None, extra,
    )  # fmt: skip


def read_metadata(path: str | Path, given: Preprocess | None = None) -> ModelMeta:
    """The ModelMeta of an artifact: stored by `parvis export`, or described from a foreign ONNX graph
    (plus the sidecar and `given` flags). Flags given for a parvis artifact override its values."""
    path = Path(path)
    if not path.is_file():
        raise ParvisError(f"{path}: no such artifact")
    if path.suffix != ".onnx":
        return load_program(path)[1]
    proto = load_onnx(path)
    props = onnx_props(proto)
    if META_KEY not in props:
        return foreign_meta(path, proto, given)
    meta = ModelMeta.from_dict(json.loads(props[META_KEY]))
    return apply_given(meta, given)


def apply_given(meta: ModelMeta, given: Preprocess | None) -> ModelMeta:
    """`meta` with the values a user stated on the command line (recorded as such in provenance)."""
    if not given or not given.given():
        return meta
    values = given.given()
    prov = meta.extra.setdefault("provenance", {})
    if "task" in values and values["task"] != meta.task:
        raise ParvisError(f"--task {values['task']} contradicts the model's own task {meta.task}; drop --task")
    if "size" in values:
        meta.input_size, prov["input_size"] = int(values["size"]), "flag"
    for key in ("mean", "std"):
        if key in values:
            setattr(meta, key, tuple(float(v) for v in values[key]))
            prov[key] = "flag"
    if "labels" in values:
        if len(values["labels"]) != meta.num_classes:
            raise ParvisError(f"--labels: {len(values['labels'])} names for a model of {meta.num_classes} classes")
        meta.class_names, prov["class_names"] = list(values["labels"]), "flag"
    for key in ("crop_pct", "interpolation"):
        if key in values:
            meta.extra[key], prov[key] = values[key], "flag"
    return meta


def parity(path: str | Path) -> float | None:
    """The max abs difference to eager fp32 stored by `parvis export` (None for foreign files)."""
    path = Path(path)
    if path.suffix == ".onnx":
        value = onnx_props(load_onnx(path)).get(PARITY_KEY)
        return float(value) if value is not None else None
    extra = {TORCH_EXPORT_META: ""}
    torch.export.load(str(path), extra_files=extra)
    return json.loads(extra[TORCH_EXPORT_META]).get("parity_max_abs_err") if extra[TORCH_EXPORT_META] else None


def stamp_onnx(proto: onnx.ModelProto, meta: ModelMeta, parity_err: float) -> None:
    """Write the metadata and parity into an ONNX model (in memory)."""
    for key, value in ((META_KEY, json.dumps(meta.to_dict())), (PARITY_KEY, repr(parity_err))):
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value


def program_extra(meta: ModelMeta, parity_err: float) -> dict[str, str]:
    """The extra files of a .pt2 archive that carry its metadata and parity."""
    return {TORCH_EXPORT_META: json.dumps({**meta.to_dict(), "parity_max_abs_err": parity_err})}


def load_program(path: str | Path):
    """(torch.export program, ModelMeta) of a `.pt2` written by `parvis export`."""
    extra = {TORCH_EXPORT_META: ""}
    try:
        program = torch.export.load(str(path), extra_files=extra)
    except Exception as exc:
        raise ParvisError(f"{path}: not a torch.export archive ({str(exc).splitlines()[0]})") from exc
    if not extra[TORCH_EXPORT_META]:
        raise ParvisError(f"{path}: has no parvis metadata; export it with `parvis export`")
    data = json.loads(extra[TORCH_EXPORT_META])
    data.pop("parity_max_abs_err", None)
    return program, ModelMeta.from_dict(data)


# ----------------------------------------------------------------------------------------------
# optimize folders


def is_optimize_folder(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / OPTIMIZE_RESULT).is_file()


def chosen_config(folder: str | Path) -> dict:
    """The winner of a `parvis optimize` output folder: {"artifact" (a path in the folder), "runtime",
    "precision", "threads", "batch", "streams"}, for commands that take such a folder as a model."""
    folder = Path(folder)
    path = folder / OPTIMIZE_RESULT
    if not path.is_file():
        raise ParvisError(f"{folder}: a folder must be `parvis optimize` output (no {OPTIMIZE_RESULT} in it)")
    try:
        chosen = json.loads(path.read_text())["chosen"]
        config = {k: chosen[k] for k in ("runtime", "precision", "threads", "batch")}
        config["streams"] = chosen.get("streams", 1)
        config["artifact"] = str(folder / Path(chosen["artifact"]).name)
    except (ValueError, KeyError, TypeError) as exc:
        raise ParvisError(f"{path}: not a readable optimize result ({exc}); run parvis optimize again") from None
    if not Path(config["artifact"]).is_file():
        raise ParvisError(f"{path}: its chosen artifact {config['artifact']} is missing; run parvis optimize again")
    return config
