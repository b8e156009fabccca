"""What the server serves: model specs (from the command line or a model repository), loaded as
runtime instances behind a DynamicBatcher.

A model repository is a folder with one subfolder per model, each holding its artifact (a parvis
checkpoint, an .onnx / .pt2 file, or the output of `parvis optimize`) and optionally a `model.yaml`:

    models/
      shapes-seg/            # parvis optimize output: its chosen artifact, runtime, precision, threads
        optimize.json  model-int8.onnx
      classifier/
        best.pt
        model.yaml           # source: best.pt, runtime: openvino, max_batch_size: 16, instances: 2, ...

Models are only ever loaded from files the operator named on the command line (or that sit in the
repository the operator named); a request can choose among them by name, never supply one.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from parvis import runtime
from parvis.artifact import TENSOR_TASK, Preprocess
from parvis.config import ConfigValueError, _read_yaml, _require, load_config
from parvis.engine.loading import is_model_name
from parvis.errors import ParvisError
from parvis.runtimes import ARTIFACT_SUFFIXES, RUNTIMES, open_predictor
from parvis.serve.batching import DynamicBatcher

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors")
MODEL_CONFIG = "model.yaml"
SERVED_TASKS = ("classification", "segmentation", "detection", "stereo", "inspection", TENSOR_TASK)


@dataclass
class ModelConfig:
    """How one model is served. Every key may appear in a repository's model.yaml; the `parvis
    serve` flags set the defaults for all models."""

    source: str = ""  # file or folder, relative to the model's folder in a repository
    runtime: str = ""  # "" = the artifact's own (optimize's choice, ONNX Runtime for .onnx, torch otherwise)
    precision: str = "auto"
    device: str = "auto"
    threads: int = 0  # per instance; 0 = the usable cores split evenly between the instances
    instances: int = 1
    max_batch_size: int = 16
    max_queue_delay_ms: float = 5.0
    max_queue: int = 128
    timeout_ms: float = 30000.0

    def __post_init__(self) -> None:
        _require(self.runtime in ("", *RUNTIMES), "runtime", f"one of {', '.join(RUNTIMES)}", self.runtime)
        _require(
            self.precision in ("auto", "fp32", "tf32", "bf16", "fp16", "int8"),
            "precision",
            "a precision",
            self.precision,
        )
        _require(self.threads >= 0, "threads", ">= 0", self.threads)
        _require(self.instances >= 1, "instances", ">= 1", self.instances)
        _require(self.max_batch_size >= 1, "max_batch_size", ">= 1", self.max_batch_size)
        _require(self.max_queue_delay_ms >= 0, "max_queue_delay_ms", ">= 0", self.max_queue_delay_ms)
        _require(
            self.max_queue >= self.max_batch_size,
            "max_queue",
            f">= max_batch_size ({self.max_batch_size})",
            self.max_queue,
        )
        _require(self.timeout_ms > 0, "timeout_ms", "> 0", self.timeout_ms)


@dataclass
class ModelSpec:
    name: str
    config: ModelConfig
    weights: str | None = None  # for model names: a local file or a cached zoo weights tag (--weights)
    given: Preprocess | None = None  # preprocessing stated by flags (a foreign ONNX file's, or overrides)


def _is_model_file(path: Path) -> bool:
    return path.is_file() and path.suffix in (*CHECKPOINT_SUFFIXES, *ARTIFACT_SUFFIXES)


def resolve_specs(sources: list[str], defaults: ModelConfig) -> list[ModelSpec]:
    """Specs for every model named on the command line: files, optimize folders, registered names
    and repositories; `NAME=MODEL` names a single model. Checks paths and configs now, so a mistake
    stops the server before it starts."""
    specs: list[ModelSpec] = []
    for item in sources:
        name, sep, rest = item.partition("=")
        if sep and name and rest and "/" not in name:  # NAME=MODEL: serve MODEL under NAME
            (spec,) = resolve_specs([rest], defaults)
            specs.append(ModelSpec(name, spec.config))
            continue
        path = Path(item)
        if path.is_file():
            if not _is_model_file(path):
                raise ParvisError(
                    f"{path}: not a model file; serve a checkpoint ({', '.join(CHECKPOINT_SUFFIXES)}), "
                    f"an artifact ({', '.join(ARTIFACT_SUFFIXES)}), an optimize folder or a model repository"
                )
            specs.append(ModelSpec(path.stem, dataclasses.replace(defaults, source=str(path))))
        elif path.is_dir() and _is_model_folder(path):
            specs.append(_model_folder(path, defaults))
        elif path.is_dir():
            specs += _repository(path, defaults)
        elif is_model_name(item):  # a registered name or torchvision:NAME / timm:NAME; served as NAME
            specs.append(ModelSpec(item.rpartition(":")[2], dataclasses.replace(defaults, source=item)))
        else:
            raise ParvisError(
                f"{item}: no such file or folder, and not a model name; check the path "
                "(`parvis models` lists the names)"
            )
    seen: dict[str, str] = {}
    for spec in specs:
        if spec.name in seen:
            raise ParvisError(
                f"two models are named {spec.name!r} ({seen[spec.name]} and {spec.config.source}); "
                "rename one of the files or folders"
            )
        seen[spec.name] = spec.config.source
    return specs


def _is_model_folder(folder: Path) -> bool:
    """A folder that is one model: optimize output, a model.yaml, or model files directly inside."""
    return (
        (folder / "optimize.json").is_file()
        or (folder / MODEL_CONFIG).is_file()
        or any(_is_model_file(p) for p in folder.iterdir())
    )


def _model_folder(sub: Path, defaults: ModelConfig) -> ModelSpec:
    cfg_path = sub / MODEL_CONFIG
    config = defaults
    if cfg_path.is_file():
        # The file's keys win over the command line's defaults; keys it does not set keep them.
        from_file = load_config(ModelConfig, cfg_path)
        config = dataclasses.replace(defaults, **{k: getattr(from_file, k) for k in _read_yaml(cfg_path)})
    if config.source and config.source != defaults.source:
        source = sub / config.source
        if not source.exists():
            raise ParvisError(f"{cfg_path}: source {config.source!r} does not exist in {sub}; fix the key")
    elif (sub / "optimize.json").is_file():
        source = sub
    else:
        files = sorted(p for p in sub.iterdir() if _is_model_file(p))
        if len(files) != 1:
            found = ", ".join(p.name for p in files) or "none"
            raise ParvisError(
                f"{sub}: a model folder needs exactly one model file or a `source:` key in {MODEL_CONFIG} "
                f"(found {found})"
            )
        source = files[0]
    return ModelSpec(sub.name, dataclasses.replace(config, source=str(source)))


def _repository(folder: Path, defaults: ModelConfig) -> list[ModelSpec]:
    subs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    specs = [_model_folder(sub, defaults) for sub in subs]
    if not specs:
        raise ParvisError(
            f"{folder}: no model subfolders; a model repository holds one folder per model "
            "(or pass a checkpoint, artifact or optimize folder directly)"
        )
    return specs


@dataclass
class ServedModel:
    """A model's instances, its batcher and what the server reports about it."""

    spec: ModelSpec
    meta: object = None
    info: dict = field(default_factory=dict)
    batcher: DynamicBatcher | None = None
    ready: bool = False
    load_s: float = 0.0
    postprocess: object = None

    @property
    def name(self) -> str:
        return self.spec.name

    def load(self, observer=None) -> None:
        """Open `instances` copies of the model, each with its share of the cores, and warm them up
        at batch 1 and at max_batch_size (a compiled runtime compiles then, not on a user's request)."""
        cfg = self.spec.config
        start = time.perf_counter()
        device = runtime.resolve_device(cfg.device)
        threads = cfg.threads or max(1, runtime.usable_cores() // cfg.instances)
        models = []
        for i in range(cfg.instances):
            # One instance per GPU where there are several; on the CPU, instances split the cores.
            dev = device
            if device.type == "cuda" and cfg.instances > 1:
                dev = torch.device("cuda", i % max(1, len(runtime.inventory().gpus)))
            model, info = open_predictor(
                cfg.source, dev, cfg.runtime or None, cfg.precision, threads, weights=self.spec.weights,
                given=self.spec.given,
            )  # fmt: skip
            models.append(model)
        self.meta = models[0].meta
        self.postprocess = models[0].postprocess  # detection decoding (peaks -> boxes), off the instances
        if self.meta.task not in SERVED_TASKS:
            raise ParvisError(f"{cfg.source}: serving {self.meta.task} models is not supported yet "
                              f"({', '.join(SERVED_TASKS)} are)")  # fmt: skip
        self.info = {**info, "threads_per_instance": threads}
        max_batch = cfg.max_batch_size
        if self.meta.task == TENSOR_TASK:
            max_batch = min(max_batch, tensor_batch_limit(self.meta, cfg.source))
            fns = [_tensor_batch_fn(m, cfg.source) for m in models]
            sample = _zero_sample(self.meta)
        else:
            fns = [_batch_fn(m) for m in models]
            size = self.meta.input_size  # stereo: a pair of (input_size, 2 x input_size) views
            channels, width = (6, 2 * size) if self.meta.task == "stereo" else (3, size)
            sample = torch.zeros(channels, size, width)
        self.max_batch_size = max_batch
        for fn in fns:
            for n in sorted({1, max_batch}):
                if sample is not None:  # a raw model with free non-batch axes warms up on the first request
                    fn([sample] * n)
        self.batcher = DynamicBatcher(
            fns, max_batch, cfg.max_queue_delay_ms, cfg.max_queue, observer=observer, name=self.name
        )
        self.load_s = time.perf_counter() - start
        self.ready = True

    @property
    def full(self) -> bool:
        """The batcher has no place left (a cheap, lock-free look; reserve() decides)."""
        return self.batcher is not None and self.batcher.free <= 0

    def describe(self) -> dict:
        cfg = self.spec.config
        out = {"name": self.name, "ready": self.ready, "source": cfg.source}
        if self.meta is not None and self.meta.task == TENSOR_TASK:
            # KServe v2 model metadata: the graph's own tensors (-1 for a dynamic axis).
            def v2(tensors):
                return [{"name": t["name"], "datatype": t["dtype"],
                         "shape": [d if isinstance(d, int) else -1 for d in t["shape"]]} for t in tensors]  # fmt: skip

            out.update(
                task=TENSOR_TASK, platform="onnx", inputs=v2(self.meta.extra["inputs"]),
                outputs=v2(self.meta.extra["outputs"]), runtime=self.info.get("runtime"),
                precision=self.info.get("precision"), device=self.info.get("device"),
                threads_per_instance=self.info.get("threads_per_instance"), load_s=round(self.load_s, 2),
            )  # fmt: skip
        elif self.meta is not None:
            size = self.meta.input_size
            out.update(
                task=self.meta.task,
                architecture=self.meta.name,
                input={
                    # stereo: a pair (left, right) of any size, as two images or KServe inputs left and right
                    "shape": [6, "H", "W"] if self.meta.task == "stereo" else [3, size, size],
                    "datatype": "FP32",
                    "mean": list(self.meta.mean),
                    "std": list(self.meta.std),
                    "layout": "NCHW",
                },
                classes=list(self.meta.class_names),
                runtime=self.info.get("runtime"),
                precision=self.info.get("precision"),
                device=self.info.get("device"),
                threads_per_instance=self.info.get("threads_per_instance"),
                load_s=round(self.load_s, 2),
            )
        out["batching"] = {
            "max_batch_size": getattr(self, "max_batch_size", cfg.max_batch_size),
            "max_queue_delay_ms": cfg.max_queue_delay_ms,
            "max_queue": cfg.max_queue,
            "instances": cfg.instances,
            "timeout_ms": cfg.timeout_ms,
        }
        return out


def _batch_fn(model):
    """A batch callable for the batcher: a list of (3, H, W) float tensors -> a list of raw outputs."""

    @torch.inference_mode()
    def run(items: list[torch.Tensor]) -> list[torch.Tensor]:
        if all(item.shape == items[0].shape for item in items):
            return list(model(torch.stack(items)).float().cpu().unbind(0))
        # Stereo pairs keep their own size (disparity is in their pixels): one stacked run per size.
        out: list[torch.Tensor | None] = [None] * len(items)
        for shape in {item.shape for item in items}:
            index = [i for i, item in enumerate(items) if item.shape == shape]
            results = model(torch.stack([items[i] for i in index])).float().cpu().unbind(0)
            for i, result in zip(index, results, strict=True):
                out[i] = result
        return out

    return run


_NUMPY_DTYPES = {
    "FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT64": np.int64, "INT32": np.int32,
    "INT16": np.int16, "INT8": np.int8, "UINT8": np.uint8, "BOOL": np.bool_,
}  # fmt: skip


def numpy_dtype(name: str):
    if name not in _NUMPY_DTYPES:
        raise ParvisError(f"tensors of type {name} are not supported for raw inference")
    return _NUMPY_DTYPES[name]


def tensor_batch_limit(meta, source: str) -> int:
    """How many samples a raw-tensor model takes per call: any number when every input's first axis is
    dynamic, 1 when every input has a fixed first axis of 1; anything else cannot be batched."""
    inputs = meta.extra["inputs"]
    for t in inputs:
        numpy_dtype(t["dtype"])
        if not t["shape"]:
            raise ParvisError(f"{source}: input {t['name']!r} is a scalar; parvis batches along a first axis "
                              "(re-export the model with a batch axis)")  # fmt: skip
    firsts = [t["shape"][0] for t in inputs]
    if all(not isinstance(d, int) for d in firsts):
        return 1 << 30
    if all(d == 1 for d in firsts):
        return 1
    shapes = ", ".join(f"{t['name']} {t['shape']}" for t in inputs)
    raise ParvisError(f"{source}: inputs {shapes} have no common batch axis (a dynamic or size-1 first axis); "
                      "re-export with a dynamic first axis to serve it")  # fmt: skip


def _zero_sample(meta) -> dict | None:
    """One sample of zeros for a raw-tensor model (no batch axis), or None when an axis is free."""
    sample = {}
    for t in meta.extra["inputs"]:
        rest = t["shape"][1:]
        if not all(isinstance(d, int) for d in rest):
            return None
        sample[t["name"]] = np.zeros(rest, dtype=numpy_dtype(t["dtype"]))
    return sample


def _tensor_batch_fn(model, source: str):
    """A batch callable for a raw-tensor model: a list of {input name: array without the batch axis}
    -> a list of {output name: array}, one per sample (stacked into one call, split after)."""
    predictor = getattr(model, "runtime", None)
    if not hasattr(predictor, "run_tensors"):
        raise ParvisError(f"{source}: raw-tensor models run on ONNX Runtime; drop --runtime or use onnxruntime")

    def run(items: list[dict]) -> list[dict]:
        batch = {name: np.stack([item[name] for item in items]) for name in items[0]}
        outputs = predictor.run_tensors(batch)
        return [{name: value[i] for name, value in outputs.items()} for i in range(len(items))]

    return run


__all__ = ["ConfigValueError", "ModelConfig", "ModelSpec", "ServedModel", "resolve_specs"]
