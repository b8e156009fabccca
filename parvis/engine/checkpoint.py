"""Checkpoints that a crash cannot half-write, that load without unpickling code, and best/last tracking.

A checkpoint is one ``torch.save`` file holding a dict. What the trainer puts in it:

=============  =================================================================================
key            value
=============  =================================================================================
format         ``"parvis-checkpoint"`` (set by :func:`save_checkpoint`; how a parvis file is told
               apart from any other ``.pt``)
version        ``1`` (set by :func:`save_checkpoint`; a newer version is refused by this code)
model          the model's ``state_dict()``
meta           the model's ``ModelMeta`` as a dict: task, input size, mean/std, class names, so
               predict, serve and video need no preprocessing flags
optimizer      ``optimizer.state_dict()``
scheduler      ``scheduler.state_dict()``
scaler         ``GradScaler.state_dict()``, or None without fp16
ema            the EMA model's ``state_dict()``, or None without EMA
epoch          epochs completed (int)
step           optimizer steps taken (int)
rng            :func:`capture_rng_state`
config         the resolved config, :func:`parvis.config.config_to_dict`
metrics        the latest evaluation, name -> number
best_metric    the best value of the monitored metric so far (float or None)
pruned         only in a channel-pruned checkpoint (``parvis.prune``): the layer attributes pruning
               changed, by module name, so loading rebuilds the registered model and reshapes it;
               plus the pruning settings and the metric measured before and after
=============  =================================================================================

Files are read with ``torch.load(weights_only=True)``, which refuses to run pickled code, so only
tensors, containers and primitives (str, bytes, int, float, bool, None, torch dtypes, devices and
sizes) may be stored: numpy arrays become lists, dtypes and classes become strings.
:func:`save_checkpoint` checks this before writing, so a checkpoint that could not be resumed is
never written.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
from collections import OrderedDict
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import save_file

from parvis.errors import ParvisError
from parvis.io import atomic_write

FORMAT = "parvis-checkpoint"
VERSION = 1
LAST = "last.pt"
BEST = "best.pt"

# What torch.load(weights_only=True) accepts besides tensors and containers (checked in tests).
_PLAIN = (str, bytes, int, float, bool, complex, type(None), torch.dtype, torch.device, torch.Size)


# --------------------------------------------------------------------------- files


def _check_plain(value: Any, where: str) -> None:
    """Raise TypeError naming the first entry that weights_only loading would refuse."""
    # Exact types: subclasses (defaultdict, namedtuple, IntEnum, tensor subclasses) are refused on load.
    kind = type(value)
    if kind in (torch.Tensor, torch.nn.Parameter):
        return
    if kind in (dict, OrderedDict):
        for key, item in value.items():
            if type(key) not in _PLAIN:
                raise TypeError(f"{where} has a key of type {type(key).__name__}; use a string or number")
            _check_plain(item, f"{where}[{key!r}]")
        return
    if kind in (list, tuple):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if kind not in _PLAIN:
        raise TypeError(
            f"{where} is a {kind.__module__}.{kind.__qualname__}, which weights_only loading "
            "refuses; store tensors, containers and primitives only (numpy -> list, dtype -> str)"
        )


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Write `state` to `path` atomically, adding "format" and "version" when missing.

    Raises TypeError (before touching the disk) when `state` holds something weights_only loading
    would refuse, so every checkpoint written can be resumed.
    """
    state = {"format": FORMAT, "version": VERSION, **state}
    _check_plain(state, "checkpoint")
    return atomic_write(Path(path), lambda tmp: torch.save(state, tmp))


