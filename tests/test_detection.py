"""The CenterNet detector: targets and loss, decoding, the COCO metric, training on the shapes set,
evaluation and prediction of a detection checkpoint, and exported artifacts decoding as eager does."""

from __future__ import annotations

import json
import math

import pytest
import torch

from parvis.config import TrainConfig
from parvis.engine.evaluate import _detection_update, _detection_values, make_metrics
from parvis.models import DetectionModel, ModelMeta, build_model
from parvis.models.centers import center_loss, center_targets, decode_centers
from parvis.structures import Detections

CLASSES = ["circle", "ring", "square", "star", "triangle"]
C = len(CLASSES)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors gain nothing from intra-op threads on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _meta(size: int = 64) -> ModelMeta:
    return ModelMeta(
        "centernet_small", "detection", C, CLASSES, size, (0.5,) * 3, (0.5,) * 3, extra={"output_stride": 4}
    )


def _targets() -> list[dict]:
    return [
        {"boxes": torch.tensor([[4.0, 6.0, 28.0, 30.0], [36.0, 34.0, 60.0, 50.0]]), "labels": torch.tensor([0, 3])},
        {"boxes": torch.tensor([[10.0, 12.0, 50.0, 58.0]]), "labels": torch.tensor([2])},
    ]


def _raw_from_targets(targets: list[dict], size: int = 64, confidence: float = 12.0) -> torch.Tensor:
    """The raw output a perfect CenterNet would give: heatmap logits +/- `confidence` at/away from the
    center cells, exact sizes and offsets there."""
    grid = size // 4
    t = center_targets(targets, C, (grid, grid), 4, torch.device("cpu"))
    raw = torch.zeros(len(targets), C + 4, grid, grid)
    raw[:, :C] = torch.where(t["heatmap"] == 1, confidence, -confidence)
    raw[t["batch"], C : C + 2, t["cells"][:, 1], t["cells"][:, 0]] = t["sizes"]
    raw[t["batch"], C + 2 :, t["cells"][:, 1], t["cells"][:, 0]] = t["offsets"]
    return raw


# --------------------------------------------------------------------------- targets, loss, decoding


def test_targets_put_a_unit_peak_at_each_center_and_the_loss_rewards_the_right_output():
    targets = _targets()
    t = center_targets(targets, C, (16, 16), 4, torch.device("cpu"))
    heat = t["heatmap"]
    assert heat.shape == (2, C, 16, 16) and (heat == 1).sum() == 3
    assert heat[0, 0, 4, 4] == 1 and heat[0, 3, 10, 12] == 1 and heat[1, 2, 8, 7] == 1
    assert heat[0, 1].sum() == 0 and 0 < heat[0, 0, 4, 5] < 1  # other classes empty; a Gaussian around the peak
    torch.testing.assert_close(t["sizes"], torch.tensor([[6.0, 6.0], [6.0, 4.0], [10.0, 11.5]]))
    torch.testing.assert_close(t["offsets"], torch.tensor([[0.0, 0.5], [0.0, 0.5], [0.5, 0.75]]))
    perfect = center_loss(_raw_from_targets(targets), targets, C, 4)
    assert perfect < 0.01
    assert center_loss(torch.zeros(2, C + 4, 16, 16), targets, C, 4) > 100 * perfect
    # An image without objects contributes only background terms; a batch without any still trains.
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    raw = torch.zeros(1, C + 4, 16, 16, requires_grad=True)
    loss = center_loss(raw, empty, C, 4)
    loss.backward()
    assert torch.isfinite(loss) and raw.grad is not None


def test_loss_decreases_on_a_tiny_batch():
    torch.manual_seed(0)
    model = build_model("centernet_small", C, CLASSES, input_size=64).train()
    images = torch.randn(2, 3, 64, 64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss = model.loss(model(images), _targets())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0], losses


