"""Every registered model: forward/backward per precision, postprocess types, metadata, checkpointing.

Plus the registry's own errors and loading weights from local files.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from parvis.errors import ParvisError
from parvis.models import MODELS, ModelMeta, build_model
from parvis.registry import Registry
from parvis.structures import Classification, Detections, SegmentationMask

NUM_CLASSES = 3
BATCH = 2
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


# Small enough to be quick, large enough that HMSA's 0.5x pass still gives a 1x1 map at stride 32.
SIZE = 32


def _batch(model):
    images = torch.randn(BATCH, 3, SIZE, SIZE)
    if model.meta.task == "detection":  # one box per image, the loader's list of dicts
        boxes = torch.tensor([[2.0, 3.0, 20.0, 17.0], [8.0, 8.0, 30.0, 31.0]])
        targets = [{"boxes": boxes[i : i + 1], "labels": torch.tensor([i % NUM_CLASSES])} for i in range(BATCH)]
    elif model.meta.task == "segmentation":
        targets = torch.randint(0, NUM_CLASSES, (BATCH, SIZE, SIZE))
        targets[:, :4] = model.meta.ignore_index  # the ignore label must be accepted by the loss
    else:
        targets = torch.randint(0, NUM_CLASSES, (BATCH,))
    return images, targets


def _first_conv(model) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


# One instance per model for all its cases (pytest groups the tests by this module-scoped parameter).
# No case takes over 2 s on 2 cores at these sizes, so none is marked slow.
# Image models with a loss to train: stereo takes pairs (tests/test_stereo.py); inspection models wrap one
# of these (defect_segmenter) or are fitted without gradients (patchcore): tests/test_inspection.py.
@pytest.fixture(
    scope="module", params=[n for n in MODELS.names() if MODELS.info(n)["task"] not in ("stereo", "inspection")]
)
def model(request):
    torch.manual_seed(0)
    return build_model(request.param, NUM_CLASSES, input_size=SIZE)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_forward_backward(model, precision):
    model.train()
    model.zero_grad(set_to_none=True)
    images, targets = _batch(model)
    dtype = PRECISIONS[precision]
    with torch.autocast("cpu", dtype or torch.bfloat16, enabled=dtype is not None):
        raw = model(images)
        loss = model.loss(raw, targets, label_smoothing=0.1)
    expected = (BATCH, NUM_CLASSES) + (tuple(images.shape[-2:]) if model.meta.task == "segmentation" else ())
    if model.meta.task == "detection":  # heatmap + size + offset channels at stride 4
        expected = (BATCH, NUM_CLASSES + 4, SIZE // 4, SIZE // 4)
    assert tuple(raw.shape) == expected
    assert torch.isfinite(loss)
    loss.backward()
    grad = _first_conv(model).weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_postprocess_types(model):
    model.eval()
    images, _ = _batch(model)
    with torch.no_grad():
        results = model.postprocess(model(images))
    assert len(results) == BATCH
    if model.meta.task == "classification":
        assert all(isinstance(r, Classification) for r in results)
        assert 0 <= results[0].label < NUM_CLASSES and 0 <= results[0].score <= 1
    elif model.meta.task == "detection":
        assert all(isinstance(r, Detections) for r in results)
        assert all(len(r) <= 100 and (r.labels < NUM_CLASSES).all() for r in results)
    else:
        assert all(isinstance(r, SegmentationMask) for r in results)
        assert results[0].mask.shape == images.shape[-2:] and results[0].mask.dtype == torch.int64
    json.dumps([r.to_dict() for r in results])


def test_meta_round_trips(model):
    meta = model.meta
    assert meta.name in MODELS and meta.task == MODELS.info(meta.name)["task"]
    assert meta.num_classes == len(meta.class_names) == NUM_CLASSES
    assert meta.ignore_index == (255 if meta.task == "segmentation" else None)
    assert ModelMeta.from_dict(json.loads(json.dumps(meta.to_dict()))) == meta


def test_grad_checkpointing_same_outputs_and_gradients(model):
    model.train()
    images, targets = _batch(model)
    results = []
    for enable in (False, True):
        model.set_grad_checkpointing(enable)
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same dropout / stochastic-depth draws in both runs
        raw = model(images)
        model.loss(raw, targets).backward()
        results.append((raw.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    model.set_grad_checkpointing(False)
    (out_plain, grads_plain), (out_ckpt, grads_ckpt) = results
    torch.testing.assert_close(out_ckpt, out_plain)
    assert grads_ckpt.keys() == grads_plain.keys()
    for name, grad in grads_plain.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def saved_activation_bytes(model, images) -> int:
    """Bytes of distinct non-parameter storages autograd saves for backward during one forward."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(images)
    return sum(saved.values())


def test_grad_checkpointing_saves_activation_memory():
    torch.manual_seed(0)
    model = build_model("unet_resnet18", NUM_CLASSES, input_size=64).train()
    images = torch.randn(2, 3, 64, 64)
    plain = saved_activation_bytes(model, images)
    model.set_grad_checkpointing(True)
    checkpointed = saved_activation_bytes(model, images)
    assert checkpointed < 0.85 * plain


# --------------------------------------------------------------------------- registry


