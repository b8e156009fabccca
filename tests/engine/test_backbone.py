"""--weights-backbone: a model starts from another parvis model's encoder (the demo's classifier and
detector from its segmenter), the rest fresh; the loaded encoder learns at the fine-tuning fraction and
the new layers at the full rate; a file whose encoder does not fit is one clear error."""

import math

import pytest
import torch

from parvis.cli.main import main
from parvis.config import ConfigValueError, TrainConfig
from parvis.engine.recipe import DataSurvey, choose
from parvis.engine.trainer import build_trainer, head_parameter_names
from parvis.errors import ParvisError
from parvis.models.build import build_model, load_backbone

CLASSES = ["circle", "ring", "square", "star", "triangle"]


@pytest.fixture(scope="module")
def segmenter_file(tmp_path_factory):
    """A unet_small checkpoint in parvis's format (model + meta), random weights standing for trained ones."""
    torch.manual_seed(0)
    model = build_model("unet_small", 6)
    path = tmp_path_factory.mktemp("backbone") / "unet_small.pt"
    torch.save({"model": model.state_dict(), "meta": {"num_classes": 6}}, path)
    return path


def test_the_encoder_levels_both_models_have_are_loaded_and_nothing_else(segmenter_file):
    source = torch.load(segmenter_file, weights_only=True)["model"]
    torch.manual_seed(1)
    model = build_model("convnet_small", 5, CLASSES)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loaded = load_backbone(model, segmenter_file)
    after = model.state_dict()
    # unet_small's four levels (16-128) are convnet_small's first four; its fifth (256) and the head stay.
    assert loaded and all(k.startswith("encoder.stages.") and k.split(".")[2] in "0123" for k in loaded)
    assert all(torch.equal(after[k], source[k]) for k in loaded)
    fresh = [k for k in after if k not in loaded]
    assert any(k.startswith("encoder.stages.4.") for k in fresh) and "fc.weight" in fresh
    assert all(torch.equal(after[k], before[k]) for k in fresh)
    # And into a detector's encoder the same way.
    assert load_backbone(build_model("centernet_small", 5, CLASSES), segmenter_file) == loaded


def test_an_encoder_of_other_widths_or_none_at_all_is_one_clear_error(tmp_path, segmenter_file):
    wide = tmp_path / "unet.pt"
    torch.save(build_model("unet", 6).state_dict(), wide)  # widths 32-512
    with pytest.raises(ParvisError, match=r"unet\.pt: its encoder does not fit convnet_small's .*tensors differ"):
        load_backbone(build_model("convnet_small", 5), wide)
    other = tmp_path / "resnet.pt"
    torch.save(build_model("unet_resnet18", 6).state_dict(), other)  # a ResNet encoder: no key in common
    with pytest.raises(ParvisError, match=r"resnet\.pt: no encoder tensor of it fits convnet_small"):
        load_backbone(build_model("convnet_small", 5), other)
    with pytest.raises(ParvisError, match="has no parvis encoder to load into"):
        load_backbone(build_model("resnet18", 5), segmenter_file)
    with pytest.raises(ConfigValueError, match="weights_backbone"):
        TrainConfig(weights="a.pt", weights_backbone="b.pt")


def test_auto_trains_the_new_layers_at_the_scratch_rate_and_the_encoder_slower():
    survey = DataSurvey("detection", 3200, 800, {c: 600 for c in CLASSES}, 256, False, "shapes")
    given = frozenset({"task", "model", "size", "weights_backbone"})
    base = TrainConfig(task="detection", model="centernet_small", weights_backbone="s.pt", size=96)
    cfg, choices = choose(base, survey, torch.device("cpu"), given=given)
    assert math.isclose(cfg.lr, 2e-3) and cfg.backbone_lr == 0.5 and cfg.freeze == "none"
    assert cfg.epochs == 2 and "a loaded encoder" in next(c.reason for c in choices if c.key == "lr")


def test_a_run_from_a_backbone_says_so_and_groups_its_learning_rates(shapes_dir, segmenter_file, tmp_path, capsys):
    cfg = TrainConfig(task="classification", model="convnet_small", weights_backbone=str(segmenter_file),
                      data=str(shapes_dir), out=str(tmp_path / "run"), size=32, batch=8, epochs=1, workers=0,
                      stream=False, precision="fp32", lr=1e-3, backbone_lr=0.5)  # fmt: skip
    trainer = build_trainer(cfg, quiet=True)
    try:
        loaded = trainer.model.backbone_names
        assert "loaded 48 of the 60 encoder tensors of convnet_small" in capsys.readouterr().out
        head = head_parameter_names(trainer.model)
        assert "fc.weight" in head and any(k.startswith("encoder.stages.4.") for k in head) and not head & loaded
        names = {id(p): n for n, p in trainer.model.named_parameters()}
        for group in trainer.optimizer.param_groups:
            expected = 0.5e-3 if group["backbone"] else 1e-3
            assert group["initial_lr"] == pytest.approx(expected)
            assert all((names[id(p)] in loaded) == group["backbone"] for p in group["params"])
    finally:
        trainer.close()


def test_the_cli_trains_from_a_backbone_and_the_checkpoint_names_it(shapes_dir, segmenter_file, tmp_path, capsys):
    out = tmp_path / "det"
    args = ["train", "--task", "detection", "--model", "centernet_small", "--data", str(shapes_dir), "--out", str(out),
            "--weights-backbone", str(segmenter_file), "--size", "64", "--epochs", "1", "--workers", "0",
            "stream=false", "max_steps=2"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "(a loaded encoder, the rest new" in printed and "auto: backbone_lr 0.1 (fine-tuning on few" in printed
    meta = torch.load(out / "best.pt", weights_only=True)["meta"]
    assert meta["extra"]["weights_backbone"] == str(segmenter_file)
    assert main(["eval", str(out / "best.pt"), "--data", str(shapes_dir)]) == 0  # rebuilds without the file


def test_a_missing_file_names_the_flag_and_a_wrapped_segmenter_loads_its_encoder(segmenter_file, tmp_path, capsys):
    with pytest.raises(ParvisError, match=r"--weights-backbone .*nope\.pt: no such file"):
        load_backbone(build_model("convnet_small", 5), tmp_path / "nope.pt")
    # Supervised inspection wraps a segmenter (parameters under net.): the backbone loads into it first.
    parts = tmp_path / "parts"
    assert main(["data", "synth", "--task", "inspection", "--out", str(parts), "--n", "24", "--size", "64"]) == 0
    cfg = TrainConfig(task="inspection", model="unet_small", data=str(parts), out=str(tmp_path / "run"), size=64,
                      batch=4, epochs=1, workers=0, weights_backbone=str(segmenter_file), lr=1e-3,
                      backbone_lr=0.5)  # fmt: skip
    trainer = build_trainer(cfg, quiet=True)
    try:
        source = torch.load(segmenter_file, weights_only=True)["model"]
        state = trainer.model.state_dict()
        assert trainer.model.backbone_names and all(n.startswith("net.encoder.") for n in trainer.model.backbone_names)
        assert all(torch.equal(state[n], source[n[4:]]) for n in trainer.model.backbone_names)
        low, high = sorted({round(g["initial_lr"], 8) for g in trainer.optimizer.param_groups})
        assert low == pytest.approx(high * trainer.cfg.backbone_lr) and trainer.cfg.backbone_lr < 1
    finally:
        trainer.close()
