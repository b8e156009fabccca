"""The one place that knows the hardware.

Device discovery (CUDA GPUs with MIG, Apple MPS, the CPU and its ISA), the precision policy, the
autocast context, seeding, loader worker counts and distributed init/teardown all live here.
Every other module receives a ``torch.device`` or a :class:`Precision` and never asks
``torch.cuda.is_available()`` itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import platform
import random
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from functools import lru_cache
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path

import numpy as np
import torch

from parvis import __version__
from parvis.errors import ParvisError

PRECISIONS = ("auto", "fp32", "tf32", "bf16", "fp16")
PURPOSES = ("train", "infer")

# ISA features worth knowing for vision work: vector width, and native low-precision dot products.
CPU_FEATURES = {
    "avx2": "avx2",
    "fma": "fma",
    "avx512f": "avx512",
    "avx512_bf16": "avx512_bf16",
    "avx512_vnni": "avx512_vnni",
    "avx_vnni": "avx_vnni",
    "avx512_fp16": "avx512_fp16",
    "amx_tile": "amx",
    "amx_bf16": "amx_bf16",
    "amx_int8": "amx_int8",
    "amx_fp16": "amx_fp16",
    # Arm
    "asimd": "neon",
    "sve": "sve",
    "bf16": "arm_bf16",
    "i8mm": "arm_i8mm",
}


# --------------------------------------------------------------------------- inventory


@dataclass
class CPUInfo:
    model: str
    arch: str
    logical_cores: int
    physical_cores: int
    usable_cores: int  # what this process may run on (affinity / cgroup), the number that matters
    features: list[str]
    torch_capability: str  # the kernel set PyTorch dispatches to (e.g. AVX512)
    torch_threads: int

    @property
    def native_bf16(self) -> bool:
        return bool({"avx512_bf16", "amx_bf16", "arm_bf16"} & set(self.features))

    @property
    def native_fp16(self) -> bool:
        return bool({"avx512_fp16", "amx_fp16"} & set(self.features))

    @property
    def int8_dot(self) -> bool:
        return bool({"avx512_vnni", "avx_vnni", "amx_int8", "arm_i8mm"} & set(self.features))


@dataclass
class MIGInstance:
    name: str  # e.g. "MIG 1g.10gb Device 0"
    uuid: str
    profile: str  # e.g. "1g.10gb"


@dataclass
class GPUInfo:
    index: int
    name: str
    memory_gb: float
    compute_capability: tuple[int, int]
    multiprocessors: int
    bf16: bool
    tf32: bool
    fp16_tensor_cores: bool
    mig_mode: bool | None = None  # None: unknown (no nvidia-smi / NVML)
    mig_instances: list[MIGInstance] = field(default_factory=list)


@dataclass
class Inventory:
    cpu: CPUInfo
    gpus: list[GPUInfo]
    mps: bool
    torch_version: str
    cuda_version: str | None
    python: str

    @property
    def accelerator(self) -> str:
        return "cuda" if self.gpus else ("mps" if self.mps else "cpu")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["cpu"]["native_bf16"] = self.cpu.native_bf16
        d["cpu"]["native_fp16"] = self.cpu.native_fp16
        d["cpu"]["int8_dot"] = self.cpu.int8_dot
        d["accelerator"] = self.accelerator
        return d


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def parse_cpuinfo(text: str) -> tuple[str, list[str], int]:
    """(model name, parvis feature names, physical cores) from /proc/cpuinfo text."""
    model = ""
    flags: set[str] = set()
    cores: set[tuple[str, str]] = set()
    physical_id = core_id = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key in ("model name", "Model name") and not model:
            model = value
        elif key in ("flags", "Features"):  # x86 / Arm spelling
            flags.update(value.split())
        elif key == "physical id":
            physical_id = value
        elif key == "core id":
            core_id = value
            cores.add((physical_id or "0", core_id))
    features = sorted({ours for theirs, ours in CPU_FEATURES.items() if theirs in flags})
    return model, features, len(cores)


def usable_cores() -> int:
    """Cores this process may use: CPU affinity, then a cgroup v2 CPU quota if one is set."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        n = os.cpu_count() or 1
    quota = _read("/sys/fs/cgroup/cpu.max").split()
    if len(quota) == 2 and quota[0] != "max":
        n = min(n, max(1, int(int(quota[0]) / int(quota[1]))))
    return n


