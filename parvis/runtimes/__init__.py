"""Inference runtimes behind one interface: load an artifact, run a batch, report what runs it.

    rt = open_runtime("model.onnx", threads=2)        # or a checkpoint / .pt2 / registered name
    rt = open_runtime("model.onnx", "openvino", precision="bf16")     # fp32 | bf16 | int8 (quantized file)
    rt = open_runtime("resnet18", "torch-compile", precision="bf16")  # compiles on first use of a batch size
    logits = rt.run(images)                            # float32 N x 3 x H x W, normalized -> numpy
    rt.info()                                          # {"runtime", "device", "precision", "threads", ...}

One file per backend. Thread counts and precision are arguments, never process globals (the
PyTorch runtime sets torch's thread count only for the duration of its own calls).
"""

from __future__ import annotations

from pathlib import Path

import torch

from parvis import runtime as rt
from parvis.artifact import TENSOR_TASK, Preprocess, chosen_config, is_optimize_folder, is_quantized
from parvis.engine.loading import load_model
from parvis.errors import ParvisError
from parvis.models.base import ClassificationModel, DetectionModel, SegmentationModel, VisionModel
from parvis.models.inspection import InspectionModel
from parvis.models.stereo import StereoModel
from parvis.runtimes.base import Runtime
from parvis.runtimes.onnxruntime import OnnxRuntime
from parvis.runtimes.openvino import OpenVinoRuntime
from parvis.runtimes.timing import time_runtimes
from parvis.runtimes.torch_compile import TorchCompileRuntime
from parvis.runtimes.torch_eager import TorchRuntime

RUNTIMES = ("torch", "onnxruntime", "openvino", "torch-compile")


def open_runtime(source: str | Path, runtime: str | None = None, **kwargs) -> Runtime:
    """`source`: .onnx (ONNX Runtime by default, or OpenVINO), .pt2 (torch.export), a parvis checkpoint
    or a registered model name (PyTorch eager, or torch.compile)."""
    source = str(source)
    runtime = runtime or ("onnxruntime" if source.endswith(".onnx") else "torch")
    if runtime in ("onnxruntime", "openvino"):
        for key in ("weights", "model"):
            if kwargs.pop(key, None) is not None:
                raise ParvisError(f"{source}: --{key} applies to model names run by PyTorch, not to .onnx files")
    if runtime == "onnxruntime":
        if not source.endswith(".onnx"):
            raise ParvisError(f"{source}: ONNX Runtime runs .onnx files; export one with `parvis export`")
        return OnnxRuntime(source, **kwargs)
    if runtime == "openvino":
        if not source.endswith(".onnx"):
            raise ParvisError(f"{source}: OpenVINO runs .onnx files here; export one with `parvis export`")
        return OpenVinoRuntime(source, **kwargs)
    if runtime == "torch-compile":
        return TorchCompileRuntime(source, **kwargs)
    if runtime == "torch":
        return TorchRuntime(source, **kwargs)
    raise ParvisError(f"runtime {runtime!r} is unknown; choose one of {', '.join(RUNTIMES)}")


def as_model(runtime: Runtime) -> VisionModel:
    """The runtime as a VisionModel (forward, loss, postprocess), so evaluation and prediction code
    written for PyTorch models runs artifacts unchanged. The runtime applies its own precision and
    threads inside forward: callers never wrap it in autocast."""
    bases = {
        "classification": ClassificationModel,
        "segmentation": SegmentationModel,
        "detection": DetectionModel,
        "stereo": StereoModel,
        "inspection": InspectionModel,
    }
    base = bases.get(runtime.meta.task, VisionModel)

    class RuntimeModel(base):
        def __init__(self):
            super().__init__(runtime.meta)
            self.runtime = runtime

        def forward(self, images):
            if hasattr(self.runtime, "run_tensor"):  # PyTorch runtimes: stay on the device, no numpy copy
                return self.runtime.run_tensor(images).to(images.device)
            return torch.from_numpy(self.runtime.run(images.detach().float().cpu())).to(images.device)

        def plane_logits(self, images, planes):
            """Stereo: the plane head's logits when the runtime runs a model that has one, else None."""
            run_planes = getattr(self.runtime, "run_planes", None)
            return None if run_planes is None else run_planes(images, planes)

    return RuntimeModel().eval()


ARTIFACT_SUFFIXES = (".onnx", ".pt2")