def _torch_load(path: Path, map_location: Any, mmap: bool = False) -> Any:
    if not path.exists():
        raise ParvisError(f"checkpoint {path} not found; check the path (a run writes {LAST} and {BEST} in its folder)")
    if path.is_dir():
        raise ParvisError(f"checkpoint {path} is a folder; pass the file inside it, e.g. {path / LAST}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except OSError as exc:
        raise ParvisError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    except Exception as exc:
        message = str(exc)
        if "Weights only load failed" in message:
            found = re.search(r"Unsupported global: GLOBAL (\S+)", message)
            what = f"such as {found.group(1)}" if found else "that weights_only loading refuses"
            raise ParvisError(
                f"checkpoint {path} holds pickled Python objects ({what}), so it was not written by parvis; "
                "pass a checkpoint saved by parvis"
            ) from None
        reason = message.splitlines()[0][:120] if message.strip() else type(exc).__name__
        raise ParvisError(
            f"checkpoint {path} is truncated or corrupt ({reason}); use another checkpoint "
            f"(e.g. {BEST} or {LAST} of the same run)"
        ) from None


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict:
    """Load a parvis checkpoint with weights_only=True; any unusable file is a ParvisError naming it."""
    return _load(Path(path), map_location)


def _load(path: Path, map_location: Any, mmap: bool = False) -> dict:
    state = _torch_load(path, map_location, mmap)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ParvisError(
            f"{path} is not a parvis checkpoint (no 'format': {FORMAT!r}); pass a {LAST} or {BEST} written by parvis"
        )
    version = state.get("version")
    if not isinstance(version, int):
        raise ParvisError(f"checkpoint {path} has no format version; it is damaged or was not written by parvis")
    if version > VERSION:
        raise ParvisError(
            f"checkpoint {path} has format version {version!r}, newer than this parvis reads ({VERSION}); "
            "upgrade parvis"
        )
    return state


# --------------------------------------------------------------------------- random number generators


def capture_rng_state() -> dict:
    """The state of python's, numpy's (legacy global), torch's CPU and every initialized CUDA generator.

    Only plain types and tensors, so it loads with weights_only=True. CUDA generators are captured only
    when CUDA is already initialized: this function never starts CUDA or probes hardware.
    """
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {
            "kind": str(kind),
            "keys": keys.tolist(),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }


def restore_rng_state(state: dict) -> None:
    """Put back what :func:`capture_rng_state` captured.

    CUDA generators are restored only when CUDA is initialized (so call this after the model is on its
    device), and only for devices that exist here: a run resumed on fewer GPUs keeps the ones it has.
    """
    if "python" in state:
        py = state["python"]
        random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    if "numpy" in state:
        npy = state["numpy"]
        keys = np.asarray(npy["keys"], dtype=np.uint32)
        np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    if "torch" in state:
        # set_rng_state takes a CPU ByteTensor even when the checkpoint was mapped to a GPU.
        torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_initialized():
        for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state.cpu(), index)


# --------------------------------------------------------------------------- export


def export_safetensors(
    state_dict: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, Any] | None = None
) -> Path:
    """Write tensors as .safetensors (atomically), the format other tools load without pickle.

    Tensors are moved to the CPU and made contiguous; a tensor sharing storage with an earlier one
    (tied weights) is cloned, since safetensors refuses shared storage. Metadata values that are not
    strings are JSON-encoded.
    """
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"state_dict[{name!r}] is a {type(tensor).__name__}; safetensors holds tensors only")
        tensor = tensor.detach().cpu()
        storage = tensor.untyped_storage().data_ptr()
        if storage in seen and tensor.numel() > 0:
            tensor = tensor.clone()
        seen.add(storage)
        tensors[str(name)] = tensor.contiguous()
    meta = None
    if metadata is not None:
        meta = {str(k): v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in metadata.items()}
    return atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=meta))


# --------------------------------------------------------------------------- best / last


class CheckpointManager:
    """Writes `run_dir/last.pt` every time and `run_dir/best.pt` when the monitored metric improves.

    The best value so far travels inside each checkpoint as "best_metric", and a new manager on an
    existing run folder reads it back from best.pt, so a resumed run only replaces best.pt with
    something better.
    """

    def __init__(self, run_dir: str | Path, monitor: str, mode: Literal["max", "min"] = "max"):
        if mode not in ("max", "min"):
            raise ParvisError(f"checkpoint mode must be 'max' or 'min', got {mode!r}")
        self.run_dir = Path(run_dir)
        self.monitor = monitor
        self.mode = mode
        self.best_value: float | None = None
        if self.best_path.exists():
            # mmap: only the small "best_metric" entry is needed, not the weights.
            best = _load(self.best_path, "cpu", mmap=True).get("best_metric")
            self.best_value = float(best) if best is not None else None

    @property
    def last_path(self) -> Path:
        return self.run_dir / LAST

    @property
    def best_path(self) -> Path:
        return self.run_dir / BEST

    def is_improvement(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best_value is None:
            return True
        return value > self.best_value if self.mode == "max" else value < self.best_value

    def save(self, state: dict, metrics: dict[str, float]) -> dict:
        """Write last.pt (and best.pt when `metrics[monitor]` improves); returns {"last", "best", "is_best"}."""
        if self.monitor not in metrics:
            raise ParvisError(
                f"metric {self.monitor!r} to pick the best checkpoint is not among the metrics "
                f"({', '.join(metrics) or 'none'}); choose one of those"
            )
        value = float(metrics[self.monitor])
        is_best = self.is_improvement(value)
        best_value = value if is_best else self.best_value
        save_checkpoint(self.last_path, {**state, "metrics": dict(metrics), "best_metric": best_value})
        if is_best:
            atomic_write(self.best_path, lambda tmp: _link_or_copy(self.last_path, tmp))
        self.best_value = best_value
        return {"last": self.last_path, "best": self.best_path if is_best else None, "is_best": is_best}


def _link_or_copy(source: Path, target: str) -> None:
    # A hard link costs no I/O and stays valid: last.pt is later replaced by a new file, never rewritten
    # in place. Filesystems without hard links get a copy.
    os.unlink(target)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
