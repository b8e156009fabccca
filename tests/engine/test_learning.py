"""Training that learns: the streamed shapes data, small-input stems, fine-tuning with a frozen or
slower backbone, a short real-data run (scikit-learn's digits) that clears a stated floor, what
--resume says, and the TensorBoard / MLflow logs."""

import json
import subprocess
import sys

import pytest
import torch
import torchvision

from benchmarks.datasets import write_digits
from parvis.cli.main import main
from parvis.config import TrainConfig
from parvis.data.loader import build_loader, set_epoch
from parvis.data.stream import ShapesStream
from parvis.data.transforms import build_transform
from parvis.engine.trainer import build_trainer, head_parameter_names


def _first_batches(seed: int, epochs=(0, 1)) -> list[torch.Tensor]:
    stream = ShapesStream("classification", 16, 32, seed=seed, transform=build_transform("classification", True, 32))
    torch.manual_seed(123)  # the transform's randomness comes from the loader's seeded generator
    loader = build_loader(stream, 4, train=True, workers=0, seed=seed, device=torch.device("cpu"))
    out = []
    for epoch in epochs:
        set_epoch(loader, epoch)
        torch.manual_seed(1000 + epoch)
        batch = next(iter(loader))
        out.append((batch.images.clone(), batch.targets.clone()))
    return out


def test_the_stream_is_deterministic_for_a_seed_and_new_every_epoch():
    a0, a1 = _first_batches(0)
    b0, b1 = _first_batches(0)
    c0, _ = _first_batches(5)
    assert torch.equal(a0[0], b0[0]) and torch.equal(a1[0], b1[0]) and torch.equal(a0[1], b0[1])
    assert not torch.equal(a0[0], a1[0])  # epoch 2 draws other scenes
    assert not torch.equal(a0[0], c0[0])  # another seed, another stream


def test_the_stream_renders_every_task_in_the_readers_form():
    seg = ShapesStream("segmentation", 4, 48)
    image, mask = seg[7]
    assert image.shape == (3, 48, 48) and mask.shape == (48, 48) and seg.classes[0] == "background"
    det = ShapesStream("detection", 4, 48)
    image, target = det[7]
    assert target["boxes"].shape[1] == 4 and len(target["labels"]) == len(target["boxes"])
    assert int(target["labels"].max()) < 5


def test_stream_true_on_a_folder_the_generator_did_not_make_is_one_clear_error(tmp_path):
    digits = write_digits(tmp_path / "digits")
    with pytest.raises(Exception, match="stream=true: .* was not made by `parvis data synth`"):
        build_trainer(TrainConfig(data=str(digits), out=str(tmp_path / "run"), stream=True, workers=0), quiet=True)


@pytest.mark.slow
def test_a_small_stem_resnet_trains_and_exports_with_parity(shapes_dir, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--task", "classification", "--model", "resnet18", "--data", str(shapes_dir), "--out", str(out),
            "--size", "32", "--epochs", "1", "--workers", "0", "--quiet", "stem=small", "stream=false"]  # fmt: skip
    assert main(args) == 0
    state = torch.load(out / "best.pt", weights_only=True)
    assert state["meta"]["extra"]["stem"] == "small" and state["model"]["net.conv1.weight"].shape[-1] == 3
    assert main(["export", str(out / "best.pt"), "--out", str(tmp_path / "m.onnx")]) == 0  # export checks parity