def _cpu_info() -> CPUInfo:
    model, features, physical = parse_cpuinfo(_read("/proc/cpuinfo"))
    if not model:
        model = platform.processor() or platform.machine()
    logical = os.cpu_count() or 1
    return CPUInfo(
        model=model,
        arch=platform.machine(),
        logical_cores=logical,
        physical_cores=physical or logical,
        usable_cores=usable_cores(),
        features=features,
        torch_capability=torch.backends.cpu.get_cpu_capability(),
        torch_threads=torch.get_num_threads(),
    )


_MIG_LINE = re.compile(r"^\s*(MIG\s+(\S+)\s+Device\s+\d+):?\s*\(UUID:\s*(\S+?)\)", re.MULTILINE)
_GPU_LINE = re.compile(r"^GPU\s+(\d+):")


def parse_nvidia_smi_list(text: str) -> dict[int, list[MIGInstance]]:
    """MIG instances per GPU index from `nvidia-smi -L` output."""
    out: dict[int, list[MIGInstance]] = {}
    gpu = -1
    for line in text.splitlines():
        m = _GPU_LINE.match(line)
        if m:
            gpu = int(m.group(1))
            out.setdefault(gpu, [])
            continue
        m = _MIG_LINE.match(line)
        if m and gpu >= 0:
            out[gpu].append(MIGInstance(name=" ".join(m.group(1).split()), profile=m.group(2), uuid=m.group(3)))
    return out


def parse_mig_modes(text: str) -> dict[int, bool | None]:
    """MIG mode per GPU from `nvidia-smi --query-gpu=index,mig.mode.current --format=csv,noheader`."""
    modes: dict[int, bool | None] = {}
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit():
            modes[int(parts[0])] = {"Enabled": True, "Disabled": False}.get(parts[1])
    return modes


