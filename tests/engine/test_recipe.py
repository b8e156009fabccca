"""recipe=auto: the decisions for small/large, few/many, grey/colour data (unit level, no training), the
config it writes, --recipe FILE and explicit keys overriding it, and --time planning."""

import dataclasses
import math

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from parvis.config import TrainConfig, load_config, parse_duration
from parvis.engine.recipe import DataSurvey, choose, survey_data
from parvis.errors import ParvisError

CPU, GPU = torch.device("cpu"), torch.device("cuda")


def _survey(n=1400, side=32, grey=False, classes=10, generator=None, task="classification", counts=None):
    counts = counts or {str(i): n // classes for i in range(classes)}
    return DataSurvey(task, n, n // 4, counts, side, grey, generator)


def _choices(cfg, survey, device=CPU, given=("task", "data")):
    resolved, choices = choose(cfg, survey, device, given=frozenset(given))
    return resolved, {c.key: c for c in choices}


def test_small_grey_images_keep_their_size_no_flips_mild_crops_and_a_small_stem():
    cfg, c = _choices(TrainConfig(), _survey(side=28, grey=True))
    assert cfg.size == 32 and cfg.stem == "small_s2" and cfg.hflip is False and cfg.crop_scale == (0.6, 1.0)
    assert "1x1" in c["stem"].reason and "mirrored" in c["hflip"].reason
    # A GPU affords the stride-1 stem (the CIFAR recipe's).
    gpu, _ = _choices(TrainConfig(), _survey(side=28, grey=True), GPU)
    assert gpu.stem == "small" and gpu.batch > cfg.batch


def test_large_colour_images_are_capped_on_the_cpu_and_get_flips_and_wider_crops():
    cfg, c = _choices(TrainConfig(), _survey(n=20000, side=500, classes=100))
    assert cfg.size == 128 and "capped at 128 px on the cpu" in c["size"].reason
    assert cfg.stem == "imagenet" and cfg.hflip is True and cfg.crop_scale == (0.6, 1.0)  # a 10-epoch run
    gpu, _ = _choices(TrainConfig(), _survey(n=20000, side=500, classes=100), GPU)
    assert gpu.size == 224
    longer, _ = _choices(TrainConfig(epochs=50), _survey(n=20000, side=500), given=("epochs",))
    longest, _ = _choices(TrainConfig(epochs=300), _survey(n=20000, side=500), given=("epochs",))
    assert longer.crop_scale == (0.35, 1.0) and longest.crop_scale == (0.08, 1.0)


def test_epochs_follow_the_dataset_size_and_batch_fits_tiny_datasets():
    few, _ = _choices(TrainConfig(), _survey(n=40, classes=4))
    many, _ = _choices(TrainConfig(), _survey(n=100_000, classes=10))
    assert few.epochs == 40 and many.epochs == 8
    assert few.batch <= 40 // 8 and few.batch >= 1
    assert math.isclose(few.lr, 2e-3 * math.sqrt(few.batch / 32), rel_tol=1e-2)


def test_fine_tuning_uses_a_lower_backbone_rate_and_freezes_on_few_images():
    base = TrainConfig(model="torchvision:mobilenet_v2", weights="w.pth")
    cfg, c = _choices(base, _survey(n=100, side=256, classes=5))
    assert cfg.lr == 1e-3 and cfg.backbone_lr == 0.1 and cfg.freeze == "backbone"
    assert cfg.size == 224 and cfg.crop_scale == (0.5, 1.0) and "stem" not in c
    big, _ = _choices(base, _survey(n=5000, side=256, classes=5))
    assert big.freeze == "none" and big.backbone_lr == 0.5 and big.epochs == 2


def test_given_keys_are_never_chosen_and_recipe_off_chooses_nothing():
    cfg = load_config(TrainConfig, overrides=["lr=0.01", "hflip=true", "size=48"])
    resolved, choices = choose(cfg, _survey(side=28, grey=True), CPU)
    keys = {c.key for c in choices}
    assert resolved.lr == 0.01 and resolved.hflip is True and resolved.size == 48
    assert not keys & {"lr", "hflip", "size"} and "batch" in keys
    off = load_config(TrainConfig, overrides=["recipe=off"])
    assert choose(off, _survey(), CPU) == (off, [])


def test_the_shapes_data_streams_on_an_accelerator_and_clipping_is_for_detection_only():
    shapes = _survey(n=3200, side=256, classes=5, generator="shapes")
    cpu, c = _choices(TrainConfig(), shapes)
    gpu, _ = _choices(TrainConfig(), shapes, GPU)
    assert cpu.stream is False and "takes cores from the model" in c["stream"].reason and gpu.stream is True
    assert cpu.clip_grad is None
    det, chosen = _choices(TrainConfig(task="detection"), _survey(n=3200, side=256, classes=5, task="detection"))
    assert det.clip_grad == 1.0 and det.batch == 32 and "crop_scale" not in chosen


def test_imbalanced_classes_are_named():
    _, c = _choices(TrainConfig(), _survey(counts={"a": 900, "b": 100}, classes=2, n=1000))
    assert "9.0:1" in c["class balance"].line() and c["label_smoothing"].value == 0.0


def test_survey_reads_sizes_channels_and_the_generator(tmp_path, shapes_dir):
    for label in ("a", "b"):
        (tmp_path / "grey" / "train" / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "grey" / "train" / label / f"{i}.png")
    survey = survey_data(TrainConfig(data=str(tmp_path / "grey")))
    assert (survey.n_train, survey.side, survey.grey, survey.generator) == (6, 28, True, None)
    assert survey.class_counts == {"a": 3, "b": 3}
    shapes = survey_data(TrainConfig(data=str(shapes_dir), task="segmentation"))
    assert shapes.generator == "shapes" and shapes.grey is False and shapes.side == 64


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("5m", 300), ("1h30m", 5400), ("45", 45), ("1.5h", 5400)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5 minutes", "0s", "m", "-3m"])
def test_bad_durations_name_the_key(text):
    with pytest.raises(ParvisError, match="time: must be a .*duration"):
        TrainConfig(time=text)


def test_a_recipe_file_overrides_auto_and_explicit_keys_override_the_file(tmp_path, shapes_dir, capsys):
    from parvis.cli.main import main

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("lr: 0.0005\nhflip: false\ncrop_scale: [0.9, 1.0]\n")
    out = tmp_path / "run"
    code = main(["train", "--task", "classification", "--data", str(shapes_dir), "--out", str(out), "--recipe",
                 str(recipe), "--size", "32", "--workers", "0", "--quiet", "max_steps=1", "epochs=1", "hflip=true",
                 "stream=false"])  # fmt: skip
    assert code == 0
    text = (out / "config.yaml").read_text()
    saved = yaml.safe_load(text)
    assert saved["lr"] == 0.0005 and saved["crop_scale"] == [0.9, 1.0] and saved["hflip"] is True
    auto_lines = [line for line in text.splitlines() if line.startswith("# auto:")]
    assert auto_lines and not any(k in line for line in auto_lines for k in ("auto: lr ", "auto: hflip", "crop_scale"))
    assert any(line.startswith("# auto: batch ") for line in auto_lines)
    # The saved config reloads to the same values (comments are comments).
    reloaded = load_config(TrainConfig, out / "config.yaml")
    assert dataclasses.asdict(reloaded) == saved | {"crop_scale": (0.9, 1.0), "scales": tuple(saved["scales"])}


def _budget_run(monkeypatch, cfg: TrainConfig, budget_s: float, val_batches: int):
    """TimeBudgetHook on a stub trainer (50 steps per epoch) and a fake clock at 1 s per step, run through
    the first epoch's steps: (clock, trainer, hook, the epoch counts it planned)."""
    from types import SimpleNamespace

    from parvis.engine import hooks

    clock, planned = {"t": 0.0}, []
    monkeypatch.setattr(hooks.time, "perf_counter", lambda: clock["t"])
    trainer = SimpleNamespace(cfg=cfg, steps_per_epoch=50, step=0, epoch=0, val_loader=[0] * val_batches,
                              choices=[], dist=SimpleNamespace(world_size=1))  # fmt: skip

    def set_epochs(n):
        planned.append(n)
        trainer.cfg = dataclasses.replace(trainer.cfg, epochs=n)

    trainer.set_epochs = set_epochs
    hook = hooks.TimeBudgetHook(budget_s, quiet=True)
    hook.on_train_start(trainer)
    for step in range(1, 51):
        clock["t"] += 1.0
        trainer.step = step
        hook.on_step_end(trainer, None, 32)
    return clock, trainer, hook, planned


def test_a_time_budget_plans_whole_epochs_from_the_measured_pace(monkeypatch):
    """TimeBudgetHook on a stub trainer and a fake clock: 1 s per step, 50 steps per epoch, 5 s of
    evaluation: a 200 s budget fits 3 epochs after the probe, re-planned to what epoch 1 really cost."""

    clock, trainer, hook, planned = _budget_run(monkeypatch, TrainConfig(time="200s", epochs=9), 200.0, 10)
    clock["t"] += 5.0  # evaluation and checkpoint
    trainer.epoch = 1
    hook.on_epoch_end(trainer)
    # probe: 1 s/step, eval estimated 10 x 1 x 0.4 = 4 s -> 54 s per epoch; 180 s left at step 20 with 34 s
    # to finish epoch 1 -> 1 + int(146 / 54) = 3. Re-plan: 50 + 5 = 55 s per epoch, 145 s left -> 1 + 2 = 3.
    assert planned == [3] and trainer.cfg.epochs == 3
    assert [c.key for c in trainer.choices] == ["epochs"] and "fits time=200s" in trainer.choices[0].reason


def test_the_train_split_is_cached_in_ram_when_it_fits_and_its_crops_allow(monkeypatch):
    import parvis.engine.recipe as recipe

    monkeypatch.setattr(recipe, "available_ram", lambda: 8 << 30)
    cfg, c = _choices(TrainConfig(), _survey(n=4000, side=256, task="segmentation"))
    assert cfg.cache == "ram" and "at 256 px" in c["cache"].reason  # 2 x the 128 px input, the CPU cap
    big, c = _choices(TrainConfig(), _survey(n=200_000, side=500))
    assert big.cache == "none" and "GB" in c["cache"].reason
    monkeypatch.setattr(recipe, "available_ram", lambda: 64 << 20)  # a quarter of 64 MB is too little
    small, _ = _choices(TrainConfig(), _survey(n=4000, side=256))
    assert small.cache == "none"
    monkeypatch.setattr(recipe, "available_ram", lambda: 8 << 30)
    imagenet, c = _choices(TrainConfig(epochs=300), _survey(n=2000, side=256), given=("epochs",))
    assert imagenet.crop_scale == (0.08, 1.0) and imagenet.cache == "none" and "8%" in c["cache"].reason
    given, c = _choices(TrainConfig(cache="none"), _survey(n=4000, side=256), given=("cache",))
    assert given.cache == "none" and "cache" not in c
    streamed, c = _choices(TrainConfig(), _survey(n=4000, side=256, generator="shapes"), GPU)
    assert streamed.stream and "cache" not in c


def test_local_processes_share_the_cache_budget(monkeypatch):
    import parvis.engine.recipe as recipe

    monkeypatch.setattr(recipe, "available_ram", lambda: 4 << 30)  # 1 GB allowed, 800 MB needed
    alone, _ = _choices(TrainConfig(), _survey(n=4000, side=256, task="segmentation"))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # four copies of 800 MB do not fit in 1 GB
    shared, _ = _choices(TrainConfig(), _survey(n=4000, side=256, task="segmentation"))
    assert alone.cache == "ram" and shared.cache == "none"


def test_stereo_pairs_are_cached_whole_when_they_fit_and_evaluated_every_4th_cpu_epoch(monkeypatch):
    import parvis.engine.recipe as recipe
    from parvis.data.cache import cache_side

    monkeypatch.setattr(recipe, "available_ram", lambda: 8 << 30)
    pairs = DataSurvey("stereo", 1600, 400, {"disparity": 1600}, 128, False, None, pixels=256 * 128)
    cfg, c = _choices(TrainConfig(task="stereo"), pairs)
    assert cfg.cache == "ram" and "500 MB" in c["cache"].reason  # 1600 x 32768 px x 10 bytes
    assert cfg.eval_every == 4 and cfg.hflip is False
    kitti = DataSurvey("stereo", 200_000, 400, {"disparity": 1}, 375, False, None, pixels=1242 * 375)
    big, c = _choices(TrainConfig(task="stereo"), kitti)
    assert big.cache == "none" and "GB" in c["cache"].reason
    gpu, _ = _choices(TrainConfig(task="stereo"), pairs, GPU)
    assert gpu.eval_every == 1
    assert cache_side("stereo", 64, 128) == 128 and cache_side("stereo", 64) > 10**6  # never resized


def test_a_time_budget_counts_evaluation_every_nth_epoch_and_one_at_the_end(monkeypatch):
    """As above with eval_every=4 and 40 s of evaluation: the plan charges 10 s of it per epoch and holds
    one evaluation back for the end, so epoch 1 (not evaluated) re-plans with the same shares."""
    cfg = TrainConfig(time="400s", epochs=9, eval_every=4)
    clock, trainer, hook, _ = _budget_run(monkeypatch, cfg, 400.0, 100)
    # probe at step 20: eval 100 x 1 x 0.4 = 40 s; 60 s per epoch; 380 - 40 = 340 s left, 30 s to finish
    # epoch 1 -> 1 + int(310 / 60) = 6
    assert trainer.cfg.epochs == 6
    clock["t"] += 1.0  # checkpoint only: epoch 1 is not evaluated
    trainer.epoch = 1
    hook.on_epoch_end(trainer)
    # re-plan: 51 + 10 = 61 s per epoch; 400 - 51 - 40 = 309 s left -> 1 + 5 = 6
    assert trainer.cfg.epochs == 6
    # The machine slows down: epoch 2 takes 100 s instead of 61; 400 - 151 = 249 s are left for 4 planned
    # epochs, so the plan drops to 2 + int(249 / 100) = 4; after epoch 3 one epoch is left, kept as planned.
    for epoch in (2, 3):
        clock["t"] += 100.0
        trainer.epoch = epoch
        hook.on_epoch_end(trainer)
        assert trainer.cfg.epochs == 4 and "after epoch 2: 100.0 s per epoch" in trainer.choices[-1].reason
