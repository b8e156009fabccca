"""The server as users meet it: a real `parvis serve` process on a loopback port, real HTTP clients."""

from __future__ import annotations

import base64
import contextlib
import io
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou

from parvis.bench.serve import ServerProcess
from tests.serve.conftest import CLASSES, jpeg, png_header

KEY = "test-key-123"
AUTH = {"authorization": f"Bearer {KEY}"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(repository):
    """The repository served with an API key (from the environment) and a 200 KB body limit."""
    with ServerProcess([str(repository), "--max-body-mb", "0.2"], env={"PARVIS_API_KEY": KEY}) as proc:
        with httpx.Client(base_url=proc.url, headers=AUTH, timeout=30) as client:
            yield client


def test_health_and_readiness_need_no_key(server):
    bare = httpx.Client(base_url=str(server.base_url))
    assert bare.get("/healthz").json() == {"status": "ok"}
    assert bare.get("/readyz").json() == {"ready": True}


def test_every_other_endpoint_needs_the_key(server):
    bare = httpx.Client(base_url=str(server.base_url))
    for method, path in [("GET", "/v1/models"), ("GET", "/metrics"), ("POST", "/v1/models/clf/predict")]:
        r = bare.request(method, path, content=jpeg() if method == "POST" else None)
        assert r.status_code == 401, path
        assert "API key" in r.json()["detail"]
        assert r.headers["www-authenticate"] == "Bearer"
    wrong = bare.get("/v1/models", headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert bare.get("/v1/models", headers={"x-api-key": KEY}).status_code == 200


def test_model_list_has_metadata_and_batching_settings(server):
    models = {m["name"]: m for m in server.get("/v1/models").json()["models"]}
    assert set(models) == {"clf", "seg", "slow", "stereo"}
    clf = models["clf"]
    assert clf["task"] == "classification" and clf["classes"] == CLASSES
    assert clf["input"]["shape"] == [3, 32, 32]
    assert clf["runtime"] == "torch" and clf["precision"] in ("fp32", "bf16")
    assert clf["batching"]["max_batch_size"] == 4  # from its model.yaml
    assert models["seg"]["batching"]["max_batch_size"] == 16  # the command-line default
    assert server.get("/v1/models/seg").json()["task"] == "segmentation"
    assert server.get("/v1/models/nope").status_code == 404


def test_predict_classification_raw_and_multipart(server):
    body = jpeg()
    r = server.post("/v1/models/clf/predict", content=body, headers={"content-type": "image/jpeg"})
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["class_name"] in CLASSES and 0 <= result["score"] <= 1
    assert len(result["top5"]) == 5
    assert int(r.headers["x-batch-size"]) >= 1
    multi = server.post("/v1/models/clf/predict", files={"image": ("x.jpg", body, "image/jpeg")})
    assert multi.status_code == 200
    assert multi.json()["label"] == result["label"]
    assert multi.json()["score"] == pytest.approx(result["score"], abs=1e-5)


def test_predict_segmentation_mask_png_and_rle(server):
    body = jpeg(80, 48)
    r = server.post("/v1/models/seg/predict", content=body)
    assert r.status_code == 200, r.text
    out = r.json()
    mask = np.array(Image.open(io.BytesIO(base64.b64decode(out["mask_png"]))))
    assert mask.shape == (48, 80)  # the image's own size, not the model's 32 px
    assert mask.max() <= len(CLASSES)
    assert sum(out["class_shares"].values()) == pytest.approx(1.0, abs=1e-6)
    rle = server.post("/v1/models/seg/predict?mask=rle", content=body).json()["mask_rle"]
    decoded = np.repeat(rle["values"], rle["counts"]).reshape(rle["size"])
    assert (decoded == mask).all()
    assert server.post("/v1/models/seg/predict?mask=bogus", content=body).status_code == 422


def test_infer_kserve_v2(server):
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    payload = {"id": "r1", "inputs": [{"name": "input", "shape": [3, 3, 32, 32], "datatype": "FP32",
                                       "data": x.reshape(-1).tolist()}]}  # fmt: skip
    r = server.post("/v1/models/clf/infer", json=payload)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["id"] == "r1" and out["model_name"] == "clf"
    assert out["outputs"][0]["shape"] == [3, 5] and out["outputs"][0]["datatype"] == "FP32"
    assert len(out["outputs"][0]["data"]) == 15
    # The same tensor one at a time gives the same logits (batching does not change results).
    one = dict(payload, inputs=[dict(payload["inputs"][0], shape=[1, 3, 32, 32], data=x[1].reshape(-1).tolist())])
    single = server.post("/v1/models/clf/infer", json=one).json()["outputs"][0]["data"]
    assert np.allclose(single, out["outputs"][0]["data"][5:10], atol=2e-2)


def test_predict_stereo_pair_multipart_and_v2(server):
    left, right = jpeg(72, 40, seed=1), jpeg(72, 40, seed=2)
    files = {"left": ("l.jpg", left, "image/jpeg"), "right": ("r.jpg", right, "image/jpeg")}
    r = server.post("/v1/models/stereo/predict?planes=4,8", files=files)
    assert r.status_code == 200, r.text
    out = r.json()
    disparity = np.array(Image.open(io.BytesIO(base64.b64decode(out["disparity_png"]))))
    assert disparity.dtype == np.uint16 and disparity.shape == (40, 72)  # the pair's own size
    assert out["disparity_max"] == pytest.approx(disparity.max() / 256, abs=1 / 256)
    assert set(out["planes"]) == {"4", "8"} and out["planes_from"] == "dense disparity"
    closer = np.array(Image.open(io.BytesIO(base64.b64decode(out["planes"]["4"]["mask_png"]))))
    assert closer.mean() == pytest.approx(((disparity / 256) > 4).mean(), abs=0.01)
    # One image, two sizes, or raw bytes: a clear 4xx
    one = server.post("/v1/models/stereo/predict", files={"left": ("l.jpg", left, "image/jpeg")})
    assert one.status_code == 422 and "two images" in one.json()["detail"]
    files["right"] = ("r.jpg", jpeg(64, 40, seed=2), "image/jpeg")
    assert "one size" in server.post("/v1/models/stereo/predict", files=files).json()["detail"]
    assert server.post("/v1/models/stereo/predict", content=left).status_code == 415
    # KServe v2: the two views as inputs `left` and `right`
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 24)).astype(np.float32)  # the server takes <= 200 KB
    views = [{"name": n, "shape": [1, 3, 16, 24], "datatype": "FP32", "data": x.reshape(-1).tolist()}
             for n in ("left", "right")]  # fmt: skip
    v2 = server.post("/v1/models/stereo/infer", json={"inputs": views})
    assert v2.status_code == 200, v2.text
    assert v2.json()["outputs"][0]["shape"] == [1, 1, 16, 24]
    bad = server.post("/v1/models/stereo/infer", json={"inputs": views[:1]})
    assert bad.status_code == 422 and "left" in bad.json()["detail"]


