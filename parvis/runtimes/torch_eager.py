"""PyTorch eager (checkpoints, registered names) and torch.export programs (.pt2), fp32 or bf16
autocast, channels-last where the device prefers it."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from parvis import runtime as rt
from parvis.artifact import Preprocess, apply_given, load_program
from parvis.engine.loading import load_model
from parvis.models import VisionModel
from parvis.runtimes.base import Runtime


@contextmanager
def torch_threads(n: int | None):
    """torch's intra-op thread count set to `n` for the block (unchanged when `n` is None), then restored."""
    if not n:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class TorchRuntime(Runtime):
    name = "torch"

    def __init__(
        self,
        source: str,
        threads: int | None = None,
        device: str = "cpu",
        precision: str = "fp32",
        channels_last: bool | None = None,
        model: VisionModel | None = None,
        weights: str | None = None,
        given: Preprocess | None = None,
    ):
        """`source`: a .pt2 program, a checkpoint, or a model name (with `weights`); or pass an already
        loaded `model` (then `source` only names it)."""
        self.device = rt.resolve_device(device)
        self.precision = rt.resolve_precision(precision, self.device, "infer")
        self.threads, self.source = threads, str(source)
        if model is not None:
            self.module, self.meta, self.kind = model.to(self.device).eval(), model.meta, "eager"
        elif self.source.endswith(".pt2"):
            program, meta = load_program(self.source)
            self.meta = apply_given(meta, given)
            self.module = program.module().to(self.device)
            self.kind = "torch.export"
        else:
            self.module = load_model(self.source, self.device, weights=weights, given=given)
            self.meta = self.module.meta
            self.kind = "eager"
        if channels_last is None:
            channels_last = rt.preferred_memory_format(self.device) == torch.channels_last
        self.channels_last = channels_last
        if channels_last and self.kind == "eager":
            self.module = self.module.to(memory_format=torch.channels_last)

    def run(self, images) -> np.ndarray:
        return self.run_tensor(images).cpu().numpy()

    @torch.inference_mode()
    def run_tensor(self, images) -> torch.Tensor:
        """`run` without leaving torch: float32 output on the runtime's device (no numpy round trip)."""
        # detach(): a new tensor object, so a subclass may mark it (e.g. dynamic) without touching the caller's
        x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
        x = x.to(self.device, torch.float32).detach()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        rt.apply_precision(self.precision)  # CUDA: fp32 without TF32 (cuDNN's default uses it), tf32 with
        with torch_threads(self.threads), rt.autocast(self.precision):
            out = self.forward(x)
        return out.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    @torch.inference_mode()
    def run_planes(self, images: torch.Tensor, planes: list[float]) -> torch.Tensor | None:
        """A stereo model's plane head ("closer than plane" logits, (B, P, H, W)) at this runtime's
        precision and threads; None for a model without one."""
        planes_of = getattr(self.module, "forward_planes", None)
        if planes_of is None:
            return None
        x = images.to(self.device, torch.float32)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        rt.apply_precision(self.precision)
        with torch_threads(self.threads), rt.autocast(self.precision):
            return planes_of(x, planes).float()

    def info(self) -> dict:
        return {
            "runtime": self.name,
            "kind": self.kind,
            "device": str(self.device),
            "precision": self.precision.name,
            "channels_last": self.channels_last,
            "threads": self.threads or torch.get_num_threads(),
            "artifact": self.source,
        }