def test_decode_finds_a_planted_peak_at_the_right_box():
    raw = torch.full((2, C + 4, 16, 16), -10.0)
    raw[:, C:] = 0
    # Image 1, class 2, center cell (x 7, y 5), 6 x 4 cells, offset (0.25, 0.5) -> center (29, 22) px.
    raw[1, 2, 5, 7] = 5.0
    raw[1, C:, 5, 7] = torch.tensor([6.0, 4.0, 0.25, 0.5])
    model = DetectionModel(_meta())
    empty, found = model.postprocess(raw)
    assert isinstance(found, Detections) and len(empty) == 0 and len(found) == 1
    torch.testing.assert_close(found.boxes, torch.tensor([[17.0, 14.0, 41.0, 30.0]]))
    assert found.labels.tolist() == [2] and found.scores.item() == pytest.approx(1 / (1 + math.exp(-5)), abs=1e-6)
    # A neighbour of the peak is suppressed by the 3x3 max-pool; a far cell is its own peak.
    raw[1, 2, 5, 8] = 4.0
    raw[1, 4, 12, 12] = 3.0
    found = model.postprocess(raw)[1]
    assert found.labels.tolist() == [2, 4]
    # The score threshold is an attribute (low by default for mAP).
    model.score_threshold = 0.97
    assert len(model.postprocess(raw)[1]) == 1


def test_postprocess_is_batched_and_boxes_stay_in_the_image():
    torch.manual_seed(0)
    raw = torch.randn(3, C + 4, 16, 16) * 3
    model = DetectionModel(_meta())
    batched = model.postprocess(raw)
    assert len(batched) == 3
    for i, result in enumerate(batched):
        alone = model.postprocess(raw[i : i + 1])[0]
        torch.testing.assert_close(result.boxes, alone.boxes)
        torch.testing.assert_close(result.scores, alone.scores)
        assert torch.equal(result.labels, alone.labels)
        assert 0 < len(result) <= 100 and (result.scores > 0.05).all()
        assert (result.boxes >= 0).all() and (result.boxes <= 64).all()
    boxes, scores, labels, keep = decode_centers(raw, C, 4, k=7)
    assert boxes.shape == (3, 7, 4) and scores.shape == labels.shape == keep.shape == (3, 7)


def test_perfect_output_decodes_to_the_targets_and_scores_map_1():
    targets = _targets()
    detections = DetectionModel(_meta()).postprocess(_raw_from_targets(targets))
    for found, truth in zip(detections, targets, strict=True):
        order = found.labels.argsort()
        torch.testing.assert_close(found.boxes[order], truth["boxes"][truth["labels"].argsort()])
    metric = make_metrics("detection", C, CLASSES, None, "cpu")
    _detection_update(metric, detections, targets)
    values = _detection_values(metric.compute(), CLASSES)
    assert {"map", "map50", "map75", "mar100"} <= values.keys()
    # Per-class AP@0.5 for the classes with ground truth; none for those without.
    assert {k for k in values if k.startswith("ap50_")} == {"ap50_circle", "ap50_square", "ap50_star"}
    assert values["map50"] == pytest.approx(1.0) and values["map"] == pytest.approx(1.0)


def test_config_accepts_the_detection_task():
    assert TrainConfig(task="detection", model="centernet_small").task == "detection"


# --------------------------------------------------------------------------- train, eval, predict