@pytest.mark.parametrize(
    ("tensor", "status", "message"),
    [
        ({"shape": [1, 3, 16, 16], "datatype": "FP32", "data": [0.0] * 768}, 422, r"send \[N, 3, 32, 32\]"),
        ({"shape": [1, 3, 32, 32], "datatype": "INT64", "data": [0] * 3072}, 422, "datatype 'INT64'"),
        ({"shape": [1, 3, 32, 32], "datatype": "FP32", "data": [0.0] * 10}, 422, "holds 10 values"),
        ({"shape": [1, 3, 32, 32], "datatype": "FP32", "data": ["a"] * 3072}, 422, "list of numbers"),
        ({"shape": [1, 3, 32, 32], "datatype": "FP32"}, 422, "needs 'shape', 'datatype' and 'data'"),
    ],
)
def test_infer_rejects_bad_tensors(server, tensor, status, message):
    r = server.post("/v1/models/clf/infer", json={"inputs": [{"name": "input", **tensor}]})
    assert r.status_code == status
    assert re.search(message, r.json()["detail"]), r.json()


def test_infer_rejects_bodies_that_are_not_json(server):
    r = server.post("/v1/models/clf/infer", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["detail"]


@pytest.mark.parametrize(
    ("body", "ctype", "status", "message"),
    [
        (b"hello, not an image", "image/jpeg", 415, "not an image in a supported format"),
        (b"hello", "text/plain", 415, "Content-Type 'text/plain' is not an image"),
        (jpeg()[:300], "image/jpeg", 400, "corrupt or truncated"),
        (png_header(50000, 50000), "image/png", 413, "over the limit of 89,478,485"),
        (b"\xff\xd8\xff" + b"\0" * 300_000, "image/jpeg", 413, "over the limit of 209,715 bytes"),
        (b"", "image/jpeg", 400, "empty body"),
    ],
    ids=["not-an-image", "wrong-content-type", "truncated", "decompression-bomb", "body-too-large", "empty"],
)
def test_predict_rejects_bad_images_with_a_message(server, body, ctype, status, message):
    r = server.post("/v1/models/clf/predict", content=body, headers={"content-type": ctype})
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]


