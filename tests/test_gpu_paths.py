"""Every GPU path parvis has, each checked by what it computes: the doctor's measurements, training steps per
precision (fp16 through a GradScaler), the side-stream prefetcher, one-process torchrun, ONNX Runtime's CUDA and
TensorRT providers, serve, video, bench partition (MPS, MIG) and Ray actors sharing a GPU.

benchmarks/gpu_check.sh runs these (`pytest -m cuda`) beside its own short run of each path; without a CUDA GPU
the conftest skips them all. Models are tiny with random weights (convnet_small at 32 px) and data is the
session's 60-scene shapes set, so the file takes a couple of minutes on one GPU. Reduced-precision and GPU
results are compared with an fp32 CPU reference within the budgets stated beside each check.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch

from parvis import runtime
from parvis.api import load
from parvis.bench.partition import bench_partition, mps_daemon_running
from parvis.bench.serve import ServerProcess
from parvis.cli.main import main
from parvis.config import TrainConfig
from parvis.data.check import open_dataset
from parvis.data.loader import DevicePrefetcher, build_loader
from parvis.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transform
from parvis.data.video_synth import synthesize_video
from parvis.engine.checkpoint import save_checkpoint
from parvis.engine.trainer import build_trainer
from parvis.errors import ParvisError
from parvis.export import export_model
from parvis.models import build_model
from parvis.runtimes import onnxruntime as parvis_onnxruntime
from parvis.runtimes import open_predictor
from parvis.serve.preprocess import Preprocessor

pytestmark = pytest.mark.cuda

CLASSES = ["circle", "ring", "square", "star", "triangle"]
SIZE = 32
TRAIN_STEPS = 4
# Allowed max |GPU - CPU fp32| of a class probability (serve, video, Ray). The GPU runs fp32 storage, but
# cuDNN convolutions use TF32 unless told otherwise (torch's default), and TF32 keeps 10 mantissa bits
# (~5e-4 per rounding); on random-weight convnet_small's near-uniform probabilities that moves each by
# well under 1e-3.
PROB_TOL = 5e-3
# Allowed max |logit - CPU fp32 logit| of one convnet_small forward (10 convolutions), relative to max |CPU fp32
# logit| but at least to 0.1 (these random-weight models give logits of about 0.1). fp16 and TF32 keep 10
# mantissa bits, bf16 8 (0.4% per rounding), each compounded over the layers. Measured with CPU autocast after
# 4 training steps: bf16 0.34%, fp16 0.05% of max |logit|; the budgets leave about 10x.
LOGIT_TOL = {"tf32": 1e-2, "fp16": 1e-2, "bf16": 3e-2}


def _logit_limit(precision: str, want: torch.Tensor) -> float:
    return LOGIT_TOL[precision] * max(0.1, want.abs().max().item())


def _positive(value) -> bool:
    return isinstance(value, int | float) and value > 0 and math.isfinite(value)


def _gpu() -> runtime.GPUInfo:
    return runtime.inventory().gpus[0]


def _top5(result: dict) -> dict[str, float]:
    """class name -> probability from a classification result's top5 (5 classes: every class)."""
    return {t["class_name"]: t["score"] for t in result["top5"]}


def _max_prob_diff(got: dict, want: dict) -> float:
    a, b = _top5(got), _top5(want)
    assert a.keys() == b.keys()
    return max(abs(a[k] - b[k]) for k in a)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    """convnet_small at 32 px with fixed random weights, saved as best.pt (so serve names it `best`)."""
    torch.manual_seed(0)
    net = build_model("convnet_small", len(CLASSES), CLASSES, input_size=SIZE)
    path = tmp_path_factory.mktemp("gpu-classifier") / "best.pt"
    save_checkpoint(path, {"model": net.state_dict(), "meta": net.meta.to_dict()})
    return path


