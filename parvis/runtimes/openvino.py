"""OpenVINO: an exported .onnx (fp32) or the INT8 QDQ model `parvis quantize` writes, on the CPU plugin
(or an Intel GPU through the GPU plugin when OpenVINO sees one).

Precision is a compile hint, not a file property, except for INT8: OpenVINO's low-precision
transformations turn QuantizeLinear/DequantizeLinear pairs into real u8/i8 convolutions and matmuls,
so an INT8 file runs INT8 whatever else is asked, and a float file cannot. The precision is therefore
checked against the file: int8 needs a quantized file, fp32/bf16 a float one. The ops that stay float
in an INT8 model run in fp32, as they do in ONNX Runtime, so the two INT8 rows compare like for like.
The CPU plugin's own default on CPUs with BF16 is bf16, so fp32 is always asked for explicitly.

One synchronous request per stream. With `streams` > 1 a batch is split into that many slices run
at once (THROUGHPUT hint); with one stream the whole batch is one request (LATENCY hint).
"""

from __future__ import annotations

import threading

import numpy as np

from parvis import runtime as rt
from parvis.artifact import Preprocess, image_feeds, read_metadata
from parvis.errors import ParvisError
from parvis.runtimes.base import Runtime

PRECISIONS = ("fp32", "bf16", "int8")
HINTS = ("latency", "throughput")
_MATH_LAYERS = ("Convolution", "FullyConnected", "MatMul", "GroupConvolution", "Deconvolution")
_CORE = None
_CORE_LOCK = threading.Lock()


def _core():
    """The process's one `ov.Core`, made on first use and never released.

    Each Core loads its own CPU plugin, and the plugin (OpenVINO's sigstack_manager, there for AMX)
    swaps the creating thread's signal alternate stack for an mmap'ed one; when the plugin is destroyed
    it unmaps that stack, restoring the previous one only if the current thread's stack is its own.
    A Core per runtime meant plugins destroyed out of creation order or on another thread (a Core held
    by an exception's reference cycle and collected later, a runtime dropped on a server thread), which
    left a thread's alternate stack pointing at unmapped memory. The next signal with a Python handler
    (Python installs every handler with SA_ONSTACK; torch's DataLoader installs one for SIGCHLD) then
    cannot be delivered and the kernel kills the process with SIGSEGV (SI_KERNEL, no faulting frame):
    in the test suite, the moment a torchrun or inductor child exited. One Core is one plugin, created
    once, whose stack stays mapped; OpenVINO recommends one Core per application anyway.
    """
    global _CORE
    with _CORE_LOCK:
        if _CORE is None:
            import openvino as ov  # noqa: PLC0415 - heavy backend, loaded when used

            _CORE = ov.Core()
        return _CORE


def _ov_device(device: str, available: list[str]) -> str:
    """parvis device names -> an OpenVINO device that exists here."""
    gpus = [d for d in available if d.startswith("GPU")]
    if device in ("auto", "", None):
        return gpus[0] if gpus else "CPU"
    if device == "cpu":
        return "CPU"
    if device.startswith(("cuda", "gpu")):
        if not gpus:
            raise ParvisError(
                f"--device {device}: OpenVINO's GPU plugin sees no (Intel) GPU here (devices: {', '.join(available)}); "
                "use --device cpu, or --runtime onnxruntime / tensorrt for NVIDIA GPUs"
            )
        return gpus[0]
    raise ParvisError(f"--device {device!r}: OpenVINO runs on cpu or gpu")