def open_predictor(
    source: str | Path,
    device: str | torch.device = "cpu",
    runtime: str | None = None,
    precision: str = "auto",
    threads: int | None = None,
    weights: str | Path | None = None,
    given: Preprocess | None = None,
    use_ema: bool = False,
    streams: int | None = None,
) -> tuple[VisionModel, dict]:
    """(model, what runs it) for any model source: a parvis checkpoint, a registered or zoo name (with
    `weights`), an artifact (.onnx / .pt2, parvis's or foreign), or a `parvis optimize` folder (its
    chosen artifact, runtime, precision, threads and streams).

    The returned model applies its precision and threads inside forward, so what `info["precision"]`
    says is what computes; callers never add autocast. `given`: preprocessing stated by the user
    (flags), for foreign artifacts or to override a model's own.
    """
    device = device if isinstance(device, torch.device) else rt.resolve_device(device)
    source = str(source)
    if is_optimize_folder(source):
        if weights is not None:
            raise ParvisError(f"{source}: an optimize folder brings its own weights; drop --weights")
        chosen = chosen_config(source)
        source = chosen["artifact"]
        runtime = runtime or chosen["runtime"]
        precision = chosen["precision"] if precision == "auto" else precision
        threads = threads or chosen["threads"]
        streams = streams or chosen["streams"]
    elif Path(source).is_dir():
        raise ParvisError(f"{source}: a folder must be `parvis optimize` output (no optimize.json in it)")
    artifact = source.endswith(ARTIFACT_SUFFIXES)
    if artifact and use_ema:
        raise ParvisError(f"{source}: --ema applies to checkpoints, not to exported artifacts")
    runtime = runtime or ("onnxruntime" if source.endswith(".onnx") else "torch")
    if precision == "auto":
        # An ONNX file runs at the precision stored in it; everything else at the device's best.
        if source.endswith(".onnx"):
            precision = "int8" if is_quantized(source) else "fp32"
        else:
            precision = rt.resolve_precision("auto", device, "infer").name
    kwargs: dict = {"precision": precision, "threads": threads, "given": given}
    if device.type != "cpu":
        kwargs["device"] = str(device)
    if streams and streams > 1 and runtime == "openvino":
        kwargs["streams"] = streams
    if runtime in ("torch", "torch-compile") and not source.endswith(".pt2"):
        kwargs["model"] = load_model(source, device, weights=weights, given=given, use_ema=use_ema)
        kwargs.pop("given")
    elif weights is not None:
        raise ParvisError(f"{source}: --weights applies to model names, not to artifacts")
    predictor = open_runtime(source, runtime, **kwargs)
    info = predictor.info()
    if predictor.meta.extra.get("random_init"):
        info["weights"] = "random"
    return as_model(predictor), info


def time_checkpoints(
    sources: dict[str, str],
    batch: int = 32,
    rounds: int = 3,
    iters: int = 2,
    latency_iters: int = 20,
    threads: int | None = None,
) -> dict:
    """Batch-1 latency p50 and batch-`batch` images/s of each checkpoint in `sources` (label -> path)
    on the CPU, eager fp32 and the auto precision, timed round-robin (`parvis.runtimes.timing`) so
    drift on a shared machine hits all alike. Returns {"device": "cpu", "threads", "batch", "rows":
    [{model, precision, img_s, latency_ms_p50}]} (prune's before/after comparison)."""
    auto = rt.resolve_precision("auto", torch.device("cpu"), "infer").name
    precisions = ["fp32"] + ([auto] if auto != "fp32" else [])
    rows = [
        {"model": label, "precision": p, "rt": open_runtime(path, "torch", threads=threads, precision=p)}
        for p in precisions
        for label, path in sources.items()
    ]
    size = rows[0]["rt"].meta.input_size
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).numpy()
    speeds = time_runtimes([row["rt"] for row in rows], x, rounds, iters, latency_iters)
    keep = ("img_s", "latency_ms_p50")
    return {
        "device": "cpu",
        "threads": threads or torch.get_num_threads(),
        "batch": batch,
        "rows": [
            {"model": row["model"], "precision": row["precision"], **{k: s[k] for k in keep}}
            for row, s in zip(rows, speeds, strict=True)
        ],
    }


def require_images(meta, source: str | Path) -> None:
    """Image commands need a model whose preprocessing is known; a raw-tensor model gets one line saying how."""
    if meta.task == TENSOR_TASK:
        side = Path(source).stem + ".parvis.yaml"
        raise ParvisError(
            f"{source}: an ONNX file without parvis metadata; image commands need its preprocessing: give --task, "
            f"--size, --mean, --std (and --labels FILE), or write them into {side} next to it"
        )


__all__ = [
    "ARTIFACT_SUFFIXES",
    "RUNTIMES",
    "Runtime",
    "as_model",
    "open_predictor",
    "open_runtime",
    "require_images",
    "time_checkpoints",
]
