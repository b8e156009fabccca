from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import pytest
import yaml

from parvis.config import TrainConfig, config_to_dict, load_config, save_config
from parvis.errors import ParvisError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@dataclasses.dataclass
class Small:
    n: int = 1
    x: float = 0.5
    flag: bool = False
    name: str = "a"
    maybe: int | None = None
    ints: list[int] = dataclasses.field(default_factory=lambda: [1])
    pair: tuple[int, str] = (0, "z")
    mode: Literal["fast", "slow"] = "fast"


def test_defaults():
    cfg = load_config(TrainConfig)
    assert cfg == TrainConfig()
    assert cfg.lr == 1e-3 and cfg.scales == (0.5, 1.0) and cfg.workers is None and cfg.clip_grad == 1.0


def test_yaml(tmp_path):
    path = write(tmp_path, "epochs: 3\nlr: 1e-3\nscales: [1, 2]\nclip_grad: null\nema: yes\nprecision: bf16\n")
    cfg = load_config(TrainConfig, path)
    # `1e-3` is text to YAML (no dot); it must still become the float.
    assert cfg.epochs == 3 and cfg.lr == 0.001 and isinstance(cfg.lr, float)
    assert cfg.scales == (1.0, 2.0) and all(isinstance(s, float) for s in cfg.scales)
    assert cfg.clip_grad is None and cfg.ema is True and cfg.precision == "bf16"


def test_empty_yaml_keeps_defaults(tmp_path):
    assert load_config(TrainConfig, write(tmp_path, "# nothing\n")) == TrainConfig()


def test_precedence(tmp_path):
    path = write(tmp_path, "epochs: 2\nbatch: 4\nsize: 64\nseed: 7\n")
    cfg = load_config(TrainConfig, path, overrides=["size=96"], values={"batch": 8, "size": 80})
    assert cfg.epochs == 2  # yaml over default
    assert cfg.seed == 7
    assert cfg.batch == 8  # values over yaml
    assert cfg.size == 96  # overrides over values
    assert cfg.lr == TrainConfig.lr  # untouched default
    assert load_config(TrainConfig, path, values={"epochs": 5}).epochs == 5


def test_later_override_wins_and_dashes():
    cfg = load_config(TrainConfig, overrides=["epochs=2", "epochs=4", "weight-decay=0.1"])
    assert cfg.epochs == 4 and cfg.weight_decay == 0.1


@pytest.mark.parametrize(
    ("override", "field", "expected"),
    [
        ("epochs=12", "epochs", 12),
        ("lr=1e-3", "lr", 0.001),
        ("lr=3", "lr", 3.0),
        ("weight_decay=0.01", "weight_decay", 0.01),
        ("model=convnext_tiny", "model", "convnext_tiny"),
        ("ema=true", "ema", True),
        ("ema=Yes", "ema", True),
        ("ema=1", "ema", True),
        ("ema=false", "ema", False),
        ("ema=no", "ema", False),
        ("ema=0", "ema", False),
        ("clip_grad=none", "clip_grad", None),
        ("clip_grad=null", "clip_grad", None),
        ("clip_grad=2.5", "clip_grad", 2.5),
        ("workers=0", "workers", 0),
        ("workers=None", "workers", None),
        ("weights=none", "weights", None),
        ("weights=runs/a/best.pt", "weights", "runs/a/best.pt"),
        ("max_steps=5", "max_steps", 5),
        ("scales=0.5,1.0,2.0", "scales", (0.5, 1.0, 2.0)),
        ("scales=1", "scales", (1.0,)),
        ("scales=[0.75, 1.5]", "scales", (0.75, 1.5)),
        ("optimizer=sgd", "optimizer", "sgd"),
        ("precision=FP16", "precision", "fp16"),
        ("task=segmentation", "task", "segmentation"),
    ],
)
def test_override_coercion(override, field, expected):
    value = getattr(load_config(TrainConfig, overrides=[override]), field)
    assert value == expected and type(value) is type(expected)


