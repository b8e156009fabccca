"""anomalib's PatchCore, the peer of `parvis bench inspection`, on the same data and backbone weights.

anomalib (an optional dependency of this benchmark only) builds PatchCore's backbone with timm
(`TimmFeatureExtractor`, `features_only=True`). parvis uses torchvision's ImageNet mobilenet_v2; timm's
`mobilenetv2_100` has the same layers in the same order, so that state dict is copied onto it block by
block (`timm_key_map`, every shape checked), with `pre_trained=False` so nothing is downloaded. The two
networks then give the same features (max abs diff ~1e-6 on a random input, tests/bench).

Layers are named as torchvision `features` indices: layer i is the output of `features[i]`. timm's
feature taps for mobilenetv2 are the ends of its stages, so these are the ones anomalib can reach:

    features index | timm module | out_index | channels | stride
    1              | blocks.0    | 0         | 16       | 2
    3              | blocks.1    | 1         | 24       | 4
    6              | blocks.2    | 2         | 32       | 8
    13             | blocks.4    | 3         | 96       | 16
    17             | blocks.6    | 4         | 320      | 32

The default (6, 13) is PatchCore's mid-level pair, as anomalib's wide_resnet50_2 layer2 + layer3:
stride 8 and 16, 32 + 96 = 128 channels per patch.

The torch model (`PatchcoreModel`) is driven directly, as anomalib's Lightning `Patchcore` does in
`training_step` and `fit`, without a Trainer (no banners, no result folders) and without its
post-processor, whose min-max normalization clamps scores and could tie them. Images are read as RGB,
resized to image_size x image_size (bilinear, antialiased: anomalib's default pre-processor) and
normalized with the ImageNet mean/std. The image score is PatchCore's `pred_score`; the pixel scores
are its `anomaly_map` resized (bilinear) to the mask's resolution. Both AUROCs are computed here
(torchmetrics, exact), as for any model.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image
from torchmetrics.functional.classification import binary_auroc
from torchvision.transforms.v2 import functional as TF  # noqa: N812

from parvis.engine.inspection_metrics import roc_points
from parvis.errors import ParvisError
from parvis.runtime import plain_host_allocator
from parvis.runtimes.torch_eager import torch_threads

TIMM_MODEL = "mobilenetv2_100"
# torchvision features index (its output is the tap) -> timm module of the same tap.
LAYER_TAPS: dict[int, str] = {1: "blocks.0", 3: "blocks.1", 6: "blocks.2", 13: "blocks.4", 17: "blocks.6"}
DEFAULT_LAYERS = (6, 13)
# Blocks per inverted-residual stage (the `n` column of MobileNetV2's table): torchvision numbers the
# blocks features.1 .. features.17 in one run, timm as blocks.<stage>.<block>.
STAGE_DEPTHS = (1, 2, 3, 4, 3, 3, 1)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
TRAIN_BATCH = 8
WARMUP = 3
MISSING = "anomalib is not installed: pip install anomalib (the peer of parvis bench inspection)"


def timm_module_of(features_index: int) -> str:
    """The timm mobilenetv2 module that is torchvision's `features[features_index]` (0 is the stem)."""
    if features_index == 0:
        return "stem"
    block = features_index - 1
    for stage, depth in enumerate(STAGE_DEPTHS):
        if block < depth:
            return f"blocks.{stage}.{block}"
        block -= depth
    raise ParvisError(f"mobilenet_v2 has features[0..17] in these layers, not features[{features_index}]")