def test_short_training_writes_map50_then_eval_and_predict(shapes_dir, tmp_path):
    from parvis.engine.evaluate import evaluate_checkpoint
    from parvis.engine.loading import load_trained
    from parvis.engine.predict import predict_files
    from parvis.engine.trainer import train

    run = tmp_path / "run"
    cfg = TrainConfig(
        task="detection", model="centernet_small", data=str(shapes_dir), epochs=2, size=64, batch=8,
        lr=3e-3, weight_decay=1e-4, warmup_epochs=0.2, workers=0, out=str(run),
    )  # fmt: skip
    record = train(cfg, quiet=True)
    assert {"val_map", "val_map50", "val_map75", "val_loss"} <= record.keys()
    assert 0 <= record["val_map50"] <= 1 and math.isfinite(record["val_loss"])
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2] and all("val_map50" in r for r in lines)
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["meta"]["task"] == "detection" and best["meta"]["extra"]["output_stride"] == 4
    assert "map50" in best["metrics"]

    metrics, meta = evaluate_checkpoint(run / "best.pt", shapes_dir, workers=0)
    assert meta.task == "detection" and metrics["images"] == 12 and "map50" in metrics

    device = torch.device("cpu")
    files = sorted((shapes_dir / "images" / "val").glob("*.jpg"))[:3]
    model = load_trained(run / "best.pt", device)
    model.score_threshold = 0.0  # an undertrained model: keep every peak so there are boxes to check
    results = predict_files(model, files, tmp_path / "pred", device)
    saved = json.loads((tmp_path / "pred" / "results.json").read_text())
    assert saved == results and len(saved) == 3
    for r in saved:
        assert r["width"] == r["height"] == 64 and r["count"] == len(r["detections"]) >= 1
        box = r["detections"][0]["box"]
        assert 0 <= box[0] <= box[2] <= 64 and 0 <= box[1] <= box[3] <= 64
        assert r["detections"][0]["class_name"] in CLASSES
        assert (tmp_path / "pred" / "overlays" / f"{r['file'].rsplit('/', 1)[-1][:-4]}.jpg").is_file()


# --------------------------------------------------------------------------- exported artifacts


def _sharp_tiny_detector():
    """A random centernet_small whose heatmap logits spread widely, so scores are far apart and the
    top-K / threshold cuts are not decided by float rounding between runtimes."""
    torch.manual_seed(0)
    model = build_model("centernet_small", C, CLASSES, input_size=64).eval()
    with torch.no_grad():
        model.heatmap[-1].weight.mul_(40)
        model.heatmap[-1].bias.zero_()
    return model


@pytest.mark.parametrize("runtime_name", ["onnxruntime", "openvino"])
def test_onnx_artifact_decodes_to_the_eager_detections(tmp_path, runtime_name):
    from parvis.export import export_model
    from parvis.runtimes import as_model, open_runtime

    model = _sharp_tiny_detector()
    path = tmp_path / "centernet.onnx"
    export_model(model, path, "onnx")
    artifact = as_model(open_runtime(path, runtime_name, threads=1))
    assert isinstance(artifact, DetectionModel) and artifact.meta.extra["output_stride"] == 4
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model.postprocess(model(images))
        got = artifact.postprocess(artifact(images))
    assert sum(len(d) for d in expected) > 10
    for e, g in zip(expected, got, strict=True):
        assert len(e) == len(g)
        assert torch.equal(e.labels, g.labels)
        torch.testing.assert_close(g.scores, e.scores, atol=1e-4, rtol=0)
        torch.testing.assert_close(g.boxes, e.boxes, atol=1e-2, rtol=0)


def test_agnostic_nms_keeps_the_best_of_overlapping_boxes_whatever_their_class():
    from parvis.structures import Detections

    boxes = torch.tensor([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 10.0]])
    det = Detections(boxes, torch.tensor([0.5, 0.9, 0.4, 0.3]), torch.tensor([0, 1, 0, 0]), CLASSES,
                     torch.tensor([7, 8, 9, 10]))  # fmt: skip
    kept = det.agnostic_nms(0.6)
    assert kept.boxes.tolist() == [[1, 0, 11, 10], [20, 20, 30, 30]]  # the 0.9 box of class 1 beat class 0's
    assert kept.labels.tolist() == [1, 0] and kept.track_ids.tolist() == [8, 9]
    assert len(det.agnostic_nms(0.95)) == 3  # only the identical pair overlaps that much
