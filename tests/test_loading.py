"""The one way in: zoo names with weights in their native key layouts, foreign ONNX files, the one-line errors.

Foreign ONNX files are made here with plain `torch.onnx.export` (no parvis metadata): an image classifier
and a two-input / two-output tensor model that is not an image model at all.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from parvis.artifact import TENSOR_TASK, Preprocess, read_metadata
from parvis.bench.serve import ServerProcess
from parvis.cli.main import main
from parvis.engine.loading import load_model
from parvis.errors import ParvisError
from parvis.models import build_model
from parvis.runtimes import open_predictor

# The test models are made with torch's legacy exporter on purpose: it is what other tools' files look like.
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


class TwoHeads(nn.Module):
    """Not an image model: a (N, 4) vector and a (N, 2, 3) tensor in, two outputs."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 3)
        self.b = nn.Linear(6, 2)

    def forward(self, x, y):
        return self.a(x).relu(), self.b(y.flatten(1)) + x[:, :2]


class TinyNet(nn.Module):
    def __init__(self, classes: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, classes)

    def forward(self, images):
        return self.fc(self.conv(images).relu().mean((2, 3)))


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], dynamic=True) -> Path:
    torch.manual_seed(0)
    axes = {n: {0: "batch"} for n in inputs + outputs} if dynamic else None
    torch.onnx.export(module.eval(), args, str(path), input_names=inputs, output_names=outputs,
                      dynamic_axes=axes, dynamo=False, opset_version=17)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def foreign(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("foreign")
    torch.manual_seed(0)
    return {
        "two": _export(
            TwoHeads(), (torch.randn(2, 4), torch.randn(2, 2, 3)), root / "two.onnx", ["x", "y"], ["p", "q"]
        ),
        "image": _export(TinyNet(), (torch.randn(2, 3, 32, 32),), root / "image.onnx", ["input"], ["logits"]),
        "fixed3": _export(
            TwoHeads(),
            (torch.randn(3, 4), torch.randn(3, 2, 3)),
            root / "fixed3.onnx",
            ["x", "y"],
            ["p", "q"],
            dynamic=False,
        ),  # fmt: skip
    }


def test_foreign_onnx_is_described_from_its_graph(foreign):
    meta = read_metadata(foreign["two"])
    assert meta.task == TENSOR_TASK
    ins = {t["name"]: t for t in meta.extra["inputs"]}
    assert ins["x"]["dtype"] == "FP32" and ins["x"]["shape"][1:] == [4] and ins["x"]["dynamic_axes"] == [0]
    assert ins["y"]["shape"][1:] == [2, 3]
    assert [t["name"] for t in meta.extra["outputs"]] == ["p", "q"]


def test_foreign_image_onnx_needs_its_preprocessing(foreign, tmp_path):
    with pytest.raises(ParvisError, match="image commands need its preprocessing"):
        from parvis.runtimes import require_images

        model, _ = open_predictor(foreign["image"])
        require_images(model.meta, foreign["image"])
    with pytest.raises(ParvisError, match="--mean"):
        read_metadata(foreign["image"], Preprocess(task="classification"))
    meta = read_metadata(foreign["image"], Preprocess(task="classification", mean=(0.5,) * 3, std=(0.25,) * 3))
    assert meta.input_size == 32 and meta.num_classes == 3 and meta.extra["provenance"]["input_size"] == "graph"
    # the same from a sidecar next to the file, labels from a file it names
    (tmp_path / "names.txt").write_text("ant\nbee\ncat\n")
    copy = tmp_path / "m.onnx"
    copy.write_bytes(foreign["image"].read_bytes())
    (tmp_path / "m.parvis.yaml").write_text("task: classification\nmean: [0.5, 0.5, 0.5]\nstd: [0.25, 0.25, 0.25]\n"
                                            "labels: names.txt\n")  # fmt: skip
    meta = read_metadata(copy)
    assert meta.class_names == ["ant", "bee", "cat"] and meta.mean == (0.5, 0.5, 0.5)


def test_predict_on_a_foreign_onnx_with_flags(foreign, tmp_path, capsys):
    from PIL import Image

    Image.fromarray(np.full((40, 50, 3), 128, np.uint8)).save(tmp_path / "grey.png")
    labels = tmp_path / "labels.txt"
    labels.write_text("ant\nbee\ncat\n")
    code = main(["predict", str(foreign["image"]), str(tmp_path / "grey.png"), "--out", str(tmp_path / "out"),
                 "--task", "classification", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25",
                 "--labels", str(labels)])  # fmt: skip
    assert code == 0
    result = json.loads((tmp_path / "out" / "results.json").read_text())[0]
    assert result["class_name"] in ("ant", "bee", "cat")
    # what ONNX Runtime computes directly on the same preprocessing: resize 36 (32 / 0.875), center 32
    x = np.full((1, 3, 32, 32), (128 / 255 - 0.5) / 0.25, np.float32)
    direct = ort.InferenceSession(str(foreign["image"])).run(None, {"input": x})[0][0]
    assert result["label"] == int(direct.argmax())
    code = main(["predict", str(foreign["image"]), str(tmp_path / "grey.png"), "--out", str(tmp_path / "o2")])
    assert code == 2 and "image commands need its preprocessing" in capsys.readouterr().err


def test_serve_foreign_tensors_batches_and_matches_onnxruntime(foreign):
    session = ort.InferenceSession(str(foreign["two"]))
    rng = np.random.default_rng(0)
    requests = [(rng.standard_normal((1, 4)).astype(np.float32), rng.standard_normal((1, 2, 3)).astype(np.float32))
                for _ in range(16)]  # fmt: skip
    with ServerProcess([str(foreign["two"]), "--max-queue-delay-ms", "50"]) as proc:
        with httpx.Client(base_url=proc.url, timeout=60) as client:
            meta = client.get("/v1/models/two").json()
            assert [i["name"] for i in meta["inputs"]] == ["x", "y"] and meta["inputs"][1]["shape"] == [-1, 2, 3]

            def call(xy):
                x, y = xy
                body = {"inputs": [
                    {"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()},
                    {"name": "y", "shape": list(y.shape), "datatype": "FP32", "data": y.ravel().tolist()},
                ]}  # fmt: skip
                return client.post("/v1/models/two/infer", json=body)

            with ThreadPoolExecutor(16) as pool:
                answers = list(pool.map(call, requests))
            for (x, y), r in zip(requests, answers, strict=True):
                assert r.status_code == 200, r.text
                outs = {o["name"]: np.asarray(o["data"], np.float32).reshape(o["shape"]) for o in r.json()["outputs"]}
                p, q = session.run(None, {"x": x, "y": y})
                assert np.abs(outs["p"] - p).max() <= 1e-4 and np.abs(outs["q"] - q).max() <= 1e-4
            sizes = [int(r.headers["x-batch-size"]) for r in answers]
            assert max(sizes) > 1, sizes
            metrics = client.get("/metrics").text
            bad = client.post("/v1/models/two/infer", json={"inputs": [{"name": "x", "shape": [1, 5],
                              "datatype": "FP32", "data": [0] * 5}]})  # fmt: skip
            assert bad.status_code == 422 and "does not fit" in bad.json()["detail"]
            image = client.post("/v1/models/two/predict", content=b"\xff\xd8")
            assert image.status_code == 422 and "raw tensors" in image.json()["detail"]
    buckets = [line for line in metrics.splitlines() if "batch_size_bucket" in line and 'le="1.0"' in line]
    assert buckets, "the batch-size histogram is exported"


def test_a_foreign_onnx_that_cannot_batch_is_one_line(foreign, capsys):
    from parvis.serve.models import tensor_batch_limit

    with pytest.raises(ParvisError, match="no common batch axis"):
        tensor_batch_limit(read_metadata(foreign["fixed3"]), str(foreign["fixed3"]))


def test_zoo_names_load_native_key_layouts(tmp_path):
    import torchvision

    native = torchvision.models.resnet18(num_classes=1000).state_dict()
    torch.save(native, tmp_path / "tv.pth")
    model = load_model("torchvision:resnet18", weights=tmp_path / "tv.pth")
    assert model.meta.class_names[0] == "tench" and model.meta.num_classes == 1000
    assert torch.equal(model.state_dict()["net.conv1.weight"], native["conv1.weight"])
    # DDP's "module." prefix and a 5-class head: the file's class count is taken
    five = torchvision.models.resnet18(num_classes=5).state_dict()
    torch.save({f"module.{k}": v for k, v in five.items()}, tmp_path / "ddp5.pth")
    model = load_model("torchvision:resnet18", weights=tmp_path / "ddp5.pth")
    assert model.meta.num_classes == 5
    import timm
    from safetensors.torch import save_file

    save_file(timm.create_model("resnet18", num_classes=1000).state_dict(), str(tmp_path / "timm.safetensors"))
    model = load_model("timm:resnet18", weights=tmp_path / "timm.safetensors")
    assert model.meta.extra["interpolation"] == "bicubic" and model.meta.extra["crop_pct"] == 0.95
    assert model.meta.class_names[1] == "goldfish"


def test_weight_mismatch_and_unknown_names_are_one_line(tmp_path):
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ParvisError, match="missing keys|do not fit"):
        load_model("torchvision:resnet18", weights=tmp_path / "bad.pth")
    with pytest.raises(ParvisError, match=r"did you mean torchvision:mobilenet_v2"):
        load_model("torchvision:mobilenet_v22")
    with pytest.raises(ParvisError, match="nothing is downloaded"):
        load_model("torchvision:resnet18", weights="default")


def test_training_replaces_a_head_that_does_not_fit(tmp_path):
    import torchvision

    torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), tmp_path / "tv.pth")
    model = build_model("torchvision:resnet18", 5, weights=tmp_path / "tv.pth", replace_head=True)
    assert model.meta.extra["head_replaced"] == ["net.fc.bias", "net.fc.weight"]
    with pytest.raises(ParvisError, match="do not fit"):
        build_model("torchvision:resnet18", 5, weights=tmp_path / "tv.pth")


