"""OpenVINO and torch.compile runtimes: the conformance contract every runtime meets, per precision, and
the clear errors for what cannot run."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from parvis import runtime as rt
from parvis.engine.checkpoint import save_checkpoint
from parvis.errors import ParvisError
from parvis.export import export_model
from parvis.models import MODELS, build_model
from parvis.runtimes import RUNTIMES, open_runtime

SIZE = 32
N = 3  # a batch size other than 1 and other than export's traced 2
NATIVE_BF16 = rt.inventory().cpu.native_bf16

# Allowed max |runtime - eager fp32|. These random-weight models give small logits (max |logit| about
# 0.1), so the float budget is absolute and the reduced-precision budgets are relative to max |logit|:
#   fp32: 1e-4 x max(1, max |logit|), the export parity budget (another library's kernels reassociate
#         sums; measured < 1e-7).
#   bf16: 3e-2 x max |logit|; bf16 keeps 8 mantissa bits (0.4% per rounding), compounded over ~20
#         layers (measured 0.8% for OpenVINO on resnet18, 0.4% for torch.compile on unet_small).
#   int8: 1e-1 x max |logit| on real images the ranges were calibrated for (uint8 activations, int8
#         per-channel weights; measured 2%; on Gaussian noise outside those ranges it is 11%).
TOLERANCE = {"bf16": 3e-2, "int8": 1e-1}
# OpenVINO vs ONNX Runtime on the same QDQ file: the same scales and zero points, and the output itself
# is requantized, so both land on the same uint8 levels (measured identical); allow two output steps.
INT8_VS_ORT = 1e-2


def _limit(precision: str, expected: np.ndarray) -> float:
    peak = float(np.abs(expected).max())
    return 1e-4 * max(1.0, peak) if precision == "fp32" else TOLERANCE[precision] * peak


def tiny(name: str):
    task = MODELS.info(name)["task"]
    k = 5 if task == "classification" else 6
    torch.manual_seed(0)
    return build_model(name, k, [f"c{i}" for i in range(k)], input_size=SIZE).eval()


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """name -> (eager model, {"checkpoint": path, "onnx": path}): a classifier exported to ONNX, and a
    segmenter as a checkpoint only (exporting costs seconds; the bench test runs OpenVINO on a segmenter)."""
    out = tmp_path_factory.mktemp("runtimes")
    made = {}
    for name in ("resnet18", "unet_small"):
        model = tiny(name)
        paths = {"checkpoint": out / f"{name}.pt"}
        save_checkpoint(paths["checkpoint"], {"model": model.state_dict(), "meta": model.meta.to_dict()})
        if name == "resnet18":
            paths["onnx"] = out / f"{name}.onnx"
            export_model(model, paths["onnx"], "onnx")
        made[name] = (model, paths)
    return made


@pytest.fixture(scope="module")
def int8_resnet18(sources, shapes_dir):
    """The tiny resnet18 quantized to INT8 QDQ on 8 images, and 4 of those images as float input."""
    from parvis.quantize import calibration_batches, quantize_onnx

    model, paths = sources["resnet18"]
    out = paths["onnx"].with_name("resnet18-int8.onnx")
    quantize_onnx(paths["onnx"], out, shapes_dir, n=8)
    images = np.concatenate(calibration_batches(model.meta, shapes_dir, 4))
    return out, torch.from_numpy(images)


def _check(runtime, precision: str, model, x: torch.Tensor, batch_1: bool = True) -> np.ndarray:
    """Run `x` (and its first image alone); shape, dtype and closeness to eager fp32 within TOLERANCE."""
    meta = model.meta
    for batch in (x[:1], x) if batch_1 else (x,):
        with torch.no_grad():
            expected = model(batch).numpy()
        got = runtime.run(batch)
        shape = (len(batch), meta.num_classes) + (() if meta.task == "classification" else (SIZE, SIZE))
        assert got.shape == shape and got.dtype == np.float32
        limit = _limit(precision, expected)
        err = float(np.abs(got - expected).max())
        assert err <= limit, f"{runtime.name} {precision}: max |diff| {err:.3g} > {limit:.3g}"
    return got


def _conforms(runtime: str, precision: str, name: str, source, model, batch_1: bool = True) -> None:
    loaded = open_runtime(source, runtime, precision=precision, threads=1)
    info = loaded.info()
    assert info["runtime"] == runtime and info["device"] == "cpu" and info["threads"] == 1
    assert info["precision"] == precision and loaded.meta.to_dict() == model.meta.to_dict()
    x = torch.randn(N, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    _check(loaded, precision, model, x, batch_1)


@pytest.mark.parametrize(
    "precision",
    [
        "fp32",
        pytest.param("bf16", marks=pytest.mark.skipif(not NATIVE_BF16, reason="OpenVINO bf16 needs native BF16")),
    ],
)
def test_openvino_conformance(precision, sources):
    model, paths = sources["resnet18"]
    _conforms("openvino", precision, "resnet18", paths["onnx"], model)


@pytest.mark.slow
def test_torch_compile_conformance(sources):
    """A segmenter (the smallest registered model to compile). Each graph takes 10-25 s to compile on 2
    cores, so fp32 runs batch 1 and N (two graphs) and bf16 batch N only (one graph): about 45 s."""
    model, paths = sources["unet_small"]
    _conforms("torch-compile", "fp32", "unet_small", paths["checkpoint"], model)
    _conforms("torch-compile", "bf16", "unet_small", paths["checkpoint"], model, batch_1=False)


def test_openvino_int8_runs_the_qdq_file_as_int8(sources, int8_resnet18):
    path, images = int8_resnet18
    model, _ = sources["resnet18"]
    ov = open_runtime(path, "openvino", precision="int8", threads=1)
    info = ov.info()
    assert info["precision"] == "int8" and info["threads"] == 1
    quantized, total = map(int, info["int8_layers"].split("/"))
    assert total > 0 and quantized == total  # every conv and matmul runs u8/i8, not float
    got = _check(ov, "int8", model, images)
    ort = open_runtime(path, "onnxruntime", precision="int8", threads=1).run(images)
    assert np.abs(got - ort).max() <= INT8_VS_ORT * float(np.abs(ort).max())
    # the precision follows the file when not given
    assert open_runtime(path, "openvino").info()["precision"] == "int8"


def test_openvino_streams_split_a_batch_and_give_the_same_logits(sources):
    _, paths = sources["resnet18"]
    x = torch.randn(5, 3, SIZE, SIZE)
    one = open_runtime(paths["onnx"], "openvino", threads=1).run(x)
    two = open_runtime(paths["onnx"], "openvino", threads=2, streams=2)
    assert two.info()["streams"] == 2 and two.info()["hint"] == "throughput"
    np.testing.assert_allclose(two.run(x), one, atol=1e-5)


def test_openvino_runtime_can_be_called_from_several_threads(sources):
    """Callers from several threads share the runtime's requests in turn (a request is single-use at a
    time: without the runtime's lock the second caller fails with "Infer Request is busy")."""
    from concurrent.futures import ThreadPoolExecutor

    _, paths = sources["resnet18"]
    rt_ = open_runtime(paths["onnx"], "openvino", threads=1)
    xs = [torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(i)) for i in range(16)]
    expected = [rt_.run(x) for x in xs]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(rt_.run, xs))
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_openvino_errors(sources, int8_resnet18, monkeypatch):
    _, paths = sources["resnet18"]
    with pytest.raises(ParvisError, match=r"resnet18\.pt: OpenVINO runs \.onnx files"):
        open_runtime(paths["checkpoint"], "openvino")
    with pytest.raises(ParvisError, match="has no QuantizeLinear nodes.*`parvis quantize` first"):
        open_runtime(paths["onnx"], "openvino", precision="int8")
    with pytest.raises(ParvisError, match=r"is an INT8 \(QDQ\) model.*open it with precision int8"):
        open_runtime(int8_resnet18[0], "openvino", precision="fp32")
    with pytest.raises(ParvisError, match="OpenVINO runs fp32, bf16 or int8"):
        open_runtime(paths["onnx"], "openvino", precision="fp16")
    with pytest.raises(ParvisError, match="OpenVINO's GPU plugin sees no"):
        open_runtime(paths["onnx"], "openvino", device="cuda")
    inv = rt.inventory()
    no_bf16 = dataclasses.replace(inv, cpu=dataclasses.replace(inv.cpu, features=["avx2", "fma"]))
    monkeypatch.setattr(rt, "inventory", lambda: no_bf16)
    with pytest.raises(ParvisError, match="precision bf16: this CPU has no native BF16"):
        open_runtime(paths["onnx"], "openvino", precision="bf16")


