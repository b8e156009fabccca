"""PyTorch through `torch.compile` (Inductor) for inference: a checkpoint or registered model name,
frozen, fp32 or bf16 autocast, channels-last where the device prefers it.

Freezing turns the weights into constants of the compiled graph so Inductor can fold them (BN into
conv, bf16 weight casts done once, oneDNN weight prepacking on the CPU). Dynamo reads
`torch._inductor.config.freezing` while it traces, so `torch.compile(options={"freezing": True})`
(which only reaches Inductor) does not freeze anything; the flag is patched around this runtime's own
calls instead, which is where every compile happens, and is restored after each one. Frozen weights
are read once: changing the module's parameters later does not change the compiled outputs.

Compilation is lazy and slow (tens of seconds per graph for a ResNet-18 on a small CPU): the first
call at a new batch size range compiles, or pass `warmup_batches` to do it in the constructor.
Batch sizes: N >= 2 is marked dynamic, so one graph serves a range of N; batch 1 always gets its own
graph (Dynamo specializes sizes 0 and 1). PyTorch's CPU convolution picks its backend by batch size,
which splits the dynamic range once more (at 16 with torch 2.14): batch 1, 2..15 and 16+ are three
compiles, each done once.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import time
from collections.abc import Sequence

import torch

from parvis import runtime
from parvis.errors import ParvisError
from parvis.runtimes.torch_eager import TorchRuntime

# Every compile of the same model class shares one cache (keyed by forward's code object) and one
# recompile limit, after which Dynamo silently runs eager; isolate each runtime's compiles (torch 2.14+).
_ISOLATE = {"isolate_recompiles": True} if "isolate_recompiles" in inspect.signature(torch.compile).parameters else {}


def _import_inductor() -> None:
    """Import inductor's lowerings after the symmetric-memory ops they register against, in this thread,
    before anything compiles. Imported lazily during a first compile, the lowerings once found the
    symm_mem namespace half-defined ('_OpNamespace' 'symm_mem' object has no attribute
    '_low_contention_all_gather'): `parvis serve` of a torch-compile model failed to load, once in two
    starts."""
    with contextlib.suppress(ImportError):
        importlib.import_module("torch.distributed._symmetric_memory")
    importlib.import_module("torch._inductor.lowering")


class TorchCompileRuntime(TorchRuntime):
    """TorchRuntime's loading, precision, layout and threads; the module runs through torch.compile."""

    name = "torch-compile"

    def __init__(
        self,
        source: str,
        threads: int | None = None,
        device: str = "cpu",
        precision: str = "fp32",
        channels_last: bool | None = None,
        warmup_batches: Sequence[int] = (),
        **load,
    ):
        """`warmup_batches`: batch sizes to compile for now (e.g. (1, 32)) instead of on first use.
        `load`: TorchRuntime's model, weights and given preprocessing."""
        if str(source).endswith((".onnx", ".pt2")):
            raise ParvisError(
                f"{source}: torch-compile compiles a parvis checkpoint or a registered model name; "
                "run exported artifacts with --runtime onnxruntime, openvino or torch"
            )
        super().__init__(source, threads, device, precision, channels_last, **load)
        runtime.quiet_cuda_home_notice()
        _import_inductor()
        self.compiled = torch.compile(self.module, **_ISOLATE)
        t0 = time.perf_counter()
        size = self.meta.input_size
        self.stereo = self.meta.task == "stereo"
        # A stereo pair (6 channels) has any size: its height and width are marked dynamic as well
        shape = (6, size, 2 * size) if self.stereo else (3, size, size)
        for n in warmup_batches:
            self.run(torch.zeros(n, *shape))
        self.warmup_batches = list(warmup_batches)
        self.warmup_s = round(time.perf_counter() - t0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch._inductor.config as inductor_config  # noqa: PLC0415 - inductor loads on first compile

        if len(x) > 1:
            torch._dynamo.mark_dynamic(x, 0)
        if self.stereo:  # one graph for every pair size, not a recompile per size
            torch._dynamo.mark_dynamic(x, 2)
            torch._dynamo.mark_dynamic(x, 3)
        with inductor_config.patch(freezing=True):
            try:
                return self.compiled(x)
            except torch._dynamo.exc.BackendCompilerFailed as exc:
                raise ParvisError(
                    f"{self.meta.name}: torch.compile failed ({str(exc).strip().splitlines()[0][:300]}); "
                    "use --runtime torch"
                ) from exc

    def info(self) -> dict:
        return {
            "runtime": self.name,
            "kind": "torch.compile (inductor, frozen)",
            "device": str(self.device),
            "precision": self.precision.name,
            "channels_last": self.channels_last,
            "threads": self.threads or torch.get_num_threads(),
            "dynamic_batch": "batch 1 specialized, N >= 2 marked dynamic",
            "warmup_batches": self.warmup_batches,
            "warmup_s": self.warmup_s,
            "artifact": self.source,
            "torch": torch.__version__,
        }
