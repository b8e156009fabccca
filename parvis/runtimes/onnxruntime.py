"""ONNX Runtime: CPU execution provider; CUDA and TensorRT providers first when the installed
onnxruntime has them and a GPU is asked for (an error, not a silent CPU run, when none of them starts)."""

from __future__ import annotations

import numpy as np

from parvis.artifact import Preprocess, image_feeds, read_metadata
from parvis.errors import ParvisError
from parvis.runtimes.base import Runtime

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


class OnnxRuntime(Runtime):
    name = "onnxruntime"

    def __init__(
        self,
        path: str,
        threads: int | None = None,
        device: str = "cpu",
        precision: str = "fp32",
        given: Preprocess | None = None,
    ):
        import onnxruntime as ort  # noqa: PLC0415 - heavy backend, loaded when used

        if precision not in ("fp32", "int8"):
            raise ParvisError(f"ONNX Runtime runs the precision stored in the file (fp32 or int8), not {precision!r}")
        self.meta = read_metadata(path, given)
        self.path, self.precision, self.threads = path, precision, threads
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        available = ort.get_available_providers()
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            gpu = [p for p in GPU_PROVIDERS if p in available]
            if not gpu:
                raise ParvisError("this onnxruntime has no CUDA provider; install onnxruntime-gpu or use --device cpu")
            providers = gpu + providers
        try:
            self.session = ort.InferenceSession(path, options, providers=providers)
        except Exception as exc:
            raise ParvisError(f"{path}: ONNX Runtime cannot load it ({str(exc).splitlines()[0]})") from exc
        if device.startswith("cuda") and self.session.get_providers()[0] == "CPUExecutionProvider":
            # ONNX Runtime falls back to the CPU when a GPU provider cannot start (no GPU, or CUDA/cuDNN
            # libraries missing), with only a log line: a run asked for on the GPU must not be timed on the CPU.
            raise ParvisError(
                f"{path}: ONNX Runtime could not start {' or '.join(providers[:-1])} on this machine and fell back to "
                "the CPU; check the GPU and the CUDA/cuDNN libraries onnxruntime-gpu needs, or use --device cpu"
            )
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.input_name = self.input_names[0]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, images) -> np.ndarray:
        """Images (one input), or {input name: array} for a model with several inputs: the first output."""
        if isinstance(images, dict):
            return next(iter(self.run_tensors(images).values()))
        x = images.numpy() if hasattr(images, "numpy") else np.asarray(images)
        return self.session.run(None, image_feeds(self.input_names, np.ascontiguousarray(x, dtype=np.float32)))[0]

    def run_tensors(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every named input in, every named output out (raw-tensor models with several of each)."""
        return dict(zip(self.output_names, self.session.run(None, inputs), strict=True))

    def info(self) -> dict:
        return {
            "runtime": self.name,
            "device": "cuda" if self.session.get_providers()[0] != "CPUExecutionProvider" else "cpu",
            "providers": self.session.get_providers(),
            "precision": self.precision,
            "threads": self.threads or "default",
            "artifact": self.path,
        }