def timm_key_map(tv_state: dict[str, torch.Tensor], timm_state: dict[str, torch.Tensor]) -> dict[str, str]:
    """torchvision mobilenet_v2 key -> timm mobilenetv2_100 key, for features[0..17].

    Blocks are paired by `timm_module_of` (features.0 -> conv_stem + bn1, features.i -> blocks.s.j);
    inside a block both libraries register the same convs and batch norms in the same order
    (pw conv, bn, dw conv, bn, pwl conv, bn), so keys are paired by order and every shape must agree.
    features.18 (the 1280-channel head conv) and the classifier are not part of any tap and are left out.
    """

    def group(key: str) -> str | None:
        parts = key.split(".")
        if parts[0] == "features":
            index = int(parts[1])
            return None if index == 18 else timm_module_of(index)
        if parts[0] in ("conv_stem", "bn1"):
            return "stem"
        if parts[0] == "blocks":
            return ".".join(parts[:3])
        return None  # timm's conv_head / bn2 / classifier (not in features_only)

    def grouped(state: dict[str, torch.Tensor]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for key in state:
            name = group(key)
            if name is not None:
                out.setdefault(name, []).append(key)
        return out

    tv_groups, timm_groups = grouped(tv_state), grouped(timm_state)
    if tv_groups.keys() != timm_groups.keys():
        raise ParvisError(
            f"these weights are not torchvision's mobilenet_v2: blocks {sorted(tv_groups)} "
            f"do not match timm {TIMM_MODEL}'s {sorted(timm_groups)}"
        )
    mapping = {}
    for name, tv_keys in tv_groups.items():
        timm_keys = timm_groups[name]
        if len(tv_keys) != len(timm_keys):
            raise ParvisError(f"mobilenet_v2 block {name}: {len(tv_keys)} tensors here, {len(timm_keys)} in timm")
        for tv_key, timm_key in zip(tv_keys, timm_keys, strict=True):
            if tv_state[tv_key].shape != timm_state[timm_key].shape:
                raise ParvisError(
                    f"mobilenet_v2 {tv_key} {tuple(tv_state[tv_key].shape)} does not fit "
                    f"timm {timm_key} {tuple(timm_state[timm_key].shape)}"
                )
            mapping[tv_key] = timm_key
    return mapping


def load_torchvision_mobilenet_v2(timm_model: torch.nn.Module, weights: str | Path) -> int:
    """Copy torchvision's mobilenet_v2 state dict (a .pth file) onto a timm mobilenetv2_100 (plain or
    features_only). Returns the number of tensors copied: all of timm's but its head (conv_head, bn2,
    classifier), which `timm_key_map` leaves out."""
    path = Path(weights)
    if not path.is_file():
        raise ParvisError(f"{path}: no such weights file (torchvision's mobilenet_v2 state dict)")
    tv_state = torch.load(path, map_location="cpu", weights_only=True)
    timm_state = timm_model.state_dict()
    mapping = timm_key_map(tv_state, timm_state)
    timm_model.load_state_dict({timm_key: tv_state[tv_key] for tv_key, timm_key in mapping.items()}, strict=False)
    return len(mapping)


def check_layers(layers: Sequence[int]) -> tuple[int, ...]:
    """Layers as increasing torchvision features indices that timm's mobilenetv2 taps (LAYER_TAPS)."""
    layers = tuple(int(i) for i in layers)
    if not layers or any(i not in LAYER_TAPS for i in layers):
        raise ParvisError(
            f"layers {list(layers)}: anomalib's mobilenet_v2 features are the outputs of features{sorted(LAYER_TAPS)}"
        )
    if list(layers) != sorted(set(layers)):
        # PatchCore upsamples every layer to the first one's grid: the first must be the finest.
        raise ParvisError(f"layers {list(layers)}: give them in increasing order, without repeats")
    return layers


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def mvtec_split(root: str | Path) -> tuple[list[Path], list[tuple[Path, Path | None]]]:
    """Train images (root/train/good) and test (image, mask or None for good) pairs in MVTec AD's
    layout: root/test/<kind>/NAME with its mask at root/ground_truth/<kind>/<stem>_mask.png."""
    root = Path(root)
    good = root / "train" / "good"
    if not good.is_dir() or not _images(good):
        raise ParvisError(f"{good}: no training images (MVTec AD layout: train/good, test/<kind>, ground_truth/<kind>)")
    test_root = root / "test"
    kinds = sorted(p for p in test_root.iterdir() if p.is_dir()) if test_root.is_dir() else []
    test: list[tuple[Path, Path | None]] = []
    for kind in kinds:
        for image in _images(kind):
            if kind.name == "good":
                test.append((image, None))
                continue
            mask = root / "ground_truth" / kind.name / f"{image.stem}_mask.png"
            if not mask.is_file():
                raise ParvisError(f"{mask}: missing (the mask of {image})")
            test.append((image, mask))
    n_bad = sum(mask is not None for _, mask in test)
    if n_bad == 0 or n_bad == len(test):
        raise ParvisError(f"{test_root}: needs both good and defective test images ({len(test) - n_bad} and {n_bad})")
    return _images(good), test


def load_image(path: Path, image_size: int) -> torch.Tensor:
    """RGB, resized to image_size x image_size (bilinear, antialiased), ImageNet-normalized: (3, S, S)."""
    with Image.open(path) as im:
        rgb = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
    rgb = TF.resize(rgb, [image_size, image_size], antialias=True)
    return TF.normalize(rgb, list(IMAGENET_MEAN), list(IMAGENET_STD))


def load_mask(mask: Path | None, like: Path) -> torch.Tensor:
    """Boolean defect mask at its own resolution; all False (at the image's size) for a good image."""
    if mask is None:
        with Image.open(like) as im:
            return torch.zeros(im.height, im.width, dtype=torch.bool)
    with Image.open(mask) as im:
        return torch.from_numpy(np.asarray(im.convert("L")) > 127)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No warnings and no anomalib/lightning log lines reach the terminal while the peer runs."""
    loggers = [logging.getLogger(name) for name in ("anomalib", "lightning", "lightning.pytorch", "timm")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            for lg in loggers:
                lg.setLevel(logging.ERROR)
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def build_patchcore(weights: str | Path, layers: Sequence[int] = DEFAULT_LAYERS, num_neighbors: int = 9):
    """anomalib's `PatchcoreModel` on timm mobilenetv2_100 carrying torchvision's mobilenet_v2 weights."""
    layers = check_layers(layers)
    try:
        with _quiet():
            from anomalib.models.image.patchcore.torch_model import (  # noqa: PLC0415 - optional peer
                PatchcoreModel,
            )
    except ImportError as e:
        if (e.name or "").split(".")[0] != "anomalib":
            raise ParvisError(f"anomalib is installed but cannot be imported: {e}") from e
        raise ParvisError(MISSING) from None
    with _quiet():
        model = PatchcoreModel(
            layers=[LAYER_TAPS[i] for i in layers],
            backbone=TIMM_MODEL,
            pre_trained=False,  # the weights come from the local file below, never a download
            num_neighbors=num_neighbors,
        ).float()
    load_torchvision_mobilenet_v2(model.feature_extractor.feature_extractor, weights)
    return model


def run_anomalib_patchcore(
    root: str | Path,
    weights: str | Path,
    layers: Sequence[int] = DEFAULT_LAYERS,
    image_size: int = 256,
    coreset_ratio: float = 0.1,
    num_neighbors: int = 9,
    threads: int | None = None,
    seed: int = 0,
) -> dict:
    """Fit anomalib's PatchCore on root/train/good and score root/test (MVTec AD layout), on CPU.

    weights: torchvision's ImageNet mobilenet_v2 state dict (.pth); layers: torchvision `features`
    indices whose outputs are concatenated (see LAYER_TAPS). Preprocessing: resize to image_size
    (bilinear, antialiased), ImageNet mean/std. fit_s: feature extraction (batches of TRAIN_BATCH) plus
    k-center-greedy coreset, images already decoded. ms_per_image: mean wall time of the model's
    inference (pred_score and anomaly_map) per test image at batch 1, after WARMUP passes; image
    decoding and the map's resize to the mask are not timed. The coreset's random start (torch) and
    its random projection (numpy's global generator, through scikit-learn) are seeded with `seed`
    without touching the caller's random state. Warnings and log lines are silenced while it runs.
    """
    layers = check_layers(layers)
    if not 0 < coreset_ratio <= 1:
        raise ParvisError(f"coreset_ratio {coreset_ratio}: must be in (0, 1]")
    train, test = mvtec_split(root)
    with torch_threads(threads), _quiet(), plain_host_allocator():
        model = build_patchcore(weights, layers, num_neighbors)
        from anomalib import __version__  # noqa: PLC0415 - optional peer, present once build_patchcore ran
        from anomalib.models.components.sampling import k_center_greedy  # noqa: PLC0415 - optional peer

        train_images = torch.stack([load_image(p, image_size) for p in train])
        model.train()  # PatchcoreModel stores embeddings in train mode; its backbone stays in eval
        start = time.perf_counter()
        with torch.no_grad():
            for i in range(0, len(train_images), TRAIN_BATCH):
                model(train_images[i : i + TRAIN_BATCH])
        # The coreset's tqdm bar would print to the terminal; its random start and projection are seeded.
        quiet_tqdm = functools.partial(k_center_greedy.tqdm, disable=True)
        # no_grad: anomalib's search otherwise kept every step's (patches x dims) difference for a backward
        # that never comes (a 24 GB RSS on 200 images at 256 px, killed by the OOM killer)
        with torch.random.fork_rng(devices=[]), mock.patch.object(k_center_greedy, "tqdm", quiet_tqdm):
            torch.manual_seed(seed)
            numpy_state = np.random.get_state()
            np.random.seed(seed)
            try:
                with torch.no_grad():
                    model.subsample_embedding(coreset_ratio)
            finally:
                np.random.set_state(numpy_state)
        fit_s = time.perf_counter() - start

        model.eval()
        scores, labels, pixel_scores, pixel_labels, times = [], [], [], [], []
        with torch.no_grad():
            first = load_image(test[0][0], image_size)[None]
            for _ in range(WARMUP):
                model(first)
            for image_path, mask_path in test:
                x = load_image(image_path, image_size)[None]
                tick = time.perf_counter()
                out = model(x)
                times.append(time.perf_counter() - tick)
                mask = load_mask(mask_path, image_path)
                amap = F.interpolate(out.anomaly_map.float(), size=mask.shape, mode="bilinear", align_corners=False)
                scores.append(float(out.pred_score.reshape(-1)[0]))
                labels.append(mask_path is not None)
                pixel_scores.append(amap.reshape(-1))
                pixel_labels.append(mask.reshape(-1))
        image_auroc = binary_auroc(torch.tensor(scores), torch.tensor(labels, dtype=torch.long))
        pixel_target = torch.cat(pixel_labels).long()
        pixel_auroc = binary_auroc(torch.cat(pixel_scores), pixel_target) if pixel_target.any() else float("nan")
        used_threads = torch.get_num_threads()
    return {
        "image_auroc": float(image_auroc),
        "pixel_auroc": float(pixel_auroc),
        "fit_s": fit_s,
        "ms_per_image": 1000.0 * sum(times) / len(times),
        "ms_per_image_median": 1000.0 * float(np.median(times)),  # robust to a busy machine's stalls
        "anomalib_version": __version__,
        "layers": list(layers),
        "coreset_ratio": coreset_ratio,
        "image_size": image_size,
        "backbone": f"torchvision mobilenet_v2 weights on timm {TIMM_MODEL}",
        "memory_bank": int(model.memory_bank.shape[0]),
        "num_neighbors": num_neighbors,
        "batch": 1,
        "threads": used_threads,
        "device": "cpu",
        "dtype": "float32",
        "torch_version": torch.__version__,
        "n_train": len(train),
        "n_test": len(test),
        "image_roc": roc_points(torch.tensor(scores), torch.tensor(labels)),
        "pixel_roc": roc_points(torch.cat(pixel_scores), pixel_target),
    }
