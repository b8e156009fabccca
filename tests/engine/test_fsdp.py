"""FSDP2 on every registered model: one training step in 2 gloo processes (strategy=fsdp, as `parvis
train` prepares the model) ends with the weights one process gets on the whole batch."""

import json
from pathlib import Path

import pytest

from tests.engine.fsdp_worker import trained_models

HERE = Path(__file__).parent

# Tolerance: the two processes' gradients are averaged by a reduce-scatter in another summation order
# than one process's backward; after one SGD step (lr 0.1) weights agree to float32 rounding.
TOLERANCE = 1e-4


@pytest.mark.slow
@pytest.mark.distributed
def test_fsdp2_trains_every_registered_model_like_one_process(tmp_path, torchrun):
    torchrun(HERE / "fsdp_worker.py", tmp_path, timeout=900)
    results = {name: json.loads((tmp_path / f"{name}.json").read_text()) for name in trained_models()}
    for name, r in results.items():
        assert not r["missing"], f"{name}: FSDP's state dict lacks {r['missing']}"
        assert r["max_abs_diff"] <= TOLERANCE * max(1.0, r["max_abs_weight"]), (name, r)