def test_a_chunked_body_is_cut_off_at_the_limit(server):
    """No Content-Length to check up front: the server stops reading at the limit."""

    def chunks():
        yield b"\xff\xd8\xff"
        for _ in range(100):
            yield b"\0" * 10_000

    r = server.post("/v1/models/clf/predict", content=chunks(), headers={"content-type": "image/jpeg"})
    assert r.status_code == 413 and "over the limit of 209,715 bytes" in r.json()["detail"]


def test_multipart_without_a_file_part(server):
    r = server.post("/v1/models/clf/predict", files={"note": (None, "no file here")})  # a plain field only
    assert r.status_code == 422 and "no file part" in r.json()["detail"]


def test_unknown_model_is_404(server):
    r = server.post("/v1/models/nope/predict", content=jpeg())
    assert r.status_code == 404 and "'nope' is not served" in r.json()["detail"]


def test_timeout_is_504(server):
    r = server.post("/v1/models/slow/predict", content=jpeg())
    assert r.status_code == 504 and "did not answer within" in r.json()["detail"]


def test_metrics_count_batches_and_statuses(server):
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda i: server.post("/v1/models/clf/predict", content=jpeg(seed=i)).status_code,
                              range(24)))  # fmt: skip
    assert codes == [200] * 24
    text = server.get("/metrics").text
    count = float(re.search(r'^parvis_batch_size_count\{model="clf"\} (\S+)$', text, re.M).group(1))
    total = float(re.search(r'^parvis_batch_size_sum\{model="clf"\} (\S+)$', text, re.M).group(1))
    assert total >= 24 and 1 <= total / count <= 4  # max_batch_size 4 from model.yaml
    over4 = float(re.search(r'^parvis_batch_size_bucket\{le="4.0",model="clf"\} (\S+)$', text, re.M).group(1))
    assert over4 == count  # no batch above max_batch_size
    assert re.search(r'^parvis_requests_total\{endpoint="predict",model="clf",status="200"\} \d+', text, re.M)
    assert re.search(r'^parvis_requests_total\{endpoint="predict",model="",status="404"\}', text, re.M)
    for name in (
        "parvis_queue_wait_seconds_count",
        "parvis_inference_seconds_count",
        "parvis_queue_depth",
        "parvis_instances_busy",
        "parvis_preprocess_seconds_count",
        "process_resident_memory_bytes",
    ):
        assert re.search(rf"^{name}", text, re.M), name


def test_overload_gets_fast_503_then_recovers_and_shutdown_drains(repository):
    """A single slow instance with room for 2: a burst is mostly refused at once with Retry-After,
    the server then serves normally, and SIGTERM lets in-flight requests finish."""
    args = [str(repository / "clf" / "best.pt"), "--max-batch-size", "1", "--max-queue", "2", "--threads", "1"]
    with ServerProcess(args) as proc:
        client = httpx.Client(base_url=proc.url, timeout=60)
        big = jpeg(1600, 1200, quality=95)  # decode + resize keep each request busy for a while
        with ThreadPoolExecutor(24) as pool:
            responses = list(pool.map(lambda i: client.post("/v1/models/best/predict", content=big), range(24)))
        codes = [r.status_code for r in responses]
        assert set(codes) <= {200, 503} and codes.count(503) > 0 and codes.count(200) >= 2, codes
        refused = next(r for r in responses if r.status_code == 503)
        assert refused.headers["retry-after"] == "1" and "overloaded" in refused.json()["detail"]
        assert [client.post("/v1/models/best/predict", content=jpeg()).status_code for _ in range(3)] == [200] * 3

        # Graceful shutdown: two requests in flight when SIGTERM arrives both complete.
        results = []
        threads = [
            threading.Thread(target=lambda: results.append(client.post("/v1/models/best/predict", content=big)))
            for _ in range(2)
        ]
        for t in threads:
            t.start()
        time.sleep(0.05)
        proc.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        assert [r.status_code for r in results] == [200, 200]
        assert proc.proc.wait(60) == 0


