from __future__ import annotations

import json
import os
import pickle
import pickletools
import random
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from parvis.engine import checkpoint as ckpt
from parvis.engine.checkpoint import (
    CheckpointManager,
    capture_rng_state,
    export_safetensors,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from parvis.errors import ParvisError


def temp_files(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def training_state(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    for _ in range(3):
        loss = model(torch.randn(16, 4)).logsumexp(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    return model, optimizer, scheduler


def full_state(model, optimizer, scheduler) -> dict:
    return {
        "model": model.state_dict(),
        "meta": {"task": "classification", "size": 128, "mean": [0.485, 0.456, 0.406], "classes": ["a", "b", "c"]},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": None,
        "ema": None,
        "epoch": 2,
        "step": 3,
        "rng": capture_rng_state(),
        "config": {"lr": 1e-2, "scales": [0.5, 1.0], "clip_grad": None, "dtype": str(torch.bfloat16)},
        "metrics": {"top1": 0.5},
        "best_metric": 0.5,
    }


def draws() -> tuple:
    return random.random(), np.random.rand(3).tolist(), np.random.randn(), torch.rand(3).tolist()


def test_round_trip_model_optimizer_scheduler(tmp_path):
    model, optimizer, scheduler = training_state()
    path = save_checkpoint(tmp_path / "run" / "last.pt", full_state(model, optimizer, scheduler))
    assert path == tmp_path / "run" / "last.pt" and temp_files(path.parent) == []

    state = load_checkpoint(path)
    assert state["format"] == "parvis-checkpoint" and state["version"] == 1
    assert state["epoch"] == 2 and state["step"] == 3 and state["config"]["scales"] == [0.5, 1.0]

    model2, optimizer2, scheduler2 = training_state(seed=1)
    model2.load_state_dict(state["model"])
    optimizer2.load_state_dict(state["optimizer"])
    scheduler2.load_state_dict(state["scheduler"])
    for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert scheduler2.get_last_lr() == scheduler.get_last_lr()
    # The resumed optimizer takes exactly the step the original would.
    x = torch.randn(8, 4)
    for m, opt in ((model, optimizer), (model2, optimizer2)):
        opt.zero_grad()
        m(x).sum().backward()
        opt.step()
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)


def test_checkpoint_is_plain_weights_only_data(tmp_path):
    model, optimizer, scheduler = training_state()
    path = save_checkpoint(tmp_path / "c.pt", full_state(model, optimizer, scheduler))
    # Plain torch.load with weights_only=True, no safe globals registered: nothing pickled but data.
    state = torch.load(path, weights_only=True)
    assert state["format"] == "parvis-checkpoint"
    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    imported = {arg for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}
    assert imported and all(name.startswith(("torch", "collections OrderedDict")) for name in imported), imported


def test_save_does_not_mutate_and_keeps_given_format(tmp_path):
    state = {"model": {}, "epoch": 0}
    save_checkpoint(tmp_path / "a.pt", state)
    assert state == {"model": {}, "epoch": 0}
    save_checkpoint(tmp_path / "b.pt", {"format": "parvis-checkpoint", "version": 1})
    assert load_checkpoint(tmp_path / "b.pt")["version"] == 1


@pytest.mark.parametrize(
    ("value", "where"),
    [
        (np.zeros(3), "checkpoint['metrics']['x']"),
        (np.float32(1.0), "checkpoint['metrics']['x']"),
        ([1, object()], "checkpoint['metrics']['x'][1]"),
        (slice(1, 2), "checkpoint['metrics']['x']"),
    ],
)
def test_refuses_what_weights_only_cannot_load(tmp_path, value, where):
    with pytest.raises(TypeError) as info:
        save_checkpoint(tmp_path / "c.pt", {"metrics": {"x": value}})
    assert where in str(info.value)
    assert not (tmp_path / "c.pt").exists() and temp_files(tmp_path) == []


def test_allowed_plain_types_load_with_weights_only(tmp_path):
    # Everything the pre-save check lets through must load with weights_only=True.
    plain = {
        "s": "x",
        "b": b"\x00",
        "i": 1,
        "f": 1.5,
        "t": True,
        "c": 1j,
        "n": None,
        "dtype": torch.float16,
        "device": torch.device("cpu"),
        "size": torch.Size([2, 3]),
        "tuple": (1, "a"),
        3: [torch.zeros(2), nn.Parameter(torch.ones(1))],
    }
    save_checkpoint(tmp_path / "c.pt", {"plain": plain})
    loaded = load_checkpoint(tmp_path / "c.pt")["plain"]
    assert loaded["dtype"] == torch.float16 and loaded["size"] == torch.Size([2, 3]) and loaded["tuple"] == (1, "a")


def test_rng_round_trip(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    state = capture_rng_state()
    expected = draws()

    save_checkpoint(tmp_path / "rng.pt", {"rng": state})
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    assert draws() != expected

    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert draws() == expected
    restore_rng_state(state)
    assert draws() == expected


def test_rng_state_without_cuda_touches_no_gpu():
    state = capture_rng_state()
    assert set(state) == {"python", "numpy", "torch", "cuda"}
    if not torch.cuda.is_initialized():
        assert state["cuda"] == []


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "last.pt", {"epoch": 1, "model": {"w": torch.ones(3)}})
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        with open(f, "wb") as out:
            out.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # Ctrl-C in the middle of writing

    monkeypatch.setattr(ckpt.torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"epoch": 2, "model": {"w": torch.zeros(3)}})
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert load_checkpoint(path)["epoch"] == 1
    assert temp_files(tmp_path) == []


def test_failed_save_os_error_is_a_parvis_error(tmp_path, monkeypatch):
    def full_disk(obj, f, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", full_disk)
    with pytest.raises(ParvisError, match=r"cannot write .*last\.pt: No space left on device"):
        save_checkpoint(tmp_path / "last.pt", {"epoch": 1})
    assert os.listdir(tmp_path) == []


def test_truncated_checkpoint(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", {"model": {"w": torch.randn(1000)}})
    data = path.read_bytes()
    for cut in (len(data) // 2, 10, 0):
        path.write_bytes(data[:cut])
        with pytest.raises(ParvisError, match=r"checkpoint .*last\.pt is truncated or corrupt"):
            load_checkpoint(path)


def test_not_a_parvis_checkpoint(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "plain.pt")
    with pytest.raises(ParvisError, match=r"plain\.pt is not a parvis checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ParvisError, match=r"list\.pt is not a parvis checkpoint"):
        load_checkpoint(tmp_path / "list.pt")
    (tmp_path / "text.pt").write_text("hello, not a checkpoint at all")
    with pytest.raises(ParvisError, match=r"text\.pt is truncated or corrupt"):
        load_checkpoint(tmp_path / "text.pt")


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"format": "parvis-checkpoint", "version": 1, "x": np.zeros(2)}, tmp_path / "objects.pt")
    with pytest.raises(ParvisError, match=r"objects\.pt holds pickled Python objects \(such as numpy"):
        load_checkpoint(tmp_path / "objects.pt")
    with open(tmp_path / "raw.pt", "wb") as f:
        pickle.dump({"format": "parvis-checkpoint"}, f, protocol=2)
    with pytest.raises(ParvisError, match=r"raw\.pt"):
        load_checkpoint(tmp_path / "raw.pt")


def test_newer_version_refused(tmp_path):
    save_checkpoint(tmp_path / "new.pt", {"version": 99})
    with pytest.raises(ParvisError, match="version 99.*upgrade parvis"):
        load_checkpoint(tmp_path / "new.pt")
    torch.save({"format": "parvis-checkpoint"}, tmp_path / "unversioned.pt")
    with pytest.raises(ParvisError, match=r"unversioned\.pt has no format version"):
        load_checkpoint(tmp_path / "unversioned.pt")


def test_missing_checkpoint(tmp_path):
    with pytest.raises(ParvisError, match=r"checkpoint .*nope\.pt not found"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(ParvisError, match="is a folder"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize(
    ("mode", "values", "bests"),
    [
        ("max", [0.5, 0.4, 0.7, 0.7, float("nan")], [True, False, True, False, False]),
        ("min", [1.0, 1.2, 0.8, 0.9, 0.1], [True, False, True, False, True]),
    ],
)
def test_manager_best_and_last(tmp_path, mode, values, bests):
    manager = CheckpointManager(tmp_path / "run", monitor="score", mode=mode)
    assert manager.best_value is None
    best_so_far = None
    for epoch, (value, is_best) in enumerate(zip(values, bests, strict=True)):
        result = manager.save({"epoch": epoch, "model": {"w": torch.full((2,), float(epoch))}}, {"score": value})
        assert result["is_best"] is is_best
        assert result["last"] == manager.last_path == tmp_path / "run" / "last.pt"
        assert result["best"] == (manager.best_path if is_best else None)
        if is_best:
            best_so_far = (epoch, value)
        assert manager.best_value == best_so_far[1]

        last = load_checkpoint(manager.last_path)
        best = load_checkpoint(manager.best_path)
        assert last["epoch"] == epoch and list(last["metrics"]) == ["score"]
        assert last["best_metric"] == best_so_far[1]
        assert best["epoch"] == best_so_far[0] and best["best_metric"] == best_so_far[1]
    assert temp_files(tmp_path / "run") == []

    # A resumed run starts from the best value recorded in best.pt.
    resumed = CheckpointManager(tmp_path / "run", monitor="score", mode=mode)
    assert resumed.best_value == best_so_far[1]
    worse = best_so_far[1] - 1 if mode == "max" else best_so_far[1] + 1
    assert resumed.save({"epoch": 99}, {"score": worse})["is_best"] is False
    assert load_checkpoint(resumed.best_path)["epoch"] == best_so_far[0]


def test_manager_best_survives_next_last(tmp_path):
    # best.pt may share bytes with last.pt (hard link); rewriting last.pt must not change it.
    manager = CheckpointManager(tmp_path, monitor="acc")
    manager.save({"epoch": 0, "model": {"w": torch.zeros(4)}}, {"acc": 0.9})
    manager.save({"epoch": 1, "model": {"w": torch.ones(4)}}, {"acc": 0.1})
    assert torch.equal(load_checkpoint(manager.best_path)["model"]["w"], torch.zeros(4))
    assert torch.equal(load_checkpoint(manager.last_path)["model"]["w"], torch.ones(4))


def test_manager_unknown_metric_and_mode(tmp_path):
    manager = CheckpointManager(tmp_path, monitor="miou")
    with pytest.raises(ParvisError, match="'miou' .*not among the metrics \\(loss, acc\\)"):
        manager.save({}, {"loss": 1.0, "acc": 0.5})
    assert not manager.last_path.exists()
    with pytest.raises(ParvisError, match="mode"):
        CheckpointManager(tmp_path, monitor="acc", mode="biggest")


def test_export_safetensors_round_trip(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    shared = torch.randn(4, 3)
    state = {
        "embed.weight": shared,
        "head.weight": shared,  # tied weights: same storage
        "conv.weight": torch.randn(3, 4).t(),  # not contiguous
        "bn.num_batches_tracked": torch.tensor(7),
        "half": torch.randn(2, dtype=torch.bfloat16),
    }
    meta = {"task": "classification", "classes": ["a", "b"], "meta": {"size": 128}, "note": "plain"}
    path = export_safetensors(state, tmp_path / "out" / "model.safetensors", metadata=meta)
    assert temp_files(path.parent) == []

    loaded = load_file(path)
    assert set(loaded) == set(state)
    for name, tensor in state.items():
        assert torch.equal(loaded[name], tensor) and loaded[name].dtype == tensor.dtype
    with safe_open(path, framework="pt") as f:
        stored = f.metadata()
    assert stored["task"] == "classification" and stored["note"] == "plain"
    assert json.loads(stored["classes"]) == ["a", "b"] and json.loads(stored["meta"]) == {"size": 128}

    export_safetensors({"w": torch.ones(1)}, tmp_path / "bare.safetensors")
    assert torch.equal(load_file(tmp_path / "bare.safetensors")["w"], torch.ones(1))


def test_export_safetensors_refuses_non_tensors(tmp_path):
    with pytest.raises(TypeError, match="'extra'"):
        export_safetensors({"extra": 3}, tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()