def test_coercion_of_lists_tuples_and_literals():
    cfg = load_config(Small, overrides=["ints=1,2,3", "pair=4,b", "mode=slow", "maybe=3", "x=2"])
    assert cfg.ints == [1, 2, 3] and cfg.pair == (4, "b") and cfg.mode == "slow" and cfg.maybe == 3
    assert cfg.x == 2.0 and isinstance(cfg.x, float)
    assert load_config(Small, values={"ints": (5, 6)}).ints == [5, 6]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("epochs=ten", "epochs: expected an integer, got 'ten' (from command line)"),
        ("epochs=1.5", "epochs: expected an integer, got '1.5'"),
        ("lr=fast", "lr: expected a number, got 'fast'"),
        ("ema=maybe", "ema: expected true or false, got 'maybe'"),
        ("optimizer=adam", "optimizer: expected one of 'adamw', 'sgd', got 'adam'"),
        ("scales=0.5,big", "scales: expected a list of numbers"),
        ("clip_grad=lots", "clip_grad: expected a number or none, got 'lots'"),
    ],
)
def test_override_wrong_type(override, expected):
    with pytest.raises(ParvisError) as info:
        load_config(TrainConfig, overrides=[override])
    assert expected in str(info.value)


def test_yaml_wrong_type_names_key_and_file(tmp_path):
    path = write(tmp_path, "epochs: ten\n", "x.yaml")
    with pytest.raises(ParvisError, match=r"epochs: expected an integer, got 'ten' \(from .*x\.yaml\)"):
        load_config(TrainConfig, path)
    # YAML types are checked too: no silent bool -> int or number -> string.
    with pytest.raises(ParvisError, match="epochs: expected an integer, got True"):
        load_config(TrainConfig, write(tmp_path, "epochs: true\n"))
    with pytest.raises(ParvisError, match="model: expected a string, got 18"):
        load_config(TrainConfig, write(tmp_path, "model: 18\n"))
    with pytest.raises(ParvisError, match="scales: expected a list of numbers"):
        load_config(TrainConfig, write(tmp_path, "scales: {a: 1}\n"))


def test_values_wrong_type_names_command_line():
    with pytest.raises(ParvisError, match=r"batch: expected an integer, got 'x' \(from command line\)"):
        load_config(TrainConfig, values={"batch": "x"})


def test_unknown_key_in_yaml(tmp_path):
    path = write(tmp_path, "epochs: 2\nlrr: 0.1\n", "recipe.yaml")
    with pytest.raises(ParvisError) as info:
        load_config(TrainConfig, path)
    message = str(info.value)
    assert "'lrr'" in message and "recipe.yaml" in message and "did you mean 'lr'?" in message


def test_unknown_key_in_override_and_values():
    with pytest.raises(ParvisError, match=r"unknown key 'epoch' \(from command line\); did you mean 'epochs'\?"):
        load_config(TrainConfig, overrides=["epoch=3"])
    with pytest.raises(ParvisError, match=r"unknown key 'batch_size' \(from command line\); did you mean 'batch'\?"):
        load_config(TrainConfig, values={"batch_size": 3})
    with pytest.raises(ParvisError, match="unknown key 'zzzzzz'.*valid keys: task, model"):
        load_config(TrainConfig, overrides=["zzzzzz=1"])


def test_override_without_equals():
    with pytest.raises(ParvisError, match="'epochs' .* is not key=value"):
        load_config(TrainConfig, overrides=["epochs"])


def test_invalid_yaml(tmp_path):
    path = write(tmp_path, "epochs: [1, 2\nlr: 3\n", "broken.yaml")
    with pytest.raises(ParvisError, match=r"broken\.yaml is not valid YAML: .*line"):
        load_config(TrainConfig, path)


@pytest.mark.parametrize("text", ["- epochs: 3\n", "just text\n", "42\n"])
def test_non_mapping_yaml(tmp_path, text):
    with pytest.raises(ParvisError, match=r"cfg\.yaml must be a mapping"):
        load_config(TrainConfig, write(tmp_path, text))