def _nvidia_smi(*args: str) -> str:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return ""
    try:
        return subprocess.run([exe, *args], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def gpu_info_from_properties(index: int, props, mig_mode=None, mig_instances=()) -> GPUInfo:
    cc = (int(props.major), int(props.minor))
    return GPUInfo(
        index=index,
        name=str(props.name),
        memory_gb=round(props.total_memory / 2**30, 2),
        compute_capability=cc,
        multiprocessors=int(getattr(props, "multi_processor_count", 0)),
        bf16=cc >= (8, 0),
        tf32=cc >= (8, 0),
        fp16_tensor_cores=cc >= (7, 0),
        mig_mode=mig_mode,
        mig_instances=list(mig_instances),
    )


def _gpus() -> list[GPUInfo]:
    if not torch.cuda.is_available():
        return []
    modes = parse_mig_modes(_nvidia_smi("--query-gpu=index,mig.mode.current", "--format=csv,noheader"))
    migs = parse_nvidia_smi_list(_nvidia_smi("-L"))
    gpus = []
    for i in range(torch.cuda.device_count()):
        gpus.append(gpu_info_from_properties(i, torch.cuda.get_device_properties(i), modes.get(i), migs.get(i, [])))
    return gpus


@lru_cache(maxsize=1)
def inventory() -> Inventory:
    """What this machine has. Cached: hardware does not change while we run."""
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return Inventory(
        cpu=_cpu_info(),
        gpus=_gpus(),
        mps=mps,
        torch_version=torch.__version__,
        cuda_version=torch.version.cuda,
        python=platform.python_version(),
    )


def has_cuda() -> bool:
    return bool(inventory().gpus)


# Libraries whose version changes a measured figure (None where one is not installed).
RESULT_LIBRARIES = ("torchvision", "onnx", "onnxruntime", "openvino")


def result_header(device: str | torch.device | None = None) -> dict:
    """What every result file says it ran on: `device` (left out when None), the torch version, the
    machine (CPU, usable cores, GPUs, how busy it was) and the versions (parvis, Python, torch, CUDA,
    the libraries that run models). bench suites, doctor, optimize and prune all write this block,
    so `parvis report` reads one layout."""
    inv = inventory()
    versions: dict[str, str | None] = {
        "parvis": __version__,
        "python": inv.python,
        "torch": torch.__version__,
        "cuda": inv.cuda_version,
    }
    for pkg in RESULT_LIBRARIES:
        try:
            versions[pkg] = package_version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    header = {} if device is None else {"device": str(device)}
    return header | {
        "torch": torch.__version__,
        "machine": {
            "cpu": inv.cpu.model,
            "usable_cores": inv.cpu.usable_cores,
            "gpus": [g.name for g in inv.gpus],
            # Other work on the machine skews every figure (on 2 cores, badly): say how busy it was.
            "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        },
        "versions": versions,
    }


def default_device() -> torch.device:
    """The fastest device present: CUDA (this process's local rank under torchrun), then MPS, then CPU."""
    inv = inventory()
    if inv.gpus:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % len(inv.gpus))
    return torch.device("mps" if inv.mps else "cpu")


def resolve_device(spec: str | None = "auto") -> torch.device:
    """'auto', 'cpu', 'cuda', 'cuda:1', 'mps' -> a device that exists, or a ParvisError saying what does."""
    if spec in (None, "", "auto"):
        return default_device()
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        raise ParvisError(f"--device {spec!r} is not a device name; use auto, cpu, cuda, cuda:N or mps") from None
    inv = inventory()
    if device.type == "cuda":
        if not inv.gpus:
            raise ParvisError(f"--device {spec}: no CUDA GPU is visible here; use --device cpu (or auto)")
        if device.index is not None and device.index >= len(inv.gpus):
            raise ParvisError(
                f"--device {spec}: only {len(inv.gpus)} GPU(s) visible (cuda:0..cuda:{len(inv.gpus) - 1})"
            )
    elif device.type == "mps" and not inv.mps:
        raise ParvisError(f"--device {spec}: Apple MPS is not available here; use --device cpu (or auto)")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ParvisError(f"--device {spec}: unsupported device type; use auto, cpu, cuda, cuda:N or mps")
    return device


def gpu_for(device: torch.device) -> GPUInfo | None:
    if device.type != "cuda":
        return None
    gpus = inventory().gpus
    return gpus[device.index or 0] if gpus else None


# --------------------------------------------------------------------------- precision policy


@dataclass(frozen=True)
class Precision:
    """A resolved precision: what the user asked, what it means on this device, and why."""

    name: str  # fp32 | tf32 | bf16 | fp16
    device_type: str
    autocast_dtype: torch.dtype | None  # None: run in fp32, no autocast
    grad_scaler: bool  # fp16 training needs loss scaling to keep small gradients from underflowing
    tf32: bool  # allow TF32 tensor cores for fp32 matmuls/convs
    reason: str

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "device_type": self.device_type,
            "autocast_dtype": str(self.autocast_dtype).replace("torch.", "") if self.autocast_dtype else None,
            "grad_scaler": self.grad_scaler,
            "tf32": self.tf32,
            "reason": self.reason,
        }


