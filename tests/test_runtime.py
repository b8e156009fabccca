import dataclasses

import pytest
import torch

from parvis import runtime
from parvis.errors import ParvisError
from parvis.runtime import CPUInfo, GPUInfo, resolve_precision

X86_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9654 96-Core Processor
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu sse avx avx2 fma avx512f avx512_bf16 avx512_vnni amx_tile amx_bf16 amx_int8

processor\t: 1
model name\t: AMD EPYC 9654 96-Core Processor
physical id\t: 0
core id\t\t: 1
flags\t\t: fpu sse avx avx2 fma avx512f avx512_bf16 avx512_vnni amx_tile amx_bf16 amx_int8

processor\t: 2
model name\t: AMD EPYC 9654 96-Core Processor
physical id\t: 0
core id\t\t: 1
flags\t\t: fpu sse avx avx2 fma avx512f avx512_bf16 avx512_vnni amx_tile amx_bf16 amx_int8
"""

ARM_CPUINFO = """processor\t: 0
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics bf16 i8mm sve
"""


def cpu(features=(), cores=8):
    return CPUInfo("test cpu", "x86_64", cores, cores, cores, list(features), "AVX2", cores)


def gpu(cc, name="Test GPU"):
    major, minor = cc
    return GPUInfo(0, name, 40.0, cc, 108, bf16=cc >= (8, 0), tf32=cc >= (8, 0), fp16_tensor_cores=cc >= (7, 0))


def test_parse_cpuinfo_x86():
    model, features, physical = runtime.parse_cpuinfo(X86_CPUINFO)
    assert model == "AMD EPYC 9654 96-Core Processor"
    assert {"avx512", "avx512_bf16", "avx512_vnni", "amx", "amx_bf16", "amx_int8"} <= set(features)
    assert physical == 2  # processors 1 and 2 share core id 1 (SMT siblings)


def test_parse_cpuinfo_arm():
    _, features, _ = runtime.parse_cpuinfo(ARM_CPUINFO)
    assert {"neon", "arm_bf16", "arm_i8mm", "sve"} <= set(features)
    info = cpu(features)
    assert info.native_bf16 and info.int8_dot and not info.native_fp16


def test_inventory_of_this_machine_is_consistent():
    inv = runtime.inventory()
    assert inv.cpu.usable_cores >= 1
    assert inv.cpu.logical_cores >= inv.cpu.usable_cores
    assert inv.accelerator in ("cpu", "cuda", "mps")
    assert inv.to_dict()["cpu"]["model"]


# --- precision policy: every branch, with hardware simulated


@pytest.mark.parametrize("purpose", ["train", "infer"])
def test_auto_on_cpu_with_native_bf16_is_bf16(purpose):
    p = resolve_precision("auto", "cpu", purpose, cpu=cpu(["avx512", "avx512_bf16"]))
    assert p.name == "bf16" and p.autocast_dtype == torch.bfloat16 and not p.grad_scaler
    assert "avx512_bf16" in p.reason


def test_auto_on_cpu_without_bf16_is_fp32():
    p = resolve_precision("auto", "cpu", "train", cpu=cpu(["avx2"]))
    assert p.name == "fp32" and p.autocast_dtype is None
    assert "emulated" in p.reason


def test_explicit_bf16_on_cpu_without_native_support_is_allowed_but_says_so():
    p = resolve_precision("bf16", "cpu", "train", cpu=cpu(["avx2"]))
    assert p.name == "bf16" and "emulated" in p.reason


def test_fp16_training_on_cpu_is_an_error():
    with pytest.raises(ParvisError, match="fp16 training is not supported on the CPU"):
        resolve_precision("fp16", "cpu", "train", cpu=cpu(["avx512_fp16"]))


def test_fp16_inference_on_cpu_needs_native_fp16():
    with pytest.raises(ParvisError, match="emulated"):
        resolve_precision("fp16", "cpu", "infer", cpu=cpu(["avx512_bf16"]))
    p = resolve_precision("fp16", "cpu", "infer", cpu=cpu(["amx_fp16"]))
    assert p.autocast_dtype == torch.float16 and not p.grad_scaler


def test_tf32_on_cpu_is_an_error():
    with pytest.raises(ParvisError, match="tf32"):
        resolve_precision("tf32", "cpu", "train", cpu=cpu())


def test_fp32_on_cpu():
    p = resolve_precision("fp32", "cpu", "train", cpu=cpu(["avx512_bf16"]))
    assert p.name == "fp32" and p.autocast_dtype is None and not p.tf32


def test_unknown_precision_names_the_value():
    with pytest.raises(ParvisError, match="'int4'"):
        resolve_precision("int4", "cpu", "train", cpu=cpu())


def test_auto_on_ampere_is_bf16_with_tf32():
    p = resolve_precision("auto", "cuda:0", "train", gpu=gpu((8, 0), "A100"))
    assert p.name == "bf16" and p.autocast_dtype == torch.bfloat16 and p.tf32 and not p.grad_scaler


def test_auto_on_turing_is_fp16_with_scaler_for_training_only():
    train = resolve_precision("auto", "cuda:0", "train", gpu=gpu((7, 5), "T4"))
    infer = resolve_precision("auto", "cuda:0", "infer", gpu=gpu((7, 5), "T4"))
    assert train.name == infer.name == "fp16"
    assert train.grad_scaler and not infer.grad_scaler


def test_auto_on_pascal_is_fp32():
    p = resolve_precision("auto", "cuda:0", "train", gpu=gpu((6, 1), "P40"))
    assert p.name == "fp32" and not p.tf32


@pytest.mark.parametrize("requested", ["bf16", "tf32"])
def test_bf16_and_tf32_need_ampere(requested):
    with pytest.raises(ParvisError, match="compute capability 8.0"):
        resolve_precision(requested, "cuda:0", "train", gpu=gpu((7, 5), "T4"))


def test_tf32_on_ampere_keeps_fp32_storage():
    p = resolve_precision("tf32", "cuda:0", "train", gpu=gpu((8, 6)))
    assert p.name == "tf32" and p.tf32 and p.autocast_dtype is None


def test_fp32_on_ampere_turns_tf32_off():
    p = resolve_precision("fp32", "cuda:0", "train", gpu=gpu((9, 0), "H100"))
    assert not p.tf32 and p.autocast_dtype is None


def test_fp16_on_cuda_training_uses_grad_scaler():
    p = resolve_precision("fp16", "cuda:0", "train", gpu=gpu((8, 0)))
    assert p.grad_scaler and p.autocast_dtype == torch.float16


def test_cuda_device_that_is_not_visible():
    if runtime.has_cuda():
        pytest.skip("a GPU is visible")
    with pytest.raises(ParvisError, match="not visible"):
        resolve_precision("auto", "cuda:0", "train")


def test_mps_policy():
    assert resolve_precision("auto", "mps", "infer").name == "fp16"
    assert resolve_precision("auto", "mps", "train").name == "fp32"
    with pytest.raises(ParvisError):
        resolve_precision("fp16", "mps", "train")
    with pytest.raises(ParvisError):
        resolve_precision("tf32", "mps", "infer")


def test_precision_to_dict_is_json_ready():
    import json

    d = resolve_precision("auto", "cpu", "train", cpu=cpu(["avx512_bf16"])).to_dict()
    assert json.loads(json.dumps(d))["autocast_dtype"] == "bfloat16"


def test_autocast_context_runs_matmul_in_bf16_on_cpu():
    p = resolve_precision("bf16", "cpu", "train", cpu=cpu(["avx512_bf16"]))
    a = torch.randn(8, 8)
    with runtime.autocast(p):
        assert torch.mm(a, a).dtype == torch.bfloat16
    with runtime.autocast(resolve_precision("fp32", "cpu", "train", cpu=cpu())):
        assert torch.mm(a, a).dtype == torch.float32
    assert runtime.grad_scaler(p) is None


# --- hardware details parsed from nvidia-smi (simulated)

NVIDIA_SMI_L = """GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-5d5ba0d6-d33d-2b2c-524d-9e3d8d2b8a77)
  MIG 3g.20gb     Device  0: (UUID: MIG-c6d4f1ef-42e4-5de3-91c7-45d71c87eb3f)
  MIG 1g.5gb      Device  1: (UUID: MIG-cba663e8-9bed-5b25-b243-5985ef7c9beb)
GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-1d5ba0d6-d33d-2b2c-524d-9e3d8d2b8a77)
"""


def test_parse_mig_instances():
    migs = runtime.parse_nvidia_smi_list(NVIDIA_SMI_L)
    assert [m.profile for m in migs[0]] == ["3g.20gb", "1g.5gb"]
    assert migs[0][1].uuid == "MIG-cba663e8-9bed-5b25-b243-5985ef7c9beb"
    assert migs[0][0].name == "MIG 3g.20gb Device 0"
    assert migs[1] == []


def test_parse_mig_modes():
    assert runtime.parse_mig_modes("0, Enabled\n1, Disabled\n2, [N/A]\n") == {0: True, 1: False, 2: None}


def test_gpu_info_from_properties():
    class Props:
        name, total_memory, major, minor, multi_processor_count = "H100", 80 * 2**30, 9, 0, 132

    info = runtime.gpu_info_from_properties(0, Props(), mig_mode=False)
    assert info.bf16 and info.tf32 and info.fp16_tensor_cores and info.memory_gb == 80.0


# --- devices, seeding, workers, distributed


def test_resolve_device_errors_name_the_value():
    with pytest.raises(ParvisError, match="'gpu0'"):
        runtime.resolve_device("gpu0")
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    if not runtime.has_cuda():
        with pytest.raises(ParvisError, match="no CUDA GPU"):
            runtime.resolve_device("cuda")


def test_seed_everything_is_reproducible():
    runtime.seed_everything(3)
    a = torch.randn(4)
    runtime.seed_everything(3)
    assert torch.equal(a, torch.randn(4))


def test_recommended_workers_and_pinning(monkeypatch):
    assert 1 <= runtime.recommended_workers(torch.device("cpu")) <= max(1, runtime.inventory().cpu.usable_cores)
    for cores, local, cpu_workers, gpu_workers in (  # usable cores, local processes, expected CPU, GPU
        (1, 1, 1, 1),
        (2, 1, 1, 2),
        (4, 2, 1, 2),
        (4, 1, 3, 4),
        (32, 1, 8, 16),
    ):
        inv = runtime.inventory()
        fake = dataclasses.replace(inv, cpu=dataclasses.replace(inv.cpu, usable_cores=cores))
        monkeypatch.setattr(runtime, "inventory", lambda fake=fake: fake)
        assert runtime.recommended_workers(torch.device("cpu"), local) == cpu_workers, (cores, local)
        assert runtime.recommended_workers(torch.device("cuda", 0), local) == gpu_workers, (cores, local)
    assert runtime.pin_memory(torch.device("cuda")) and not runtime.pin_memory(torch.device("cpu"))
    assert runtime.distributed_backend(torch.device("cuda", 0)) == "nccl"
    assert runtime.distributed_backend(torch.device("cpu")) == "gloo"


def test_init_distributed_single_process(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = runtime.init_distributed("cpu")
    assert not info.enabled and info.is_main and info.backend is None


def test_init_distributed_without_rendezvous_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ParvisError, match="MASTER_ADDR"):
        runtime.init_distributed("cpu")


def test_inference_runtimes_report_every_backend():
    rts = runtime.inference_runtimes()
    assert set(rts) == {"onnxruntime", "openvino", "tensorrt"}
    for entry in rts.values():
        assert entry["available"] or entry["error"]


@pytest.mark.cuda
def test_cuda_inventory_and_precision_on_a_real_gpu():
    inv = runtime.inventory()
    g = inv.gpus[0]
    assert g.memory_gb > 0 and g.compute_capability >= (3, 0)
    p = resolve_precision("auto", "cuda:0", "train")
    x = torch.randn(64, 64, device="cuda")
    with runtime.autocast(p):
        y = x @ x
    assert y.dtype == (p.autocast_dtype or torch.float32)