def test_registered_names():
    classification = [
        "convnet_small", "convnext_tiny", "efficientnet_b0", "mobilenet_v3_large", "resnet18", "resnet34", "resnet50",
    ]  # fmt: skip
    trunks = ["deeplabv3_resnet50", "unet", "unet_resnet18", "unet_resnet34", "unet_resnet50", "unet_small"]
    assert MODELS.names(task="classification") == classification
    assert MODELS.names(family="hmsa") == sorted(f"hmsa_{t}" for t in trunks)
    assert MODELS.names(task="segmentation") == sorted(trunks + [f"hmsa_{t}" for t in trunks])
    assert MODELS.names(task="detection") == [f"centernet_{e}" for e in ("resnet18", "resnet34", "resnet50", "small")]
    assert MODELS.info("hmsa_unet_resnet18") == {"task": "segmentation", "family": "hmsa", "trunk": "unet_resnet18"}


def test_duplicate_registration_raises():
    registry = Registry("model")
    registry.register("a", task="x")(lambda meta: None)
    with pytest.raises(ValueError, match="'a' is already registered"):
        registry.register("a", task="y")(lambda meta: None)
    with pytest.raises(ValueError):
        MODELS.register("resnet18", task="classification")(lambda meta: None)
    assert registry.info("a") == {"task": "x"}


def test_unknown_name_lists_registered_and_suggests():
    with pytest.raises(ParvisError) as err:
        build_model("resnet19", NUM_CLASSES)
    message = str(err.value)
    assert message.startswith("unknown model 'resnet19'") and "did you mean 'resnet18'" in message
    assert "registered: " + ", ".join(MODELS.names()) in message
    with pytest.raises(ParvisError, match="unknown model 'zzz'; registered: centernet_resnet18, "):
        MODELS.get("zzz")


def test_bad_class_names_and_num_classes():
    with pytest.raises(ParvisError, match="2 class names given for 3 classes"):
        build_model("resnet18", 3, class_names=["a", "b"])
    with pytest.raises(ParvisError, match="at least 1"):
        build_model("resnet18", 0)


def test_meta_from_dict_rejects_unknown_keys():
    meta = build_model("resnet18", NUM_CLASSES).meta.to_dict()
    with pytest.raises(ParvisError, match="unknown keys \\['colour'\\]"):
        ModelMeta.from_dict({**meta, "colour": "red"})


# --------------------------------------------------------------------------- weights files


@pytest.fixture(scope="module")
def resnet18_and_images():
    torch.manual_seed(0)
    model = build_model("resnet18", NUM_CLASSES, class_names=["a", "b", "c"]).eval()
    return model, torch.randn(2, 3, 32, 32)


@pytest.mark.parametrize("layout", ["raw", "checkpoint", "state_dict", "safetensors"])
def test_weights_load_to_identical_outputs(tmp_path, resnet18_and_images, layout):
    model, images = resnet18_and_images
    state = model.state_dict()
    path = tmp_path / ("w.safetensors" if layout == "safetensors" else "w.pt")
    if layout == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        wrapped = {"raw": state, "checkpoint": {"model": state, "meta": model.meta.to_dict()}}
        torch.save(wrapped.get(layout, {"state_dict": state}), path)
    loaded = build_model("resnet18", NUM_CLASSES, weights=path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))


def test_mismatched_head_names_file_keys_and_class_count(tmp_path, resnet18_and_images):
    model, _ = resnet18_and_images
    path = tmp_path / "three_classes.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(ParvisError) as err:
        build_model("resnet18", 5, weights=path)
    message = str(err.value)
    assert str(path) in message and "net.fc.weight" in message and "net.fc.bias" in message
    assert "--num-classes 3" in message


def test_weights_of_another_model_are_refused(tmp_path, resnet18_and_images):
    model, _ = resnet18_and_images
    path = tmp_path / "resnet18.pt"
    torch.save({"model": model.state_dict()}, path)
    with pytest.raises(ParvisError, match="does not match mobilenet_v3_large"):
        build_model("mobilenet_v3_large", NUM_CLASSES, weights=path)


def test_missing_or_broken_weights_file(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(ParvisError, match=f"{missing} does not exist"):
        build_model("resnet18", NUM_CLASSES, weights=missing)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(ParvisError, match="broken.pt: cannot read weights"):
        build_model("resnet18", NUM_CLASSES, weights=broken)


# --------------------------------------------------------------------------- result types


def test_result_types_to_dict():
    c = Classification(2, 0.7, torch.tensor([0.1, 0.2, 0.7]), ["a", "b", "c"]).to_dict()
    assert c["class_name"] == "c" and [t["label"] for t in c["top5"]] == [2, 1, 0]
    mask = torch.tensor([[0, 1], [1, 255]])
    s = SegmentationMask(mask, ["bg", "fg"]).to_dict()
    assert s["class_shares"] == {"bg": 0.25, "fg": 0.5} and s["unlabeled_share"] == 0.25
    d = Detections(torch.tensor([[0.0, 0, 2, 2]]), torch.tensor([0.9]), torch.tensor([1]), ["a", "b"])
    assert len(d) == 1 and d.to_dict()["detections"][0]["class_name"] == "b"
    assert math.isclose(d.to_dict()["detections"][0]["score"], 0.9, rel_tol=1e-6)
    with pytest.raises(ValueError, match="labels must be"):
        Detections(torch.zeros(2, 4), torch.zeros(2), torch.zeros(3, dtype=torch.int64), [])
