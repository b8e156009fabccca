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

from parvis.errors import ParvisError
from parvis.runtimes.base import Runtime

RUNTIMES = ("torch", "onnxruntime", "openvino", "torch-compile")


def open_runtime(source: str | Path, runtime: str | None = None, **kwargs) -> Runtime:
    """`source`: .onnx (ONNX Runtime by default, or OpenVINO), .pt2 (torch.export), a parvis checkpoint
    or a registered model name (PyTorch eager, or torch.compile)."""
    source = str(source)
    runtime = runtime or ("onnxruntime" if source.endswith(".onnx") else "torch")
    if runtime == "onnxruntime":
        from parvis.runtimes.onnxruntime import OnnxRuntime

        if not source.endswith(".onnx"):
            raise ParvisError(f"{source}: ONNX Runtime runs .onnx files; export one with `parvis export`")
        return OnnxRuntime(source, **kwargs)
    if runtime == "openvino":
        from parvis.runtimes.openvino import OpenVinoRuntime

        if not source.endswith(".onnx"):
            raise ParvisError(f"{source}: OpenVINO runs .onnx files here; export one with `parvis export`")
        return OpenVinoRuntime(source, **kwargs)
    if runtime == "torch-compile":
        from parvis.runtimes.torch_compile import TorchCompileRuntime

        return TorchCompileRuntime(source, **kwargs)
    if runtime == "torch":
        from parvis.runtimes.torch_eager import TorchRuntime

        return TorchRuntime(source, **kwargs)
    raise ParvisError(f"runtime {runtime!r} is unknown; choose one of {', '.join(RUNTIMES)}")


def as_model(runtime: Runtime):
    """The runtime as a VisionModel (forward, loss, postprocess), so evaluation and prediction code
    written for PyTorch models runs artifacts unchanged."""
    import torch

    from parvis.models.base import ClassificationModel, DetectionModel, SegmentationModel

    bases = {"classification": ClassificationModel, "segmentation": SegmentationModel, "detection": DetectionModel}
    base = bases.get(runtime.meta.task, SegmentationModel)

    class RuntimeModel(base):
        def __init__(self):
            super().__init__(runtime.meta)
            self.runtime = runtime

        def forward(self, images):
            return torch.from_numpy(self.runtime.run(images.detach().float().cpu())).to(images.device)

    return RuntimeModel().eval()


ARTIFACT_SUFFIXES = (".onnx", ".pt2")

__all__ = ["ARTIFACT_SUFFIXES", "RUNTIMES", "Runtime", "as_model", "open_runtime"]