def test_open_runtime_errors(sources, tmp_path):
    _, paths = sources["resnet18"]
    assert {"openvino", "torch-compile"} <= set(RUNTIMES)
    with pytest.raises(ParvisError, match="runtime 'tflite' is unknown; choose one of .*openvino, torch-compile"):
        open_runtime(paths["onnx"], "tflite")
    with pytest.raises(ParvisError, match="torch-compile compiles a parvis checkpoint or a registered model name"):
        open_runtime(paths["onnx"], "torch-compile")
    with pytest.raises(ParvisError, match="missing.pt: no such file; check the path"):
        open_runtime(tmp_path / "missing.pt", "torch-compile")
    with pytest.raises(ParvisError, match="no such artifact"):
        open_runtime(tmp_path / "missing.onnx", "openvino")


def test_onnxruntime_refuses_a_cuda_run_that_fell_back_to_the_cpu(sources, monkeypatch):
    """An onnxruntime that lists a CUDA provider but cannot start it (no GPU, missing CUDA libraries) runs the
    session on the CPU: asked for cuda, parvis says so instead of timing a CPU run as a GPU one."""
    import onnxruntime as ort  # noqa: PLC0415 - the optional backend, as the runtime imports it

    _, paths = sources["resnet18"]
    real = ort.InferenceSession
    asked = []

    def session(path, options, providers):
        asked.append(list(providers))
        return real(path, options, providers=["CPUExecutionProvider"])  # what a failed CUDA provider leaves

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", session)
    with pytest.raises(ParvisError, match=r"resnet18\.onnx: ONNX Runtime could not start CUDAExecutionProvider .* "
                       r"fell back to the CPU; .* or use --device cpu"):  # fmt: skip
        open_runtime(paths["onnx"], "onnxruntime", device="cuda")
    assert asked == [["CUDAExecutionProvider", "CPUExecutionProvider"]]
    runtime = open_runtime(paths["onnx"], "onnxruntime", device="cpu")  # the CPU, asked for, still runs
    assert runtime.info()["device"] == "cpu"


def test_bench_runtime_has_openvino_rows_next_to_onnxruntime(sources, shapes_dir):
    """On the segmenter, so OpenVINO fp32, bf16 and int8 also run a model with upsampling."""
    from parvis.bench.runtime import bench_runtime

    _, paths = sources["unet_small"]
    result = bench_runtime(
        str(paths["checkpoint"]), batch=2, rounds=1, iters=1, latency_iters=2, threads=1, data=shapes_dir, calib=8
    )
    rows = {(r["runtime"], r["precision"]): r for r in result["rows"]}
    expected = {("openvino", "fp32"), ("openvino", "int8"), ("onnxruntime", "int8")}
    assert expected | ({("openvino", "bf16")} if NATIVE_BF16 else set()) <= set(rows)
    assert rows[("openvino", "int8")]["info"]["artifact"] == rows[("onnxruntime", "int8")]["info"]["artifact"]
    assert rows[("openvino", "fp32")]["max_abs_err"] < 1e-4
    assert all(r["img_s"] > 0 and r["info"]["threads"] == 1 for r in rows.values())
