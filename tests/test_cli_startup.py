"""The CLI starts fast: building the parser and commands that never touch torch import none of the heavy stack."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "torchvision", "numpy", "onnx", "onnxruntime", "openvino", "fastapi", "uvicorn", "rich")


def _imported_after(code: str) -> list[str]:
    """Top-level packages among HEAVY that `code` imports, run in a fresh interpreter."""
    probe = (
        code
        + f"\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r})))"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_build_parser_imports_no_heavy_package():
    # `parvis --help` and `parvis --version` only build the parser: each command module's top level
    # must stay argparse-level (heavy imports belong in its run function).
    assert _imported_after("from parvis.cli.main import build_parser\nbuild_parser()") == []


def test_every_command_help_builds_without_torch():
    code = (
        "import contextlib, io\n"
        "from parvis.cli.main import build_parser\n"
        "parser = build_parser()\n"
        "sub = next(a for a in parser._actions if a.dest == 'command')\n"
        "for name in sub.choices:\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n"
        "            parser.parse_args([name, '--help'])\n"
        "        except SystemExit:\n"
        "            pass\n"
    )
    assert "torch" not in _imported_after(code)


def test_report_does_not_import_torch(tmp_path):
    # report renders JSON to HTML: main must not pull in parvis.runtime (torch) for it.
    (tmp_path / "r.json").write_text("{}")
    code = (
        "from parvis.cli.main import main\n"
        f"main(['report', {str(tmp_path / 'r.json')!r}, '--out', {str(tmp_path / 'o.html')!r}, '--skip-unknown'])\n"
    )
    assert "torch" not in _imported_after(code)


def test_serve_flag_defaults_match_model_config():
    # cli/serve.py copies ModelConfig's defaults so that building the parser does not import torch.
    from parvis.cli.main import build_parser
    from parvis.serve.models import ModelConfig

    args = build_parser().parse_args(["serve", "m.pt"])
    d = ModelConfig()
    for key in (
        "precision",
        "device",
        "threads",
        "instances",
        "max_batch_size",
        "max_queue_delay_ms",
        "max_queue",
        "timeout_ms",
    ):
        assert getattr(args, key) == getattr(d, key), key


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_help_and_version_exit_zero(flag):
    proc = subprocess.run([sys.executable, "-m", "parvis", flag], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


def test_data_check_imports_no_deployment_stack(tmp_path):
    # a command imports what it uses: checking a dataset needs neither ONNX, OpenVINO nor the HTTP server
    from parvis.data.synth import synthesize

    synthesize(tmp_path / "s", n=8, size=32, seed=0, workers=1, progress=False)
    code = f"from parvis.cli.main import main\nassert main(['data', 'check', {str(tmp_path / 's')!r}]) == 0\n"
    probe = code + "import sys\nprint(sorted({m.split('.')[0] for m in sys.modules}))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = set(json.loads(proc.stdout.strip().splitlines()[-1].replace("'", '"')))
    assert not imported & {"onnx", "onnxruntime", "openvino", "fastapi", "uvicorn", "starlette"}
