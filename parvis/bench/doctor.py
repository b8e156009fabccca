"""`parvis doctor`: what this machine has, how fast it measurably is, and what to do about it."""

from __future__ import annotations

import time
from dataclasses import asdict

import torch

from parvis import runtime
from parvis.bench import micro

JPEG_SIDE = 512  # decode timing image: a typical camera-frame-sized crop, not a thumbnail


def _matmuls(device: torch.device, names: list[str], seconds: float) -> dict[str, float]:
    out = {}
    for name in names:
        dtype = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
        if device.type == "cuda":
            # fp32 is measured with TF32 off and tf32 with it on, so the two figures are honest.
            torch.backends.cuda.matmul.allow_tf32 = name == "tf32"
        out[f"{name}_gflops"] = round(micro.matmul_gflops(device, dtype, seconds=seconds), 1)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    return out


def run_doctor(quick: bool = False) -> dict:
    """Inventory + micro-benchmarks + advice, as one JSON-serializable dict (about 10-15 s; quick: ~3 s)."""
    t0 = time.perf_counter()
    inv = runtime.inventory()
    s = 0.25 if quick else 1.5
    report: dict = {
        **runtime.result_header(),
        "accelerator": inv.accelerator,
        "default_device": str(runtime.default_device()),
    }

    cpu = torch.device("cpu")
    cpu_precisions = ["fp32", "bf16"] + (["fp16"] if inv.cpu.native_fp16 else [])
    cpu_entry = asdict(inv.cpu) | {
        "native_bf16": inv.cpu.native_bf16,
        "native_fp16": inv.cpu.native_fp16,
        "int8_dot": inv.cpu.int8_dot,
        "matmul": _matmuls(cpu, cpu_precisions, s),
        "memory_bandwidth_gbs": round(micro.memory_bandwidth_gbs(cpu, seconds=0.7 * s), 1),
    }
    jpeg = micro.sample_jpeg(JPEG_SIDE)
    decoder = micro.decode_mod.default_decoder()
    cpu_entry["jpeg_decode"] = {
        "decoder": decoder,
        "image": f"{JPEG_SIDE}x{JPEG_SIDE}",
        "img_s_per_core": round(micro.jpeg_decode_rate(jpeg, decoder, seconds=0.7 * s), 1),
    }
    report["cpu"] = cpu_entry

    for gpu in inv.gpus:
        dev = torch.device("cuda", gpu.index)
        names = ["fp32"] + (["tf32"] if gpu.tf32 else []) + (["bf16"] if gpu.bf16 else []) + ["fp16"]
        entry = asdict(gpu) | {
            "matmul": _matmuls(dev, names, s),
            "memory_bandwidth_gbs": round(micro.memory_bandwidth_gbs(dev, mbytes=1024, seconds=0.5 * s), 1),
            "h2d": {
                "pageable_gbs": round(micro.host_to_device_gbs(dev, pinned=False, seconds=0.5 * s), 2),
                "pinned_gbs": round(micro.host_to_device_gbs(dev, pinned=True, seconds=0.5 * s), 2),
            },
        }
        report[str(dev)] = entry
    if inv.mps:
        dev = torch.device("mps")
        report["mps"] = {"matmul": _matmuls(dev, ["fp32", "fp16"], s)}

    device = runtime.default_device()
    report["precision"] = {
        "train": runtime.resolve_precision("auto", device, "train").to_dict(),
        "infer": runtime.resolve_precision("auto", device, "infer").to_dict(),
    }
    report["loader"] = {
        "recommended_workers": runtime.recommended_workers(device),
        "pin_memory": runtime.pin_memory(device),
    }
    report["host_allocator"] = runtime.configure_host_allocator()
    report["runtimes"] = runtime.inference_runtimes()
    report["advice"] = advice(report)
    report["elapsed_s"] = round(time.perf_counter() - t0, 1)
    return report


def advice(report: dict) -> list[str]:
    """Concrete recommendations derived from the measured figures in `report`."""
    tips: list[str] = []
    device = report["default_device"]
    dev_key = "cpu" if device == "cpu" else device
    mm = report.get(dev_key, report["cpu"]).get("matmul", {})
    train = report["precision"]["train"]
    fp32 = mm.get("fp32_gflops") or 0.0
    best = mm.get(f"{train['name']}_gflops") or fp32
    if train["name"] != "fp32" and fp32 > 0:
        tips.append(
            f"Train in {train['name']} on {device} (--precision auto does this): matmuls measured "
            f"{best:.0f} vs {fp32:.0f} GFLOP/s fp32 = {best / fp32:.1f}x. {train['reason']}."
        )
    else:
        tips.append(f"Train in fp32 on {device}: {train['reason']}.")
    if device == "cpu" and report["cpu"]["matmul"].get("bf16_gflops", 0) < fp32:
        tips.append("bf16 measured slower than fp32 on this CPU: keep --precision fp32 (auto does).")

    workers = report["loader"]["recommended_workers"]
    rate = report["cpu"]["jpeg_decode"]["img_s_per_core"]
    cores = report["cpu"]["usable_cores"]
    where = "leaving one core for the model's threads" if device == "cpu" else "the accelerator does the math"
    tips.append(
        f"Use {workers} loader worker(s) ({cores} usable cores, {where}): at {rate:.0f} JPEG decodes/s per core "
        f"({report['cpu']['jpeg_decode']['image']}), {workers} worker(s) can supply about {workers * rate:.0f} img/s "
        "before augmentation; if `parvis bench data` shows the model waiting, lower the resolution of stored images."
    )
    if device == "cpu":
        tips.append("Use channels-last on the CPU: oneDNN convolutions run fastest in NHWC (parvis's default).")
    for key, entry in report.items():
        if not key.startswith("cuda:"):
            continue
        h2d = entry["h2d"]
        if h2d["pinned_gbs"] > 1.2 * h2d["pageable_gbs"]:
            tips.append(
                f"{key}: pinned host memory copies at {h2d['pinned_gbs']:.1f} vs {h2d['pageable_gbs']:.1f} GB/s "
                "pageable; parvis's loader pins batches on CUDA and overlaps the copy on a side stream."
            )
        if entry.get("mig_mode"):
            n = len(entry.get("mig_instances", []))
            tips.append(
                f"{key} is in MIG mode with {n} instance(s): each job sees only its slice; "
                "`parvis bench partition` measures how much throughput each slice keeps."
            )
    rts = report["runtimes"]
    missing = [name for name in ("onnxruntime", "openvino") if not rts.get(name, {}).get("available")]
    if missing:
        tips.append(
            f"Inference runtimes not installed: {', '.join(missing)}. Install them (pip install "
            f"{' '.join(missing)}) so export/optimize can try faster CPU backends and INT8."
        )
    if report["cpu"]["int8_dot"] and device == "cpu":
        tips.append("This CPU has INT8 dot-product instructions (VNNI/AMX): INT8 inference is worth trying.")
    return tips
