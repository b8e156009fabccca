"""Inspection models: one per-pixel anomaly score map per image, and an OK/NG decision from it.

Every inspection model's raw output is a (B, 1, H, W) float map at the input resolution: higher means
more likely a defect. The image score is the map's maximum; an image is NG ("not good") when its score
reaches `meta.extra["threshold"]` (chosen on validation images by `parvis.engine.inspection`). Two
families share that contract, so export, the runtimes, serve, predict and video treat them alike:

- `PatchCore` (anomaly mode, good parts only; Roth et al. 2022): a backbone's mid-level feature maps
  (stride 8 and 16 by default), each averaged over its 3x3 neighbourhood, the deeper one upsampled and
  concatenated: one embedding per 8x8-pixel patch. Training keeps a coreset of the good parts' patch
  embeddings (the memory bank); a patch's score is its distance to the nearest one. The map is
  upsampled to the input size and smoothed with a Gaussian (sigma 4 px, as two matmuls). The image
  score is PatchCore's own (Roth et al., eq. 7; anomalib's too): the most anomalous patch's distance,
  reweighted by how isolated its nearest memory row is among that row's 9 nearest rows. The map is scaled per image so
  that its maximum is that score (the contract above); within an image the ranking of pixels is
  unchanged. All of it is tensor algebra (matmul, min, gather, interpolate, conv), so one ONNX graph
  computes what the checkpoint computes.
- `DefectSegmenter` (supervised mode, defect examples exist): a registered segmentation network with
  two classes (good, defect); the map is the defect probability.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.feature_extraction import create_feature_extractor

from parvis.errors import ParvisError
from parvis.models.base import ModelMeta, SegmentationModel, VisionModel
from parvis.models.build import build_from_meta, build_model
from parvis.registry import MODELS
from parvis.structures import AnomalyMap

INSPECTION_CLASSES = ["good", "defect"]
# What `build_model("patchcore")` / `build_model("defect_segmenter")` wrap when no inner network is given
# (parvis train always gives one: --model and --weights).
DEFAULT_BACKBONE = "torchvision:mobilenet_v2"
DEFAULT_TRUNK = "unet_small"
# Memory-bank rows compared at once: bounds the (patches x rows) distance matrix of a batch.
MEMORY_CHUNK = 4096
SMOOTH_SIGMA = 4.0
# Memory rows around the top patch's nearest row that reweight the image score (PatchCore's b; anomalib's
# num_neighbors). On a varied texture (grass) it raised test image AUROC from 0.881 (the map's maximum)
# to 0.905, anomalib's 0.908.
SUPPORT = 9


class InspectionModel(VisionModel):
    """raw: (B, 1, H, W) anomaly scores at the input resolution; the image score is their maximum."""

    @property
    def threshold(self) -> float | None:
        value = self.meta.extra.get("threshold")
        return None if value is None else float(value)

    def postprocess(self, raw: Tensor) -> list[AnomalyMap]:
        maps = raw.detach().float().cpu()[:, 0]
        return [AnomalyMap(m, self.threshold) for m in maps]

    def loss(self, raw: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
        """An anomaly map has no loss of its own (PatchCore is fitted, not trained): evaluation reports 0."""
        return raw.new_zeros(())


def gaussian_kernel(sigma: float) -> Tensor:
    """A normalized (1, 1, k, k) Gaussian, k = 2 * ceil(4 sigma) + 1 (scipy's and anomalib's truncation)."""
    radius = math.ceil(4 * sigma)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def stride_layers(net: nn.Module, size: int = 256) -> list[str]:
    """The backbone's feature layers PatchCore uses by default: the last block whose output is at
    stride 8 and the last at stride 16 (mobilenet_v2: features.6 and features.13; resnets: layer2 and
    layer3), found by running one probe image. Blocks are the modules at the shallowest depth of the
    module tree that has outputs at both strides (a block's own inner layers are not candidates)."""
    seen: list[tuple[str, int]] = []
    hooks = []

    def record(name):
        def hook(module, args, output):
            if isinstance(output, Tensor) and output.ndim == 4 and output.shape[-1] > 0:
                seen.append((name, size // output.shape[-1]))  # completion order: a block after its children

        return hook

    for name, module in net.named_modules():
        if name:
            hooks.append(module.register_forward_hook(record(name)))
    was_training = net.training
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(1, 3, size, size))
    finally:
        for h in hooks:
            h.remove()
        net.train(was_training)
    for depth in sorted({name.count(".") for name, _ in seen}):
        last = {stride: name for name, stride in seen if name.count(".") == depth}
        if 8 in last and 16 in last:
            return [last[8], last[16]]
    raise ParvisError(
        "the backbone has no feature maps at stride 8 and 16 for PatchCore; name its layers with layers=A,B"
    )


class PatchCore(InspectionModel):
    """PatchCore on any image backbone parvis builds: see the module docstring.

    `backbone`: the backbone VisionModel (a registered, zoo or trained model); `layers`: its module
    names whose outputs make the embedding; `memory_size` rows of `feature_dim` features are the
    memory bank, filled by `parvis.engine.inspection.fit_patchcore` (or by `load_state_dict`).
    """

    def __init__(self, meta: ModelMeta, backbone: VisionModel, layers: list[str], memory_size: int = 1):
        super().__init__(meta)
        self.layers = list(layers)
        self.features = create_feature_extractor(backbone.eval(), return_nodes={n: n for n in self.layers})
        with torch.no_grad():
            dims = [f.shape[1] for f in self.features(torch.zeros(1, 3, 64, 64)).values()]
        self.feature_dim = sum(dims)
        self.register_buffer("memory", torch.zeros(memory_size, self.feature_dim))
        self.register_buffer("memory_sq", torch.zeros(memory_size))
        self.register_buffer("center", torch.zeros(self.feature_dim))
        self.register_buffer("support", torch.zeros(memory_size, min(SUPPORT, memory_size), dtype=torch.long))
        self.register_buffer("smooth", gaussian_kernel(SMOOTH_SIGMA))
        self._register_load_state_dict_pre_hook(_fill_support)
        for p in self.features.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> PatchCore:
        """The backbone is frozen: BatchNorm and dropout stay in eval mode whatever the caller asks."""
        super().train(mode)
        self.features.eval()
        return self

    def embed(self, images: Tensor) -> Tensor:
        """(B, C, h, w) patch embeddings at the first layer's resolution."""
        maps = list(self.features(images).values())
        size = maps[0].shape[-2:]
        parts = []
        for m in maps:
            m = F.avg_pool2d(m.float(), 3, stride=1, padding=1)
            if m.shape[-2:] != size:
                m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
            parts.append(m)
        return torch.cat(parts, 1)

    def set_memory(self, bank: Tensor) -> None:
        """Keep `bank` (rows of patch features) as the memory, stored relative to its mean: distances are
        the same, and |e|^2 - 2 e.m + |m|^2 cancels far less in float32 (exported graphs match)."""
        bank = bank.detach().float().to(self.memory.device)
        self.center = bank.mean(0)
        bank = bank - self.center
        self.memory = bank.contiguous()
        self.memory_sq = (bank * bank).sum(1)
        self.support = support_rows(bank)
        self.meta.extra["memory_size"] = int(bank.shape[0])

    def nearest(self, embedding: Tensor) -> tuple[Tensor, Tensor]:
        """(B, h*w) each patch's Euclidean distance to its nearest memory row and that row's index, as
        sqrt(|e|^2 - 2 e.m + |m|^2) over chunks of the memory bank (a fixed loop: exports unrolled)."""
        b, c, h, w = embedding.shape
        e = embedding.permute(0, 2, 3, 1).reshape(b * h * w, c) - self.center
        e_sq = (e * e).sum(1, keepdim=True)
        best = rows = None
        for start in range(0, self.memory.shape[0], MEMORY_CHUNK):
            m = self.memory[start : start + MEMORY_CHUNK]
            d, i = (e_sq - 2 * (e @ m.t()) + self.memory_sq[start : start + MEMORY_CHUNK][None]).min(1)
            if best is None:
                best, rows = d, i
            else:
                closer = d < best
                best, rows = torch.where(closer, d, best), torch.where(closer, i + start, rows)
        return best.clamp(min=0).sqrt().reshape(b, h * w), rows.reshape(b, h * w)

    def patch_scores(self, embedding: Tensor) -> Tensor:
        """(B, 1, h, w): each patch's distance to its nearest memory row."""
        b, _, h, w = embedding.shape
        return self.nearest(embedding)[0].reshape(b, 1, h, w)

    def image_scores(self, embedding: Tensor, distances: Tensor, rows: Tensor) -> Tensor:
        """(B,) PatchCore's image score (Roth et al., eq. 7): the top patch's distance s* to its nearest
        memory row m*, times 1 - softmax(the patch's distances to m* and m*'s other nearest rows)[m*].
        Where m* sits among close rows (a common good pattern) the weight is about 1 - 1/k; where its
        neighbours are far from the patch it is near 1. anomalib computes the same."""
        b, c = embedding.shape[:2]
        top = distances.argmax(1, keepdim=True)  # (B, 1)
        score = distances.gather(1, top)[:, 0]
        if self.support.shape[1] < 2:
            return score
        feature = embedding.flatten(2).transpose(1, 2).gather(1, top[:, :, None].expand(b, 1, c)) - self.center
        around = self.memory[self.support[rows.gather(1, top)[:, 0]]]  # (B, k, C)
        spread = (around - feature).square().sum(2).clamp(min=0).sqrt()
        return score * (1 - torch.softmax(spread, 1)[:, 0])

    def forward(self, images: Tensor) -> Tensor:
        embedding = self.embed(images)
        kind = images.device.type
        # distances in float32: bf16's 8 bits cancel in |e|^2 - 2 e.m + |m|^2
        full = torch.autocast(kind, enabled=False) if torch.is_autocast_enabled(kind) else contextlib.nullcontext()
        with full:
            embedding = embedding.float()
            distances, rows = self.nearest(embedding)
            score = self.image_scores(embedding, distances, rows)
        b, _, h, w = embedding.shape
        scores = F.interpolate(distances.reshape(b, 1, h, w), size=images.shape[-2:], mode="bilinear",
                               align_corners=False)  # fmt: skip
        g = self.smooth[0, 0].sum(1)  # the separable kernel's 1-D factor (its rows sum to it)
        heat = blur_matrix(scores.shape[-2], g) @ scores @ blur_matrix(scores.shape[-1], g).t()
        peak = heat.flatten(1).amax(1).clamp(min=1e-12)
        return heat * (score / peak)[:, None, None, None]


def blur_matrix(n: int, g: Tensor) -> Tensor:
    """(n, n) A such that A @ x filters x's rows with the 1-D kernel `g` under reflect padding: a Gaussian
    blur of a map is A_h @ map @ A_w^T, two matmuls, where a 33 x 33 one-channel convolution cost about
    17 ms per 256 x 256 map on 2 CPU cores (a third of PatchCore's time per image), these 1.2 ms plus
    about 0.1 ms to build A. Built with tensor ops (a scatter-add of the taps), so an exported graph
    computes it too."""
    pad = (g.shape[0] - 1) // 2
    rows = torch.arange(n, device=g.device)[:, None] + torch.arange(-pad, pad + 1, device=g.device)[None]
    rows = torch.where(rows < 0, -rows, rows)
    rows = torch.where(rows > n - 1, 2 * (n - 1) - rows, rows)  # (n, k): the source row of each tap
    return torch.zeros(n, n, dtype=g.dtype, device=g.device).scatter_add(1, rows, g[None].expand(n, -1))


def support_rows(bank: Tensor, k: int = SUPPORT, chunk: int = MEMORY_CHUNK) -> Tensor:
    """(N, min(k, N)) each memory row's k nearest rows, itself first (the image score's neighbourhood)."""
    k = min(k, len(bank))
    sq = (bank * bank).sum(1)
    parts = []
    for start in range(0, len(bank), chunk):
        rows = bank[start : start + chunk]
        d = sq[start : start + chunk, None] - 2 * rows @ bank.t() + sq[None]
        d[torch.arange(len(rows)), torch.arange(start, start + len(rows))] = -1.0  # itself first, even on ties
        parts.append(d.topk(k, 1, largest=False).indices)
    return torch.cat(parts)


def _fill_support(state: dict, prefix: str, *args) -> None:
    """Checkpoints fitted before the image score was reweighted have no support rows: compute them."""
    if prefix + "memory" in state and prefix + "support" not in state:
        state[prefix + "support"] = support_rows(state[prefix + "memory"].float())


def backbone_spec(name: str) -> str:
    """A backbone name as parvis builds it: registered names as they are, and any other torchvision
    classifier's name (mobilenet_v2, wide_resnet50_2, ...) as torchvision:NAME."""
    if name in MODELS or ":" in name:
        return name
    return f"torchvision:{name}"


@MODELS.register("patchcore", task="inspection", family="patchcore")
def patchcore(meta: ModelMeta, backbone: dict | None = None, layers=None, memory_size: int = 1, **_) -> PatchCore:
    """Rebuild a PatchCore from its metadata: `backbone` is the backbone's own ModelMeta dict (its
    layers are rebuilt empty; the checkpoint holds the weights)."""
    if backbone is None:  # by name alone: the default backbone, random weights, an empty memory bank
        net = build_model(DEFAULT_BACKBONE)
        meta.extra["backbone"] = net.meta.to_dict()
    else:
        net = build_from_meta(backbone)
    layers = list(layers or stride_layers(net))
    meta.extra["layers"] = layers
    return PatchCore(meta, net, layers, memory_size)


class DefectSegmenter(InspectionModel):
    """A two-class segmentation network as an inspection model: training sees its logits (raw of the
    segmentation loss), inference its defect probability map (B, 1, H, W)."""

    def __init__(self, meta: ModelMeta, net: SegmentationModel):
        super().__init__(meta)
        self.net = net

    def forward(self, images: Tensor) -> Tensor:
        logits = self.net(images)
        if self.training:
            return logits
        return logits.float().softmax(1)[:, 1:2]

    def loss(self, raw: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
        if raw.shape[1] == 1:  # evaluation hands in the probability map: binary cross-entropy of it
            p = raw.float().clamp(1e-6, 1 - 1e-6)
            return F.binary_cross_entropy(p[:, 0], (targets > 0).float())
        return self.net.loss(raw, targets, label_smoothing)


@MODELS.register("defect_segmenter", task="inspection", family="segmentation")
def defect_segmenter(meta: ModelMeta, segmenter: dict | None = None, **_) -> DefectSegmenter:
    """Rebuild from metadata: `segmenter` is the segmentation network's own ModelMeta dict."""
    if segmenter is None:  # by name alone: the supervised mode's default segmenter, two classes
        net = build_model(DEFAULT_TRUNK, 2, list(INSPECTION_CLASSES), meta.input_size, mean=meta.mean, std=meta.std)
        meta.extra["segmenter"] = net.meta.to_dict()
    else:
        net = build_from_meta(segmenter)
    return DefectSegmenter(meta, net)
