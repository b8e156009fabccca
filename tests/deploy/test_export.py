from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

import parvis.export as export_mod
from parvis.artifact import read_metadata
from parvis.cli.main import main
from parvis.errors import ParvisError
from parvis.export import export_model
from parvis.models import MODELS, build_model
from parvis.models.base import ClassificationModel, ModelMeta
from parvis.runtimes import open_runtime

SIZE = 32


def tiny(name: str):
    task = MODELS.info(name)["task"]
    k = 5 if task == "classification" else 6
    torch.manual_seed(0)
    return build_model(name, k, [f"c{i}" for i in range(k)], input_size=SIZE).eval()


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS.names())
def test_every_registered_model_exports_to_onnx_with_parity(name, tmp_path):
    """fp32 parity at a batch size other than the traced one; tolerance 1e-3 x max(1, max |logit|)."""
    model = tiny(name)
    out = tmp_path / f"{name}.onnx"
    report = export_model(model, out, "onnx")
    assert report["parity_max_abs_err"] <= 1e-4  # measured <= 1e-6 for every model
    assert read_metadata(out).to_dict() == model.meta.to_dict()
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert float(props["parvis.parity_max_abs_err"]) == report["parity_max_abs_err"]


def test_torch_export_round_trip_keeps_metadata_and_dynamic_batch(tmp_path):
    model = tiny("unet_small")
    out = tmp_path / "m.pt2"
    report = export_model(model, out, "torch-export")
    assert report["parity_max_abs_err"] < 1e-5 and read_metadata(out).name == "unet_small"
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary archive is gone
    x = torch.randn(5, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(open_runtime(out).run(x), expected, atol=1e-5)


@pytest.mark.parametrize("fmt", ["onnx", "torch-export"])
def test_parity_failure_writes_nothing(fmt, tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "PARITY_RTOL", -1.0)
    out = tmp_path / ("m.onnx" if fmt == "onnx" else "m.pt2")
    with pytest.raises(ParvisError, match="differs from the PyTorch model by up to .* nothing written"):
        export_model(tiny("unet_small"), out, fmt)
    assert list(tmp_path.iterdir()) == []


@torch.library.custom_op("parvis_test::mystery", mutates_args=())
def mystery(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@mystery.register_fake
def _(x):
    return torch.empty_like(x)


class Unexportable(ClassificationModel):
    """A custom operator: torch.export captures it, ONNX has no translation for it."""

    def __init__(self, data_dependent: bool = False):
        super().__init__(ModelMeta("odd", "classification", 2, ["a", "b"], SIZE, (0.5,) * 3, (0.5,) * 3))
        self.fc = torch.nn.Linear(3, 2)
        self.data_dependent = data_dependent

    def forward(self, x):
        if self.data_dependent and x.sum() > 0:  # control flow on data: torch.export refuses it
            x = x * 2
        return self.fc(mystery(x).mean((2, 3)))


def test_unexportable_model_is_a_clear_error_naming_the_operator(tmp_path):
    with pytest.raises(ParvisError, match=r"cannot export odd to ONNX: operator parvis_test\.mystery\.default"):
        export_model(Unexportable().eval(), tmp_path / "x.onnx", "onnx")
    with pytest.raises(ParvisError, match=r"cannot export odd with torch\.export: \S"):
        export_model(Unexportable(data_dependent=True).eval(), tmp_path / "x.pt2", "torch-export")
    assert list(tmp_path.iterdir()) == []


def test_bad_format_and_missing_folder(tmp_path):
    with pytest.raises(ParvisError, match="--format 'tflite' is unknown"):
        export_model(tiny("unet_small"), tmp_path / "x", "tflite")
    # like every other command, export makes its output folder (`--out runs/export/x.onnx` on a fresh checkout)
    report = export_model(tiny("unet_small"), tmp_path / "runs" / "export" / "x.onnx", "onnx")
    assert (tmp_path / "runs" / "export" / "x.onnx").is_file() and report["path"].endswith("x.onnx")


@pytest.mark.parametrize("artifact", ["onnx", "pt2", "eager"])
def test_runtime_conformance(artifact, tmp_path):
    """Every runtime: load, batch of 1 and of N, float32 logits of the model's shape, equal to eager."""
    model = tiny("resnet18")
    if artifact == "eager":
        ckpt = tmp_path / "resnet18.pt"
        from parvis.engine.checkpoint import save_checkpoint

        save_checkpoint(ckpt, {"model": model.state_dict(), "meta": model.meta.to_dict()})
        source = ckpt
    else:
        source = tmp_path / f"resnet18.{artifact}"
        export_model(model, source, "onnx" if artifact == "onnx" else "torch-export")
    rt = open_runtime(str(source), threads=1)
    info = rt.info()
    assert info["runtime"] in ("torch", "onnxruntime") and info["device"] == "cpu" and info["threads"] == 1
    assert rt.meta.name == "resnet18" and rt.meta.num_classes == 5
    for n in (1, 4):
        x = torch.randn(n, 3, SIZE, SIZE)
        with torch.no_grad():
            expected = model(x).numpy()
        got = rt.run(x)
        assert got.shape == (n, 5) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_cli_export_prints_and_writes_json(tmp_path, capsys):
    out = tmp_path / "u.onnx"
    assert main(["export", "unet_small", "--out", str(out), "--json", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["format"] == "onnx" and report["parity_max_abs_err"] < 1e-4 and out.exists()
    assert "parity vs PyTorch fp32" in capsys.readouterr().out


def test_cli_export_bad_source_exits_2(tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x.onnx")]) == 2
    assert "no such file; check the path" in capsys.readouterr().err


def test_bench_runtime_rows_agree_with_eager_fp32(tmp_path):
    from parvis.bench.runtime import bench_runtime
    from parvis.engine.checkpoint import save_checkpoint

    model = tiny("resnet18")
    ckpt = tmp_path / "r.pt"
    save_checkpoint(ckpt, {"model": model.state_dict(), "meta": model.meta.to_dict()})
    result = bench_runtime(str(ckpt), batch=2, rounds=1, iters=1, latency_iters=2, threads=1)
    rows = {(r["runtime"], r["precision"], r["layout"]): r for r in result["rows"]}
    assert ("torch", "fp32", "contiguous") in rows and ("onnxruntime", "fp32", "-") in rows
    assert rows[("torch", "fp32", "contiguous")]["speedup_vs_eager_fp32"] == 1.0
    for (_, precision, _), r in rows.items():
        assert r["img_s"] > 0 and r["latency_ms_p99"] >= r["latency_ms_p50"] > 0 and r["info"]["threads"] == 1
        assert r["max_abs_err"] < (1e-4 if precision == "fp32" else 0.5)  # bf16 rounds its logits


def test_cli_bench_runtime_writes_json(tmp_path):
    from parvis.engine.checkpoint import save_checkpoint

    model = tiny("unet_small")
    ckpt = tmp_path / "u.pt"
    save_checkpoint(ckpt, {"model": model.state_dict(), "meta": model.meta.to_dict()})
    args = ["bench", "runtime", str(ckpt), "--batch", "2", "--rounds", "1", "--iters", "1", "--threads", "1"]
    assert main([*args, "--json", str(tmp_path / "b.json")]) == 0
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["model"] == "unet_small" and {r["runtime"] for r in data["rows"]} == {
        "torch",
        "onnxruntime",
        "openvino",
    }
    assert all("img_s" in r and "speedup_vs_eager_fp32" in r for r in data["rows"])