def resolve_precision(
    requested: str = "auto",
    device: torch.device | str = "cpu",
    purpose: str = "train",
    cpu: CPUInfo | None = None,
    gpu: GPUInfo | None = None,
) -> Precision:
    """Map --precision to what runs on `device`.

    auto: CUDA Ampere+ -> bf16 (same range as fp32, no loss scaling; TF32 for what stays fp32);
    CUDA Volta/Turing -> fp16 with a GradScaler; older CUDA -> fp32; MPS -> fp16 for inference,
    fp32 for training; CPU with native BF16 (AVX512-BF16, AMX, Arm BF16) -> bf16; other CPUs -> fp32.
    `cpu` / `gpu` let tests simulate hardware; by default they come from inventory().
    """
    device = torch.device(device)
    if requested not in PRECISIONS:
        raise ParvisError(f"--precision {requested!r} is unknown; choose one of {', '.join(PRECISIONS)}")
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
    kind = device.type

    def make(name: str, reason: str) -> Precision:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(name)
        scaler = name == "fp16" and purpose == "train" and kind == "cuda"
        tf32 = kind == "cuda" and gpu is not None and gpu.tf32 and name != "fp32"
        return Precision(name, kind, dtype, scaler, tf32, reason)

    if kind == "cuda":
        gpu = gpu or gpu_for(device)
        if gpu is None:
            raise ParvisError(f"device {device} is not visible; use --device cpu or a GPU that exists")
        cc = "{}.{}".format(*gpu.compute_capability)
        if requested == "auto":
            if gpu.bf16:
                return make("bf16", f"{gpu.name} (compute {cc}) has BF16 tensor cores: fp32 range, no loss scaling")
            if gpu.fp16_tensor_cores:
                return make("fp16", f"{gpu.name} (compute {cc}) has FP16 but not BF16 tensor cores; loss scaling on")
            return make("fp32", f"{gpu.name} (compute {cc}) has no tensor cores; fp32 is fastest and exact")
        if requested in ("bf16", "tf32") and not gpu.bf16:
            raise ParvisError(
                f"--precision {requested} needs compute capability 8.0+ (Ampere); {gpu.name} is {cc}; "
                "use --precision fp16 or fp32"
            )
        reasons = {
            "fp32": "fp32 requested: exact, TF32 off",
            "tf32": "tf32 requested: fp32 storage, TF32 tensor-core matmuls",
            "bf16": "bf16 requested",
            "fp16": "fp16 requested" + (" with a GradScaler" if purpose == "train" else ""),
        }
        if requested == "tf32":
            return Precision("tf32", kind, None, False, True, reasons["tf32"])
        return make(requested, reasons[requested])

    if kind == "mps":
        if requested == "auto":
            if purpose == "infer":
                return make("fp16", "Apple GPU: fp16 inference halves memory traffic")
            return make("fp32", "Apple GPU: mixed-precision training on MPS is not reliable; fp32")
        if requested == "tf32":
            raise ParvisError("--precision tf32 is an NVIDIA Ampere+ feature; on MPS use fp32 or fp16")
        if requested == "fp16" and purpose == "train":
            raise ParvisError("--precision fp16 training is not supported on MPS (no loss scaling there); use fp32")
        return make(requested, f"{requested} requested on MPS")

    if kind != "cpu":
        raise ParvisError(f"device type {kind!r} is not supported; use cpu, cuda or mps")
    cpu = cpu or inventory().cpu
    if requested == "auto":
        if cpu.native_bf16:
            feats = ", ".join(f for f in cpu.features if "bf16" in f) or "native BF16"
            return make("bf16", f"CPU has {feats}: bf16 autocast runs matmuls/convs at about 2x+ fp32")
        return make("fp32", "CPU has no native BF16 instructions: bf16 would be emulated and slower than fp32")
    if requested == "tf32":
        raise ParvisError("--precision tf32 is an NVIDIA Ampere+ GPU feature; on the CPU use fp32 or bf16")
    if requested == "fp16":
        if purpose == "train":
            raise ParvisError(
                "--precision fp16 training is not supported on the CPU (no loss scaling); use bf16 or fp32"
            )
        if not cpu.native_fp16:
            raise ParvisError(
                "--precision fp16 on this CPU would be emulated (no AVX512-FP16/AMX-FP16); use bf16 or fp32"
            )
        return make("fp16", "fp16 inference on a CPU with native FP16")
    if requested == "bf16":
        why = "native BF16" if cpu.native_bf16 else "emulated: expect it to be slower than fp32 on this CPU"
        return make("bf16", f"bf16 requested ({why})")
    return make("fp32", "fp32 requested")


def apply_precision(precision: Precision) -> None:
    """Process-wide math settings a precision implies (TF32 switches on CUDA)."""
    if precision.device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = precision.tf32
        torch.backends.cudnn.allow_tf32 = precision.tf32


def autocast(precision: Precision):
    """The autocast context for a resolved precision (a no-op for fp32/tf32)."""
    if precision.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=precision.device_type, dtype=precision.autocast_dtype)


def grad_scaler(precision: Precision):
    """A GradScaler when the precision needs one (fp16 training on CUDA), else None."""
    if precision.grad_scaler:
        return torch.amp.GradScaler("cuda")
    return None