@pytest.fixture
def restore_tf32():
    """Training applies its precision's TF32 switches process-wide: put them back for the tests after it."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# --------------------------------------------------------------------------- doctor


def test_doctor_measures_host_to_device_copies_and_matmuls_per_precision_on_the_gpu():
    proc = subprocess.run(
        [sys.executable, "-m", "parvis", "doctor", "--json", "--quick"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    gpu = _gpu()
    assert report["accelerator"] == "cuda"
    entry = report[f"cuda:{gpu.index}"]
    h2d = entry["h2d"]
    assert _positive(h2d["pinned_gbs"]) and _positive(h2d["pageable_gbs"]), h2d
    names = {"fp32", "fp16"} | ({"tf32"} if gpu.tf32 else set()) | ({"bf16"} if gpu.bf16 else set())
    assert set(entry["matmul"]) == {f"{name}_gflops" for name in names}
    assert all(_positive(v) for v in entry["matmul"].values()), entry["matmul"]
    assert _positive(entry["memory_bandwidth_gbs"])
    if gpu.fp16_tensor_cores:
        # fp32 is measured with TF32 off: tensor cores make fp16 about 8-16x faster (V100, T4, A100, H100);
        # 1.5x leaves room for clocks and a busy GPU while still proving the fp16 figure used them.
        assert entry["matmul"]["fp16_gflops"] > 1.5 * entry["matmul"]["fp32_gflops"], entry["matmul"]


# --------------------------------------------------------------------------- training


def _counting(fn, calls: dict, key: str):
    def counted(*args, **kwargs):
        calls[key] += 1
        return fn(*args, **kwargs)

    return counted


@pytest.mark.parametrize("precision", ["tf32", "bf16", "fp16"])
def test_training_steps_on_cuda_per_precision(precision, shapes_dir, tmp_path, monkeypatch, restore_tf32):
    gpu = _gpu()
    if precision in ("tf32", "bf16") and not gpu.bf16:
        cc = "{}.{}".format(*gpu.compute_capability)
        pytest.skip(f"--precision {precision} needs compute capability 8.0+; {gpu.name} is {cc}")
    cfg = TrainConfig(
        task="classification", model="convnet_small", data=str(shapes_dir), epochs=1, size=SIZE, batch=8,
        workers=0, device="cuda", precision=precision, recipe="off", max_steps=TRAIN_STEPS, warmup_epochs=0.0,
        out=str(tmp_path / "run"),
    )  # fmt: skip
    trainer = build_trainer(cfg, quiet=True)
    model = trainer.model  # one process, no compile: the VisionModel itself
    calls = {"scale": 0, "step": 0}
    if trainer.scaler is not None:
        for key in calls:
            monkeypatch.setattr(trainer.scaler, key, _counting(getattr(trainer.scaler, key), calls, key))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    try:
        record = trainer.fit()
    finally:
        trainer.close()

    prec = trainer.precision
    assert prec.name == precision and trainer.device.type == "cuda" and trainer.step == TRAIN_STEPS
    # Autocast computes in low precision; the weights the optimizer updates stay fp32, on the GPU.
    assert all(p.is_cuda and p.dtype == torch.float32 for p in model.parameters())
    assert math.isfinite(record["train_loss"]), record
    changed = [name for name, p in model.named_parameters() if not torch.equal(before[name], p.detach())]
    assert changed, "no parameter changed: every optimizer step was skipped"
    if precision == "fp16":
        # Every loss went through the scaler and every step through scaler.step (which skips a step whose
        # gradients overflowed and halves the scale: from 65536 it stays well above 1 in 4 steps).
        assert isinstance(trainer.scaler, torch.amp.GradScaler) and trainer.scaler.is_enabled()
        assert calls == {"scale": TRAIN_STEPS, "step": TRAIN_STEPS}
        assert trainer.scaler.get_scale() >= 1.0
    else:
        assert trainer.scaler is None and calls == {"scale": 0, "step": 0}
    if precision == "tf32":
        assert prec.autocast_dtype is None
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32

    # One forward at the run's precision against the same weights in fp32 on the CPU.
    meta = model.meta
    prefetcher = DevicePrefetcher(
        trainer.val_loader, trainer.device, mean=meta.mean, std=meta.std, memory_format=trainer.memory_format
    )
    batch = next(iter(prefetcher))
    model.eval()
    with torch.no_grad(), runtime.autocast(prec):
        got = model(batch.images)
    assert got.is_cuda and got.dtype == (prec.autocast_dtype or torch.float32)
    with torch.no_grad():
        want = copy.deepcopy(model).cpu()(batch.images.cpu())
    err = (got.float().cpu() - want).abs().max().item()
    limit = _logit_limit(precision, want)
    assert err <= limit, f"{precision}: max |logit - fp32| {err:.3g} > {limit:.3g}"


# --------------------------------------------------------------------------- prefetcher


def test_prefetcher_side_stream_delivers_exact_batches_while_the_gpu_computes(shapes_dir, monkeypatch):
    device = torch.device("cuda", 0)
    ds = open_dataset(shapes_dir, "classification", "val", transform=build_transform("classification", False, SIZE))
    loader = build_loader(ds, 8, train=False, device=device, workers=1)
    assert loader.pin_memory
    # The reference: the same (deterministic, in-order) batches normalized on the CPU, (x / 255 - mean) / std.
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    expected = [((b.images.float() / 255 - mean) / std, b.targets.clone()) for b in loader]
    assert expected and all(x.dtype == torch.float32 for x, _ in expected)

    streams: list = []
    real_stream = torch.cuda.Stream

    def recording_stream(*args, **kwargs):
        streams.append(real_stream(*args, **kwargs))
        return streams[-1]

    monkeypatch.setattr(torch.cuda, "Stream", recording_stream)
    a = torch.randn(2048, 2048, device=device)
    pre = DevicePrefetcher(loader, device)
    seen = 0
    for i, batch in enumerate(pre):
        assert batch.images.is_cuda and batch.images.dtype == torch.float32 and batch.targets.is_cuda
        assert batch.images.is_contiguous(memory_format=torch.channels_last)
        images, targets = expected[i]
        torch.testing.assert_close(batch.images.cpu(), images, atol=1e-5, rtol=0)
        assert torch.equal(batch.targets.cpu(), targets)
        seen += len(batch.images)
        # Queue work on the compute stream without waiting for it: the next batch's copy and normalization
        # run on the side stream meanwhile, and must still arrive intact (the check above, next iteration).
        for _ in range(4):
            a = torch.tanh(a @ a)
    torch.cuda.synchronize(device)
    assert streams and streams[0] != torch.cuda.current_stream(device)  # the copies ran on a side stream
    assert len(expected) == pre.stats.batches == len(loader)
    assert seen == pre.stats.images == len(ds)
    assert _positive(pre.stats.wait_s) and pre.stats.total_s >= pre.stats.wait_s
    assert 0 < pre.stats.wait_fraction <= 1 and _positive(pre.stats.images_per_s)


# --------------------------------------------------------------------------- torchrun


def test_one_process_torchrun_trains_on_cuda_and_writes_a_checkpoint(shapes_dir, tmp_path):
    """`torchrun --nproc-per-node 1 -m parvis train --device cuda`, as gpu_check.sh runs it. parvis records no
    collective backend (one process joins no process group), so the check is the run itself: exit 0, a
    checkpoint from CUDA steps with finite weights and loss."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", "-m", "parvis",
           "train", "--task", "classification", "--model", "convnet_small", "--data", str(shapes_dir),
           "--epochs", "1", "--size", "64", "--batch", "8", "--workers", "1", "--device", "cuda", "--out", str(out),
           "--quiet"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "best.pt").is_file()
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and state["step"] >= 1
    assert state["config"]["device"] == "cuda"
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert math.isfinite(state["history"][-1]["train_loss"])