def test_a_bad_model_file_stops_the_server_with_one_line(tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(Exception, match="exited with 2"):
        ServerProcess([str(bad)], log_path=tmp_path / "log.txt", ready_timeout_s=120)
    log = (tmp_path / "log.txt").read_text()
    assert "parvis: error: serving stopped: " in log and "broken.pt" in log


@contextlib.contextmanager
def in_process(server):
    """`server` (parvis.serve.app.Server) on real uvicorn in a thread, on a free loopback port."""
    import uvicorn

    from parvis.bench.serve import free_port
    from parvis.serve.app import create_app

    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(create_app(server), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    deadline = time.time() + 30
    while not uv.started and time.time() < deadline:
        time.sleep(0.05)
    try:
        yield client
    finally:
        uv.should_exit = True
        thread.join(30)


def wait_ready(client, seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while client.get("/readyz").status_code != 200:
        assert time.time() < deadline, "server not ready"
        time.sleep(0.1)


def test_ready_only_after_warm_up(repository, monkeypatch):
    from parvis.serve.app import Server, ServerConfig
    from parvis.serve.models import ModelConfig, ServedModel, resolve_specs

    release = threading.Event()
    real_load = ServedModel.load

    def slow_load(self, observer=None):
        release.wait(30)
        real_load(self, observer)

    monkeypatch.setattr(ServedModel, "load", slow_load)
    server = Server(resolve_specs([str(repository / "clf" / "best.pt")], ModelConfig()), ServerConfig())
    with in_process(server) as client:
        assert client.get("/healthz").status_code == 200  # alive while loading
        loading = client.get("/readyz")
        assert loading.status_code == 503 and loading.json() == {"ready": False, "loading": ["best"]}
        early = client.post("/v1/models/best/predict", content=jpeg())
        assert early.status_code == 503 and "still loading" in early.json()["detail"]
        assert early.headers["retry-after"] == "1"
        release.set()
        wait_ready(client)
        assert client.post("/v1/models/best/predict", content=jpeg()).status_code == 200


def test_a_failing_batch_answers_500_and_the_server_keeps_serving(repository, monkeypatch):
    """The model raises on a white image: that request gets 500 with the error, the next normal
    request 200."""
    from parvis.serve import models as served
    from parvis.serve.app import Server, ServerConfig
    from parvis.serve.models import ModelConfig, resolve_specs

    real = served._batch_fn

    def failing(model):
        run = real(model)

        def check(items):
            if any(float(x.mean()) > 1.5 for x in items):  # a white image normalizes to about +2
                raise RuntimeError("simulated device error")
            return run(items)

        return check

    monkeypatch.setattr(served, "_batch_fn", failing)
    specs = resolve_specs([str(repository / "clf" / "best.pt")], ModelConfig(max_batch_size=1))
    with in_process(Server(specs, ServerConfig())) as client:
        wait_ready(client)
        white = io.BytesIO()
        Image.new("RGB", (40, 40), (255, 255, 255)).save(white, "PNG")
        r = client.post("/v1/models/best/predict", content=white.getvalue())
        assert r.status_code == 500
        assert r.json()["detail"] == "inference failed in model 'best': RuntimeError: simulated device error"
        assert client.post("/v1/models/best/predict", content=jpeg()).status_code == 200
        text = client.get("/metrics").text
        assert re.search(r'^parvis_batch_failures_total\{model="best"\} 1\.0$', text, re.M)


def test_detection_models_answer_with_boxes_in_image_pixels(tmp_path):
    from tests.serve.conftest import tiny_checkpoint

    tiny_checkpoint(tmp_path / "det.pt", "centernet_small", CLASSES)
    with ServerProcess([str(tmp_path / "det.pt")]) as proc:
        client = httpx.Client(base_url=proc.url, timeout=30)
        assert client.get("/v1/models/det").json()["task"] == "detection"
        body = jpeg(160, 80)
        r = client.post("/v1/models/det/predict?min_score=0", content=body)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["count"] == len(out["detections"]) > 0  # random weights: low scores, kept with min_score=0
        for d in out["detections"]:
            x1, y1, x2, y2 = d["box"]
            assert -1 <= x1 <= x2 <= 161 and -1 <= y1 <= y2 <= 81  # the image's own 160 x 80 pixels
            assert d["class_name"] in CLASSES and 0 <= d["score"] <= 1
        strict = client.post("/v1/models/det/predict?min_score=0.99", content=body).json()
        assert strict["count"] <= out["count"]
        assert client.post("/v1/models/det/predict?min_score=2", content=body).status_code == 422
        # Class-agnostic NMS: of boxes overlapping by more than 0.6 IoU, whatever their class, one stays.
        agnostic = client.post("/v1/models/det/predict?min_score=0&agnostic=true", content=body).json()
        assert 0 < agnostic["count"] < out["count"]  # random weights: peaks of several classes in one place
        boxes = torch.tensor([d["box"] for d in agnostic["detections"]])
        iou = box_iou(boxes, boxes).fill_diagonal_(0)
        assert float(iou.max()) <= 0.6 + 1e-6
        kept = {tuple(d["box"]) for d in agnostic["detections"]} <= {tuple(d["box"]) for d in out["detections"]}
        assert kept