class OpenVinoRuntime(Runtime):
    name = "openvino"

    def __init__(
        self,
        path: str,
        threads: int | None = None,
        device: str = "cpu",
        precision: str | None = None,
        streams: int = 1,
        performance_hint: str | None = None,
        given: Preprocess | None = None,
    ):
        """`precision`: fp32 | bf16 | int8, or None for what the file holds (int8 if quantized, else fp32).
        `performance_hint`: latency | throughput; by default latency for one stream, throughput for more."""
        try:
            import openvino as ov  # noqa: PLC0415 - heavy backend, loaded when used
            import openvino.properties as props  # noqa: PLC0415
            import openvino.properties.hint as hints  # noqa: PLC0415
        except ImportError as exc:
            raise ParvisError(f"OpenVINO is not importable here ({exc}); pip install openvino") from exc

        if precision is not None and precision not in PRECISIONS:
            raise ParvisError(f"OpenVINO runs fp32, bf16 or int8 (a quantized file), not {precision!r}")
        if streams < 1:
            raise ParvisError(f"streams={streams}: need at least 1 OpenVINO stream")
        hint = performance_hint or ("latency" if streams == 1 else "throughput")
        if hint not in HINTS:
            raise ParvisError(f"OpenVINO performance hint {hint!r} is unknown; choose one of {', '.join(HINTS)}")
        self.meta = read_metadata(path, given)
        core = _core()
        self.ov_device = _ov_device(device, core.available_devices)
        try:
            model = core.read_model(path)
        except Exception as exc:
            raise ParvisError(f"{path}: OpenVINO cannot read it ({str(exc).strip().splitlines()[0]})") from exc
        # QuantizeLinear becomes FakeQuantize when OpenVINO reads the file: that is what runs as INT8.
        quantized = any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())
        precision = precision or ("int8" if quantized else "fp32")
        if precision == "int8" and not quantized:
            raise ParvisError(
                f"{path}: has no QuantizeLinear nodes, so OpenVINO would run it in float; "
                "make an INT8 model with `parvis quantize` first, or use precision fp32/bf16"
            )
        if precision != "int8" and quantized:
            raise ParvisError(
                f"{path}: is an INT8 (QDQ) model and OpenVINO runs it as INT8; open it with precision int8, "
                f"or use the float export for {precision}"
            )
        if precision == "bf16" and self.ov_device == "CPU" and not rt.inventory().cpu.native_bf16:
            raise ParvisError(
                "precision bf16: this CPU has no native BF16 (AVX512-BF16, AMX or Arm BF16), OpenVINO would "
                "emulate it slower than fp32; use fp32 (or int8 with a quantized model)"
            )
        shapes = {}
        for port in model.inputs:  # one image input, or a stereo graph's left and right
            shape = port.get_partial_shape()
            if shape.rank.is_static and not shape[0].is_dynamic:  # batch 1 and N must both run
                shape[0] = ov.Dimension.dynamic()
                shapes[port] = shape
        if shapes:
            model.reshape(shapes)
        self.input_names = [port.get_any_name() for port in model.inputs]
        config = {
            # int8: the layers left in float run fp32, like ONNX Runtime's INT8 row
            hints.inference_precision: ov.Type.bf16 if precision == "bf16" else ov.Type.f32,
            hints.performance_mode: hints.PerformanceMode.LATENCY
            if hint == "latency"
            else hints.PerformanceMode.THROUGHPUT,
            props.num_streams: streams,
        }
        if threads:
            config[props.inference_num_threads] = threads
        try:
            self.compiled = core.compile_model(model, self.ov_device, config)
        except Exception as exc:
            raise ParvisError(f"{path}: OpenVINO cannot compile it ({str(exc).strip().splitlines()[0]})") from exc
        self.requests = [self.compiled.create_infer_request() for _ in range(streams)]
        # The requests are reused by every call; a second thread calling run() at the same time
        # would fail with "Infer Request is busy". Callers wait their turn; for concurrency open one
        # runtime per thread (parvis serve does, one per instance).
        self._lock = threading.Lock()
        self.path, self.precision, self.threads, self.streams, self.hint = path, precision, threads, streams, hint
        self.version = ov.__version__.split("-")[0]  # "2026.4.1-22982-<hash>-releases/..."

    def run(self, images) -> np.ndarray:
        x = images.numpy() if hasattr(images, "numpy") else np.asarray(images)
        x = np.ascontiguousarray(x, dtype=np.float32)
        with self._lock:
            return self._run(x)

    def _run(self, x: np.ndarray) -> np.ndarray:
        if len(self.requests) == 1 or len(x) == 1:
            request = self.requests[0]
            request.infer(self._feeds(x))
            return request.get_output_tensor(0).data.copy()  # the request reuses its output buffer
        slices = [s for s in np.array_split(x, len(self.requests)) if len(s)]
        for request, part in zip(self.requests, slices, strict=False):
            request.start_async(self._feeds(np.ascontiguousarray(part)))
        outs = []
        for request in self.requests[: len(slices)]:
            request.wait()
            outs.append(request.get_output_tensor(0).data.copy())
        return np.concatenate(outs)

    def _feeds(self, x: np.ndarray) -> dict:
        return {i: v for i, v in enumerate(image_feeds(self.input_names, x).values())}

    def _int8_layers(self) -> str:
        """'quantized/total' conv and matmul layers in the compiled graph: proof that INT8 really runs."""
        total = quantized = 0
        for op in self.compiled.get_runtime_model().get_ops():
            info = op.get_rt_info()
            if "layerType" not in info or info["layerType"].astype(str) not in _MATH_LAYERS:
                continue
            total += 1
            quantized += info["runtimePrecision"].astype(str) in ("u8", "i8")
        return f"{quantized}/{total}"

    def info(self) -> dict:
        import openvino.properties as props  # noqa: PLC0415 - heavy backend, loaded when used

        return {
            "runtime": self.name,
            "device": "cpu" if self.ov_device == "CPU" else "gpu",
            "ov_device": self.ov_device,
            "precision": self.precision,
            "threads": int(self.compiled.get_property(props.inference_num_threads)),  # what it uses, asked or not
            "streams": int(self.compiled.get_property(props.num_streams)),
            "hint": self.hint,
            "int8_layers": self._int8_layers(),
            "artifact": self.path,
            "openvino": self.version,
        }
