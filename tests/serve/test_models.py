"""What `parvis serve` accepts as models, and the one-line errors for what it does not."""

from __future__ import annotations

import shutil

import pytest

from parvis.cli.main import main
from parvis.errors import ParvisError
from parvis.serve.models import ModelConfig, resolve_specs


def test_repository_specs_take_model_yaml_over_flag_defaults(repository):
    specs = {s.name: s.config for s in resolve_specs([str(repository)], ModelConfig(max_batch_size=8, instances=2))}
    assert set(specs) == {"clf", "seg", "slow", "stereo"}
    assert specs["clf"].max_batch_size == 4 and specs["clf"].max_queue_delay_ms == 2.0  # from its model.yaml
    assert specs["clf"].instances == 2  # not in the file: the flag's value
    assert specs["seg"].max_batch_size == 8
    assert specs["clf"].source.endswith("clf/best.pt")


def test_single_files_folders_and_registered_names(repository):
    specs = resolve_specs([str(repository / "clf" / "best.pt"), str(repository / "seg"), "resnet18"], ModelConfig())
    assert [s.name for s in specs] == ["best", "seg", "resnet18"]
    named = resolve_specs([f"shapes={repository / 'clf' / 'best.pt'}", "r18=resnet18"], ModelConfig())
    assert [(s.name, s.config.source) for s in named] == [("shapes", str(repository / "clf" / "best.pt")),
                                                          ("r18", "resnet18")]  # fmt: skip


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda r, t: ["/no/such/model.pt"], "no such file or folder, and not a model name"),
        (lambda r, t: [str(r / "clf" / "model.yaml")], "not a model file"),
        (lambda r, t: [str(r / "clf" / "best.pt"), str(r / "seg" / "best.pt")], "two models are named 'best'"),
        (lambda r, t: [str(t)], "no model subfolders"),
    ],
    ids=["missing", "not-a-model", "duplicate-names", "empty-repository"],
)
def test_spec_errors(repository, tmp_path, make, message):
    with pytest.raises(ParvisError, match=message):
        resolve_specs(make(repository, tmp_path), ModelConfig())


def test_model_yaml_errors_name_the_file_and_key(repository, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(repository / "clf", repo / "clf")
    (repo / "clf" / "model.yaml").write_text("max_batch_sise: 4\n")
    with pytest.raises(ParvisError, match=r"unknown key 'max_batch_sise' \(from .*clf/model.yaml\)"):
        resolve_specs([str(repo)], ModelConfig())
    (repo / "clf" / "model.yaml").write_text("max_batch_size: 0\n")
    with pytest.raises(ParvisError, match="max_batch_size"):
        resolve_specs([str(repo)], ModelConfig())
    (repo / "clf" / "model.yaml").write_text("source: other.pt\n")
    with pytest.raises(ParvisError, match="source 'other.pt' does not exist"):
        resolve_specs([str(repo)], ModelConfig())
    (repo / "clf" / "model.yaml").unlink()
    shutil.copy(repo / "clf" / "best.pt", repo / "clf" / "second.pt")
    with pytest.raises(ParvisError, match=r"exactly one model file .* \(found best.pt, second.pt\)"):
        resolve_specs([str(repo)], ModelConfig())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["resnet18", "--host", "0.0.0.0"], "add --allow-remote"),
        (["resnet18", "--port", "70000"], "not a port number"),
        (["resnet18", "--max-queue", "2", "--max-batch-size", "8"], "max_queue"),
        (["resnet18", "--runtime", "tensorflow"], "runtime"),
        (["/no/such.onnx"], "no such file or folder"),
    ],
)
def test_serve_refuses_bad_flags_before_starting(args, message, capsys):
    assert main(["serve", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("parvis: error: ") and message in err and err.count("\n") == 1