# --------------------------------------------------------------------------- ONNX Runtime GPU providers


@pytest.mark.parametrize("provider", ["CUDAExecutionProvider", "TensorrtExecutionProvider"])
def test_onnxruntime_gpu_provider_runs_the_export_like_torch(provider, tmp_path, monkeypatch):
    ort = pytest.importorskip("onnxruntime")
    if provider not in ort.get_available_providers():
        pytest.skip(f"onnxruntime {ort.__version__} has no {provider} (pip install onnxruntime-gpu)")
    torch.manual_seed(0)
    model = build_model("convnet_small", len(CLASSES), CLASSES, input_size=SIZE).eval()
    path = tmp_path / "convnet.onnx"
    export_model(model, path, "onnx")
    # parvis puts every GPU provider it finds first; keep only the one under test (CPU stays the fallback).
    monkeypatch.setattr(parvis_onnxruntime, "GPU_PROVIDERS", (provider,))
    predictor, info = open_predictor(path, "cuda")
    if provider == "TensorrtExecutionProvider" and info["providers"][0] != provider:
        # ONNX Runtime lists TensorRT whenever it was built with it, and drops it from the session when
        # libnvinfer cannot be loaded.
        pytest.skip(f"{provider} is listed but could not be created (TensorRT libraries not loadable): {info}")
    # The session runs on the provider, not on the CPU fallback ONNX Runtime uses when one cannot be created
    # (e.g. an onnxruntime-gpu built for another CUDA major version than the one torch loaded).
    assert info["runtime"] == "onnxruntime" and info["device"] == "cuda" and info["providers"][0] == provider, info
    x = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(x)
        got = predictor(x.to("cuda"))
    assert got.is_cuda and got.shape == want.shape
    # An fp32 graph, but both providers run convolutions in TF32 by default on Ampere+: TF32's budget.
    err = (got.cpu() - want).abs().max().item()
    limit = _logit_limit("tf32", want)
    assert err <= limit, f"{provider}: max |diff| {err:.3g} > {limit:.3g}"