def preferred_memory_format(device: torch.device) -> torch.memory_format:
    """channels-last is faster for convolutions with oneDNN (CPU) and cuDNN tensor cores (CUDA)."""
    return torch.channels_last if device.type in ("cpu", "cuda") else torch.contiguous_format


# --------------------------------------------------------------------------- host memory


_ALLOCATOR_STATE: dict[str, object] = {}
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt() parameters, from glibc's malloc.h


def configure_host_allocator() -> dict[str, object]:
    """Keep freed large blocks in glibc's heap instead of returning them to the OS.

    glibc serves allocations above its mmap threshold (128 KiB to 32 MiB, adaptive) with fresh
    mmap()s, so every new batch-sized CPU tensor pays a page fault per 4 KiB page on first touch.
    For a 64 x 3 x 224 x 224 float batch that dominated normalization (measured 24 ms -> 5 ms per
    batch with this setting). This is what LD_PRELOAD-ing jemalloc/tcmalloc achieves for PyTorch on
    CPUs, without a preload. Freed memory up to the trim threshold stays reserved by the process.
    Set PARVIS_HOST_ALLOCATOR=default to leave glibc's defaults alone. Worker processes forked
    after this call inherit it.
    """
    if _ALLOCATOR_STATE:
        return _ALLOCATOR_STATE
    if os.environ.get("PARVIS_HOST_ALLOCATOR", "tuned") == "default":
        _ALLOCATOR_STATE.update(tuned=False, reason="PARVIS_HOST_ALLOCATOR=default")
        return _ALLOCATOR_STATE
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        _ALLOCATOR_STATE.update(tuned=False, reason="not glibc")
        return _ALLOCATOR_STATE
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError as exc:
        _ALLOCATOR_STATE.update(tuned=False, reason=str(exc))
        return _ALLOCATOR_STATE
    mmap_mb = next((mb for mb in (256, 32) if libc.mallopt(M_MMAP_THRESHOLD, mb * 2**20) == 1), None)
    trim_ok = libc.mallopt(M_TRIM_THRESHOLD, 1024 * 2**20) == 1
    _ALLOCATOR_STATE.update(tuned=bool(mmap_mb and trim_ok), mmap_threshold_mb=mmap_mb, trim_threshold_mb=1024)
    return _ALLOCATOR_STATE


@contextlib.contextmanager
def plain_host_allocator():
    """Within the block, blocks above 32 MiB are mmap()ed and returned again (glibc's own ceiling), when
    `configure_host_allocator` raised it: for code parvis does not control. anomalib's coreset search
    allocates a 247 MB temporary per pick; kept in the heap, fragmentation grew the process by 1.5 GB a
    second until the OOM killer stopped it."""
    mmap_mb = _ALLOCATOR_STATE.get("mmap_threshold_mb") if _ALLOCATOR_STATE.get("tuned") else None
    if not mmap_mb or mmap_mb <= 32:
        yield
        return
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20)
    libc.malloc_trim(0)
    try:
        yield
    finally:
        libc.mallopt(M_MMAP_THRESHOLD, mmap_mb * 2**20)


# --------------------------------------------------------------------------- seeding


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch (all devices); `deterministic` also forbids nondeterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS needs a fixed workspace to be deterministic; it must be set before the first matmul.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    else:
        torch.backends.cudnn.benchmark = True