@pytest.fixture(scope="module")
def pretrained_file(tmp_path_factory):
    """A torchvision resnet18 state dict with a 1000-class head: stands in for ImageNet weights."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18-imagenet.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


@pytest.mark.slow
def test_fine_tuning_replaces_the_head_and_freezes_then_unfreezes_the_backbone(shapes_dir, tmp_path, pretrained_file):
    cfg = TrainConfig(task="classification", model="torchvision:resnet18", weights=str(pretrained_file),
                      data=str(shapes_dir), out=str(tmp_path / "run"), size=32, batch=8, epochs=2, workers=0,
                      freeze="backbone", freeze_epochs=1, stream=False, precision="fp32")  # fmt: skip
    trainer = build_trainer(cfg, quiet=True)
    model = trainer.model
    head = head_parameter_names(model)
    assert head == {"net.fc.weight", "net.fc.bias"}
    backbone_groups = [g for g in trainer.optimizer.param_groups if g["backbone"]]
    assert backbone_groups and all(g["lr"] == pytest.approx(0.0) for g in backbone_groups)
    file = torch.load(pretrained_file, weights_only=True)
    snapshots = []

    class Snap:
        def on_train_start(self, t): ...
        def on_step_end(self, t, loss, images): ...
        def on_train_end(self, t): ...
        def on_epoch_end(self, t):
            snapshots.append({k: v.detach().clone() for k, v in t.model.state_dict().items()})

    trainer.hooks.append(Snap())
    try:
        trainer.fit()
    finally:
        trainer.close()
    after_frozen, after_free = snapshots
    weights = [k for k, v in file.items() if v.is_floating_point() and "running" not in k and not k.startswith("fc.")]
    assert all(torch.equal(after_frozen[f"net.{k}"], file[k]) for k in weights)  # epoch 1: backbone held
    assert after_frozen["net.fc.weight"].shape == (5, 512)  # the new head
    assert any(not torch.equal(after_free[f"net.{k}"], file[k]) for k in weights)  # epoch 2: it learns


@pytest.mark.slow
def test_digits_from_the_defaults_clear_a_floor(tmp_path, capsys):
    """scikit-learn's 8x8 digits as 32 px grey PNGs (80/20): `parvis train` with no recipe flags,
    shortened to 3 epochs for the test. Stated floor 0.90 (measured 0.964 and 0.969 in two 3-epoch runs; the full
    default run is in benchmarks/results/learn-*)."""
    digits = write_digits(tmp_path / "digits")
    out = tmp_path / "run"
    assert main(["train", "--task", "classification", "--data", str(digits), "--out", str(out), "--epochs", "3"]) == 0
    printed = capsys.readouterr().out
    assert "auto: stem small_s2" in printed and "auto: hflip false" in printed
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["val_top1"] >= 0.90


@pytest.mark.slow
def test_resume_says_what_it_resumed_on_its_first_line(shapes_dir, tmp_path):
    args = [sys.executable, "-m", "parvis", "train", "--task", "classification", "--data", str(shapes_dir),
            "--out", str(tmp_path / "run"), "--size", "32", "--workers", "0", "stream=false"]  # fmt: skip
    subprocess.run([*args, "--epochs", "1"], check=True, capture_output=True, timeout=300)
    done = subprocess.run([*args, "--epochs", "2", "--resume"], check=True, capture_output=True, text=True, timeout=300)
    first = done.stdout.splitlines()[0]
    assert first.startswith(f"resumed from {tmp_path / 'run' / 'last.pt'}: epoch 1 of 2 done, step ")
    assert "continuing with epoch 2" in first


@pytest.mark.slow
def test_tensorboard_and_mlflow_get_the_config_auto_choices_and_metrics(shapes_dir, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--task", "classification", "--data", str(shapes_dir), "--out", str(out), "--size", "32",
            "--epochs", "2", "--workers", "0", "--quiet", "log=tensorboard,mlflow", "stream=false"]  # fmt: skip
    assert main(args) == 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert len(events.Scalars("val/top1")) == 2 and events.Scalars("train/loss")
    import mlflow

    mlflow.set_tracking_uri((out / "mlruns").resolve().as_uri())
    runs = mlflow.search_runs(experiment_names=["parvis"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["model"] == "resnet18" and "auto.batch" in run.data.params
    assert run.data.metrics["val_top1"] >= 0


def test_an_unknown_or_missing_logger_is_one_clear_error(shapes_dir, tmp_path):
    with pytest.raises(Exception, match="log=wandb: 'wandb' is unknown; choose from files, tensorboard, mlflow"):
        build_trainer(TrainConfig(data=str(shapes_dir), out=str(tmp_path / "r"), log="wandb", workers=0), quiet=True)


def test_top1_top5_and_per_class_accuracy_are_computed_apart():
    """torchmetrics' compute groups once shared one state between them: top5 came out equal to top1."""
    from parvis.engine.evaluate import make_metrics

    names = [f"c{i}" for i in range(10)]
    metrics = make_metrics("classification", 10, names, None, torch.device("cpu"))
    logits = torch.zeros(4, 10)
    logits[:, 9] = 2.0  # every image: class 9 first
    logits[torch.arange(4), torch.tensor([0, 1, 2, 9])] = 1.0  # the true class second, except the last
    logits[3, 9] = 2.0
    # A first batch where top-1 and top-5 agree (all right): torchmetrics grouped metrics whose states
    # were equal after the first update and computed them from one state from then on.
    metrics.update(torch.eye(10)[:4] * 5, torch.tensor([0, 1, 2, 3]))
    metrics.update(logits, torch.tensor([0, 1, 2, 9]))
    values = metrics.compute()
    assert float(values["top1"]) == pytest.approx(5 / 8) and float(values["top5"]) == pytest.approx(1.0)
    assert values["acc"].tolist()[9] == pytest.approx(1.0) and values["acc"].tolist()[0] == pytest.approx(0.5)