# --------------------------------------------------------------------------- serve


def test_serve_answers_an_image_on_the_gpu_as_the_cpu_does(classifier, shapes_dir, tmp_path):
    body = sorted((shapes_dir / "images" / "val").glob("*.jpg"))[0].read_bytes()
    log = tmp_path / "serve.log"
    try:
        server = ServerProcess(
            [str(classifier), "--device", "cuda", "--precision", "fp32"], log_path=log, ready_timeout_s=240
        )
    except ParvisError as exc:
        pytest.fail(f"{exc}\n{log.read_text(errors='replace')[-3000:]}")
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            described = client.get("/v1/models/best").json()
            r = client.post("/v1/models/best/predict", content=body, headers={"content-type": "image/jpeg"})
    finally:
        server.stop()
    assert described["device"].startswith("cuda") and described["precision"] == "fp32", described
    assert r.status_code == 200, r.text
    model, _ = open_predictor(str(classifier), torch.device("cpu"), None, "fp32")
    x, _ = Preprocessor(model.meta)(body)
    with torch.no_grad():
        want = model.postprocess(model(x[None]).float())[0].to_dict()
    assert _max_prob_diff(r.json(), want) <= PROB_TOL


# --------------------------------------------------------------------------- video


def _events(out: Path, streams: int) -> dict[tuple[int, int], dict]:
    events = {}
    for i in range(streams):
        for line in (out / f"stream_{i}.jsonl").read_text().splitlines():
            event = json.loads(line)
            events[(event["stream"], event["frame"])] = event
    return events


def test_video_runs_the_model_on_the_gpu_with_the_cpu_results(classifier, tmp_path):
    synthesize_video(tmp_path / "video", n_clips=2, frames=12, width=96, height=64, workers=1)
    clips = sorted(str(p) for p in (tmp_path / "video" / "clips").glob("*.mp4"))
    argv = ["video", *clips, "--model", str(classifier), "--no-video", "--precision", "fp32", "--batch", "4"]
    devices: set[str] = set()

    def record(module, inputs, output):  # global hooks see the pipeline's inference thread too
        if isinstance(module, torch.nn.Conv2d):
            devices.add(output.device.type)

    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        assert main([*argv, "--device", "cuda", "--out", str(tmp_path / "gpu")]) == 0
    finally:
        handle.remove()
    assert devices == {"cuda"}
    assert main([*argv, "--device", "cpu", "--out", str(tmp_path / "cpu")]) == 0
    summary = json.loads((tmp_path / "gpu" / "summary.json").read_text())
    assert [s["frames"] for s in summary["streams"]] == [12, 12] and summary["precision"] == "fp32"
    assert _positive(summary["aggregate_fps"])
    gpu, cpu = _events(tmp_path / "gpu", 2), _events(tmp_path / "cpu", 2)
    assert len(gpu) == 24 and gpu.keys() == cpu.keys()  # every frame of both clips, once
    worst = max(_max_prob_diff(gpu[key], cpu[key]) for key in gpu)
    assert worst <= PROB_TOL, f"max |probability GPU - CPU| {worst:.3g}"