def test_missing_and_unreadable_yaml(tmp_path):
    with pytest.raises(ParvisError, match=r"nope\.yaml not found"):
        load_config(TrainConfig, tmp_path / "nope.yaml")
    with pytest.raises(ParvisError, match="cannot read config file"):
        load_config(TrainConfig, tmp_path)  # a folder
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"model: caf\xe9\n")
    with pytest.raises(ParvisError, match=r"cannot read config file .*latin1\.yaml"):
        load_config(TrainConfig, bad)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("epochs=0", "epochs: must be at least 1, got 0"),
        ("size=8", "size: must be at least 16"),
        ("batch=0", "batch: must be at least 1"),
        ("lr=0", "lr: must be greater than 0"),
        ("lr=-1e-3", "lr: must be greater than 0"),
        ("lr=nan", "lr: must be greater than 0"),
        ("grad_accum=0", "grad_accum: must be at least 1"),
        ("label_smoothing=1", "label_smoothing: must be in [0, 1)"),
        ("label_smoothing=-0.1", "label_smoothing: must be in [0, 1)"),
        ("ema_decay=1", "ema_decay: must be in (0, 1)"),
        ("ema_decay=0", "ema_decay: must be in (0, 1)"),
        ("clip_grad=0", "clip_grad: must be greater than 0 or none"),
        ("workers=-1", "workers: must be at least 0 or none"),
        ("crop_scale=0.5,0.2", "crop_scale: must be two fractions"),
        ("crop_scale=0,1", "crop_scale: must be two fractions"),
        ("crop_scale=0.5,1,1", "crop_scale: must be two fractions"),
    ],
)
def test_validation(override, key):
    with pytest.raises(ParvisError) as info:
        load_config(TrainConfig, overrides=[override])
    assert key in str(info.value) and "(from command line)" in str(info.value)


def test_crop_scale_parses_from_command_line_and_yaml(tmp_path):
    assert load_config(TrainConfig, overrides=["crop_scale=0.5,1"]).crop_scale == (0.5, 1.0)
    assert load_config(TrainConfig, write(tmp_path, "crop_scale: [0.6, 1.0]\n")).crop_scale == (0.6, 1.0)
    assert load_config(TrainConfig).crop_scale is None


def test_validation_names_yaml_source(tmp_path):
    with pytest.raises(ParvisError, match=r"epochs: must be at least 1, got 0 \(from .*cfg\.yaml\)"):
        load_config(TrainConfig, write(tmp_path, "epochs: 0\n"))
    with pytest.raises(ParvisError, match="batch: must be at least 1"):
        TrainConfig(batch=0)  # constructing directly validates too


def test_save_config_round_trip(tmp_path):
    cfg = load_config(
        TrainConfig,
        overrides=["lr=1e-5", "scales=0.25,1", "clip_grad=none", "task=segmentation", "ema=true", "workers=3"],
    )
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert path.exists() and not list(path.parent.glob("*.tmp"))
    data = yaml.safe_load(path.read_text())
    assert data["scales"] == [0.25, 1.0] and data["clip_grad"] is None
    assert load_config(TrainConfig, path) == cfg


def test_config_to_dict():
    data = config_to_dict(TrainConfig())
    assert list(data) == [f.name for f in dataclasses.fields(TrainConfig)]
    assert data["scales"] == [0.5, 1.0] and isinstance(data["scales"], list)
    with pytest.raises(TypeError):
        config_to_dict(TrainConfig)


@pytest.mark.parametrize("name", ["classification.yaml", "segmentation.yaml", "detection.yaml"])
def test_recipes_load(name):
    """The committed recipes are the demo's runs from scratch (the classifier and detector without the
    segmenter's encoder): its model, size and epochs, everything else recipe=auto."""
    from parvis.demo import DEMO_TASKS

    cfg = load_config(TrainConfig, CONFIGS / name)
    spec = DEMO_TASKS[cfg.task]
    spec = {**spec, **spec.get("scratch", {})}
    assert cfg.task == name.removesuffix(".yaml") and cfg.recipe == "auto"
    assert (cfg.model, cfg.size, cfg.epochs) == (spec["model"], spec["size"], spec["epochs"])