def worker_seed_init(worker_id: int) -> None:
    """DataLoader worker_init_fn: derive numpy/python seeds from torch's per-worker seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


# --------------------------------------------------------------------------- workers and threads


def recommended_workers(device: torch.device | None = None, local_world_size: int | None = None) -> int:
    """DataLoader workers per process.

    With an accelerator the host only decodes and augments, so every core this process owns can be
    a worker. On the CPU the model needs cores too: leave one core for the training/inference
    threads, but never fewer than one worker, so decoding still overlaps with compute. (On 2 cores
    loading in the main process instead measured faster in 20-step benchmarks but slower over the
    demo's full training run: 133-164 vs 146-176 img/s per epoch.)
    """
    device = device or default_device()
    local = local_world_size or int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    per_process = max(1, inventory().cpu.usable_cores // max(1, local))
    if device.type == "cpu":
        return max(1, min(8, per_process - 1))
    return max(1, min(16, per_process))


def available_ram_bytes() -> int:
    """Memory the OS can hand out now (MemAvailable; free pages where /proc/meminfo is missing)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def pin_memory(device: torch.device) -> bool:
    """Pinned host buffers only help (and only work) for copies to a CUDA device."""
    return device.type == "cuda"


# --------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    backend: str | None
    device: torch.device

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def distributed_backend(device: torch.device) -> str:
    """NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if device.type == "cuda" else "gloo"


def init_distributed(device: str | torch.device | None = "auto", timeout_s: float = 1800) -> DistInfo:
    """Join the process group torchrun described in the environment (RANK, WORLD_SIZE, ...).

    Without torchrun's variables this is a single process and nothing is initialized.
    """
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    dev = resolve_device(device if isinstance(device, str) or device is None else str(device))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank % max(1, len(inventory().gpus)))
        torch.cuda.set_device(dev)
    if world <= 1:
        return DistInfo(0, 0, 1, 1, None, dev)
    if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        raise ParvisError("WORLD_SIZE > 1 but MASTER_ADDR/MASTER_PORT are unset; launch with torchrun or --nproc")
    backend = distributed_backend(dev)
    if not torch.distributed.is_initialized():
        kwargs = {"device_id": dev} if backend == "nccl" else {}
        torch.distributed.init_process_group(
            backend=backend, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s), **kwargs
        )
    return DistInfo(rank, local_rank, world, local_world, backend, dev)


def teardown_distributed() -> None:
    """Leave the process group together: a rank that destroys it while a peer is still in a
    collective (rank 0 writing the last checkpoint, say) makes gloo abort that peer at exit."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        try:
            torch.distributed.barrier()
        finally:
            torch.distributed.destroy_process_group()


@contextlib.contextmanager
def distributed(device: str | torch.device | None = "auto"):
    """`with distributed() as dist:` init from torchrun's environment, always tear down."""
    info = init_distributed(device)
    try:
        yield info
    finally:
        teardown_distributed()


# --------------------------------------------------------------------------- inference runtimes


def inference_runtimes() -> dict[str, dict]:
    """Which inference runtimes import here, with their execution providers / devices."""
    out: dict[str, dict] = {}
    try:
        import onnxruntime as ort  # noqa: PLC0415 - optional backend, probed

        out["onnxruntime"] = {"available": True, "version": ort.__version__, "providers": ort.get_available_providers()}
    except Exception as exc:  # ImportError, or a broken native library
        out["onnxruntime"] = {"available": False, "error": _short(exc)}
    try:
        import openvino as ov  # noqa: PLC0415 - optional backend, probed

        out["openvino"] = {"available": True, "version": ov.__version__, "devices": ov.Core().available_devices}
    except Exception as exc:
        out["openvino"] = {"available": False, "error": _short(exc)}
    try:
        import tensorrt as trt  # noqa: PLC0415 - optional backend, probed

        out["tensorrt"] = {"available": has_cuda(), "version": trt.__version__}
        if not has_cuda():
            out["tensorrt"]["error"] = "installed, but TensorRT needs a CUDA GPU"
    except Exception as exc:
        out["tensorrt"] = {"available": False, "error": _short(exc)}
    return out


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class _NoCudaRuntimeNotice(logging.Filter):
    """Drops torch's "No CUDA runtime is found, using CUDA_HOME=..." and nothing else.

    Importing torch.utils.cpp_extension (Inductor does, to build its CPU kernels; so does NNCF) logs this
    warning on a machine that has a CUDA toolkit folder but no GPU, which says nothing about CPU work.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No CUDA runtime is found")


def quiet_cuda_home_notice() -> None:
    """Install the filter above on torch's cpp_extension logger (once; not with a GPU, where torch is silent)."""
    if has_cuda():
        return
    log = logging.getLogger("torch.utils.cpp_extension")
    if not any(isinstance(f, _NoCudaRuntimeNotice) for f in log.filters):
        log.addFilter(_NoCudaRuntimeNotice())