# --------------------------------------------------------------------------- bench partition


def _check_partition(result: dict, mode: str, shares: list[str]) -> None:
    assert result["mode"] == mode and result["jobs"] == 2 and result["device"].startswith("cuda")
    assert [row["share"] for row in result["rows"]] == shares
    assert _positive(result["solo"]["img_s"]) and _positive(result["alone_same_share"]["img_s"])
    for row in result["rows"]:
        assert _positive(row["img_s"]) and row["batches"] >= 1
        assert row["kept_vs_solo"] == pytest.approx(row["img_s"] / result["solo"]["img_s"])
    assert result["aggregate_img_s"] == pytest.approx(sum(row["img_s"] for row in result["rows"]))


def _bench_partition_cli(out: Path) -> dict:
    argv = ["bench", "partition", "resnet18", "--size", "64", "--device", "cuda", "--jobs", "2", "--seconds", "2",
            "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    return json.loads(out.read_text())


def test_bench_partition_two_mps_clients_on_one_gpu(tmp_path):
    gpu = _gpu()
    if gpu.mig_instances:
        pytest.skip(f"{gpu.name} is in MIG mode: bench partition uses its MIG instances, not MPS")
    if not mps_daemon_running():
        pytest.skip("no MPS control daemon runs here (start one with nvidia-cuda-mps-control -d)")
    result = _bench_partition_cli(tmp_path / "partition.json")
    _check_partition(result, "mps", ["50", "50"])  # CUDA_MPS_ACTIVE_THREAD_PERCENTAGE per job


def test_bench_partition_two_mig_instances(tmp_path):
    gpu = _gpu()
    if not gpu.mig_mode or len(gpu.mig_instances) < 2:
        pytest.skip(f"MIG is not enabled with 2+ instances on {gpu.name} (mig_mode {gpu.mig_mode})")
    result = _bench_partition_cli(tmp_path / "partition.json")
    _check_partition(result, "mig", [inst.uuid for inst in gpu.mig_instances[:2]])


def test_bench_partition_without_mps_or_mig_says_how_to_get_either():
    gpu = _gpu()
    if gpu.mig_instances or mps_daemon_running():
        pytest.skip("this GPU can be partitioned (MIG instances or an MPS daemon)")
    with pytest.raises(ParvisError, match="nvidia-cuda-mps-control -d"):
        bench_partition("resnet18", size=SIZE, jobs_k=2, seconds=1.0, device="cuda")


# --------------------------------------------------------------------------- Ray


def test_ray_engine_two_actors_share_the_gpu_and_write_each_image_once(classifier, shapes_dir, tmp_path):
    pytest.importorskip("ray")
    pq = pytest.importorskip("pyarrow.parquet")
    folder = tmp_path / "in"
    folder.mkdir()
    for path in sorted((shapes_dir / "images" / "train").glob("*.jpg"))[:12]:
        shutil.copy(path, folder / path.name)
    out = tmp_path / "ray"
    argv = ["predict", str(classifier), str(folder), "--engine", "ray", "--actors", "2", "--device", "cuda",
            "--precision", "fp32", "--batch", "4", "--shard-size", "3", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    # Ray's GPUs shared by the actors, at most one each: two actors on one GPU reserve half of it each.
    gpus = len(runtime.inventory().gpus)
    assert summary["actors"] == 2 and summary["gpu_per_actor"] == pytest.approx(min(1.0, gpus / 2)), summary
    assert (summary["images"], summary["rows"], summary["errors"]) == (12, 12, 0)
    assert summary["duplicates"] == summary["missing"] == 0
    rows = pq.read_table(out / "results").to_pylist()
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in folder.iterdir())  # every image, once
    reference = {r["file"]: r for r in load(str(classifier), device="cpu", precision="fp32").predict([str(folder)])}
    worst = max(_max_prob_diff(json.loads(r["result"]), reference[r["path"]]) for r in rows)
    assert worst <= PROB_TOL, f"max |probability GPU actors - CPU| {worst:.3g}"