@pytest.mark.parametrize(
    "name,shape",
    [("torchvision:mobilenet_v3_small", (2, 1000)), ("timm:resnet18", (2, 1000)),
     ("torchvision:lraspp_mobilenet_v3_large", (2, 21, 64, 64))],
)  # fmt: skip
def test_zoo_models_export_with_parity(name, shape, tmp_path):
    from parvis.export import export_model

    model = load_model(name, given=Preprocess(size=64))
    assert model(torch.randn(2, 3, 64, 64)).shape == shape
    report = export_model(model, tmp_path / "m.onnx")
    assert report["parity_max_abs_err"] < 1e-3
    assert read_metadata(tmp_path / "m.onnx").name == name


def test_quantize_a_foreign_tensor_model_with_random_or_given_samples(foreign, tmp_path, capsys):
    from parvis.quantize import quantize_onnx

    report = quantize_onnx(foreign["two"], tmp_path / "two-int8.onnx", None, n=8)
    assert report["calibration_data"].startswith("random") and report["calibration_images"] == 8
    assert report["output_snr_db"] > 10  # a linear model quantizes well; a broken graph would be near 0 dB
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((5, 4)).astype(np.float32),
             y=rng.standard_normal((5, 2, 3)).astype(np.float32))  # fmt: skip
    code = main(["quantize", str(foreign["two"]), "--calib-data", str(tmp_path / "calib.npz"),
                 "--out", str(tmp_path / "given.onnx"), "--calib", "5"])  # fmt: skip
    assert code == 0 and "SNR" in capsys.readouterr().out
    np.savez(tmp_path / "wrong.npz", z=np.zeros((2, 4), np.float32))
    code = main(["quantize", str(foreign["two"]), "--calib-data", str(tmp_path / "wrong.npz"),
                 "--out", str(tmp_path / "w.onnx")])  # fmt: skip
    assert code == 2 and "has no array named 'x'" in capsys.readouterr().err
    assert not (tmp_path / "w.onnx").exists()


def test_bench_batch_and_precision_run_a_foreign_tensor_model(foreign, tmp_path, capsys):
    code = main(["bench", "batch", str(foreign["two"]), "--batch", "1,4", "--json", str(tmp_path / "b.json")])
    assert code == 0 and "raw tensors" in capsys.readouterr().out
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert [r["batch"] for r in rows] == [1, 4] and all(r["img_s"] > 0 for r in rows)
    assert main(["bench", "precision", str(foreign["two"]), "--batch", "4"]) == 0
    assert main(["bench", "runtime", str(foreign["two"]), "--batch", "4", "--json", str(tmp_path / "r.json")]) == 0
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert [(r["runtime"], r["precision"]) for r in rows] == [("onnxruntime", "fp32"), ("onnxruntime", "int8")]


def test_inspect_and_models_answer_in_json(foreign, capsys):
    assert main(["inspect", str(foreign["two"]), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"task", "inputs", "outputs", "preprocess", "classes", "params"} <= report.keys()
    assert report["task"] == TENSOR_TASK and report["foreign"] is True and report["params"] == 4 * 3 + 3 + 6 * 2 + 2
    assert main(["inspect", "timm:resnet18", "--json", "--size", "96"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["preprocess"]["input_size"] == {"value": 96, "from": "given"}
    assert report["preprocess"]["crop_pct"]["from"].startswith("timm pretrained_cfg")
    assert report["weights"] == "random" and report["flops"] > 0
    assert main(["models", "--task", "segmentation", "--source", "torchvision", "--json"]) == 0
    names = [m["name"] for m in json.loads(capsys.readouterr().out)]
    assert "torchvision:deeplabv3_resnet50" in names and all(n.startswith("torchvision:") for n in names)
    assert main(["inspect", "torchvision:resnet181"]) == 2
    assert "did you mean torchvision:resnet18" in capsys.readouterr().err


def test_a_torchvision_detector_predicts_and_its_export_fails_in_one_line(tmp_path, capsys):
    from parvis.export import export_model

    model = load_model("torchvision:ssdlite320_mobilenet_v3_large", given=Preprocess(size=96))
    raw = model(torch.rand(2, 3, 96, 96))
    assert raw.shape == (2, 100, 6) and len(model.postprocess(raw)) == 2
    with pytest.raises(ParvisError, match="output shape depends on the data") as info:
        export_model(model, tmp_path / "d.onnx")
    assert "\n" not in str(info.value) and not (tmp_path / "d.onnx").exists()
    assert capsys.readouterr().err == ""  # the exporter's graph dump stays off the terminal


def test_optimize_a_foreign_image_onnx_by_agreement(foreign, tmp_path):
    from PIL import Image

    from parvis.optimize import optimize

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(photos / f"{i}.png")
    given = Preprocess(task="classification", mean=(0.5,) * 3, std=(0.25,) * 3)
    result = optimize(str(foreign["image"]), str(photos), tmp_path / "opt", given=given, rounds=1, iters=1,
                      latency_iters=2, batches=(4,), threads=(1,), calib=6,
                      pairs=[("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32")])  # fmt: skip
    assert result["metric_mode"] == "agreement" and result["metric_name"] == "top1_agreement"
    rows = {(r["runtime"], r["precision"]): r for r in result["candidates"]}
    base = rows[("onnxruntime", "fp32")]
    assert base["metric"] == 1.0 and base["speedup_vs_eager_fp32"] == 1
    assert rows[("openvino", "fp32")]["metric"] == 1.0  # the same fp32 graph on another runtime agrees
    assert Path(result["chosen"]["artifact"]).is_file()


def test_quantize_a_zoo_name_exports_it_first(tmp_path, capsys):
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(tmp_path / f"{i}.png")
    code = main(["quantize", "torchvision:mobilenet_v3_small", "--size", "64", "--data", str(tmp_path),
                 "--out", str(tmp_path / "q.onnx"), "--calib", "3"])  # fmt: skip
    assert code == 0 and read_metadata(tmp_path / "q.onnx").name == "torchvision:mobilenet_v3_small"
    assert "3 calibration samples" in capsys.readouterr().out
