"""Train/eval presets per task, on uint8 tensors with torchvision.transforms.v2.

Images stay uint8 from decode to the device: resizing uint8 is torchvision's fastest path, uint8
batches cross the worker->main process boundary at a quarter of float32's bytes, and the
conversion to float + normalization happens once per batch on the device
(:class:`parvis.data.loader.DevicePrefetcher`). Masks and boxes are transformed jointly with
their image by v2 (tv_tensors.Mask gets nearest-neighbour resampling, BoundingBoxes are moved).
"""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from parvis.data.decode import to_tensor
from parvis.errors import ParvisError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TASKS = ("classification", "segmentation", "detection", "stereo", "inspection")
# Eval resize before the center crop, as torchvision/timm's reference recipes do (224 <- 256).
CROP_PCT = 0.875


class RandomResizedCrop(v2.RandomResizedCrop):
    """v2.RandomResizedCrop that keeps CPU uint8 images channels-last.

    Decoders hand over HWC memory. v2's resized_crop passes the crop as a strided view, which
    torch's uint8 antialiased resize repacks and answers in CHW; collate then pays a byte-wise
    transpose per image. Copying the (smaller) crop to contiguous HWC first makes the resize take
    its channels-last fast path and the result stacks with a plain copy (measured 0.21 -> 0.14 ms
    per 224 px resize, and no transpose in collate). Masks and boxes go through v2 unchanged.
    """

    def transform(self, inpt, params):
        if isinstance(inpt, tv_tensors.Image) and inpt.dtype == torch.uint8 and inpt.ndim == 3 and not inpt.is_cuda:
            top, left, height, width = params["top"], params["left"], params["height"], params["width"]
            crop = inpt.as_subclass(torch.Tensor)[:, top : top + height, left : left + width]
            crop = crop.permute(1, 2, 0).contiguous().permute(2, 0, 1)
            out = F.resize(crop, self.size, interpolation=self.interpolation, antialias=self.antialias)
            return tv_tensors.wrap(out, like=inpt)
        return super().transform(inpt, params)


def _flip(hflip: bool) -> list[v2.Transform]:
    return [v2.RandomHorizontalFlip()] if hflip else []


def classification_train(size: int, crop_scale: tuple[float, float] = (0.08, 1.0), hflip: bool = True) -> v2.Transform:
    return v2.Compose([RandomResizedCrop(size, scale=crop_scale, antialias=True), *_flip(hflip)])


def classification_eval(size: int, crop_pct: float | None = None, interpolation: str = "bilinear") -> v2.Transform:
    """Resize the short side to size / crop_pct, then the center size x size (torchvision's and timm's
    eval recipe; a model from a zoo brings its own crop_pct and interpolation)."""
    mode = _interpolation(interpolation)
    # floor for a zoo's crop_pct, as timm's transforms_factory does; parvis's own models keep round().
    resize = int(size / crop_pct) if crop_pct else int(round(size / CROP_PCT))
    return v2.Compose([v2.Resize(resize, interpolation=mode, antialias=True), v2.CenterCrop(size)])


def _interpolation(name: str) -> v2.InterpolationMode:
    try:
        return v2.InterpolationMode(name)
    except ValueError:
        choices = ", ".join(m.value for m in (v2.InterpolationMode.BILINEAR, v2.InterpolationMode.BICUBIC))
        raise ParvisError(f"interpolation {name!r} is unknown; choose one of {choices}") from None


def segmentation_train(size: int, crop_scale: tuple[float, float] = (0.25, 1.0), hflip: bool = True) -> v2.Transform:
    # Milder scale range than classification: a segmentation crop must keep enough context.
    return v2.Compose([RandomResizedCrop(size, scale=crop_scale, antialias=True), *_flip(hflip)])


def segmentation_eval(size: int) -> v2.Transform:
    return v2.Resize((size, size), antialias=True)


class ZoomShift(torch.nn.Module):
    """Random scale in `scale` and shift of up to `translate` of the frame, at the image's own size.

    The same geometry as v2.RandomAffine(degrees=0, translate, scale) with a black fill, done as a crop
    (padded where it leaves the frame) and an antialiased resize: 0.2 ms at 128 px where the affine's
    float resampling took 1.9 ms. Boxes follow, are clipped to the frame, and those left under one
    pixel wide or high go with their labels (what v2.ClampBoundingBoxes + SanitizeBoundingBoxes do,
    in a few tensor ops instead of 1.1 ms).
    """

    def __init__(self, translate: float = 0.1, scale: tuple[float, float] = (0.75, 1.25)):
        super().__init__()
        self.translate, self.scale = translate, scale

    def forward(self, image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
        height, width = image.shape[-2:]
        s = float(torch.empty(1).uniform_(*self.scale))
        tx, ty = (torch.empty(2).uniform_(-self.translate, self.translate) * torch.tensor([width, height])).tolist()
        # Output pixel q shows source pixel (q - centre - t) / s + centre.
        crop_w, crop_h = round(width / s), round(height / s)
        left, top = round(width / 2 - (width / 2 + tx) / s), round(height / 2 - (height / 2 + ty) / s)
        image = F.resized_crop(image, top, left, crop_h, crop_w, [height, width], antialias=True)
        boxes = target["boxes"]
        moved = F.resized_crop(boxes, top, left, crop_h, crop_w, [height, width])
        xy = moved.as_subclass(torch.Tensor).clone()
        xy[:, 0::2].clamp_(0, width)
        xy[:, 1::2].clamp_(0, height)
        keep = ((xy[:, 2] - xy[:, 0]) >= 1) & ((xy[:, 3] - xy[:, 1]) >= 1)
        target = dict(target)
        target["boxes"] = tv_tensors.wrap(xy[keep], like=moved)
        target["labels"] = target["labels"][keep]
        return image, target


def detection_train(size: int, hflip: bool = True) -> v2.Transform:
    # Resize first, so the zoom and shift move size x size pixels, not the file's.
    return v2.Compose([v2.Resize((size, size), antialias=True), *_flip(hflip), ZoomShift(0.1, (0.75, 1.25))])


def detection_eval(size: int) -> v2.Transform:
    return v2.Resize((size, size), antialias=True)


class StereoCrop(torch.nn.Module):
    """Training preset for stereo pairs (image (6, H, W): left RGB, right RGB; target (H, W) disparity).

    The same random `size` x `2 size` window of both views and the disparity (pairs smaller than
    that are padded with invalid pixels), a vertical flip of both half of the time (rectification
    keeps rows, so disparity is unchanged), and brightness, contrast and gamma jittered separately
    per view (cameras differ). No horizontal flip: mirrored views would need swapping and their
    disparity would be the right view's, which the data does not have.
    """

    def __init__(self, size: int, jitter: float = 0.2):
        super().__init__()
        self.height, self.width, self.jitter = size, 2 * size, jitter

    def forward(self, image, target):
        image = image.as_subclass(torch.Tensor)
        _, h, w = image.shape
        if target is None:
            target = torch.zeros(h, w)
        ph, pw = max(0, self.height - h), max(0, self.width - w)
        if ph or pw:
            image = torch.nn.functional.pad(image, (0, pw, 0, ph))
            target = torch.nn.functional.pad(target, (0, pw, 0, ph))
            h, w = image.shape[-2:]
        top = int(torch.randint(0, h - self.height + 1, ()))
        left = int(torch.randint(0, w - self.width + 1, ()))
        image = image[:, top : top + self.height, left : left + self.width]
        target = target[top : top + self.height, left : left + self.width]
        if torch.rand(()) < 0.5:
            image, target = image.flip(-2), target.flip(-2)
        views = []
        for view in (image[:3], image[3:]):
            x = view.float() / 255
            gain = 1 + (torch.rand(()) * 2 - 1) * self.jitter
            mean = x.mean()
            contrast = 1 + (torch.rand(()) * 2 - 1) * self.jitter
            gamma = 1 + (torch.rand(()) * 2 - 1) * self.jitter / 2
            x = ((x - mean) * contrast + mean) * gain
            views.append((x.clamp(0, 1) ** gamma * 255).round().to(torch.uint8))
        out = torch.cat(views).permute(1, 2, 0).contiguous().permute(2, 0, 1)  # channels-last, as decoders give
        return tv_tensors.Image(out), target.contiguous()


class StereoEval(torch.nn.Module):
    """Eval preset for stereo pairs: the full pair at its own resolution (disparity is in its pixels)."""

    def __init__(self, size: int):
        super().__init__()

    def forward(self, image, target):
        return image, target


def stereo_train(size: int, hflip: bool = False) -> StereoCrop:
    return StereoCrop(size)


def inspection_train(size: int, hflip: bool = True) -> v2.Transform:
    """The whole part at the model's size, flipped both ways: a defect can sit anywhere and a crop
    would change the scale a defect is judged at."""
    flips = [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()] if hflip else []
    return v2.Compose([v2.Resize((size, size), antialias=True), *flips])


_PRESETS = {
    ("stereo", True): stereo_train,
    ("stereo", False): StereoEval,
    ("inspection", True): inspection_train,
    ("inspection", False): segmentation_eval,
    ("classification", True): classification_train,
    ("classification", False): classification_eval,
    ("segmentation", True): segmentation_train,
    ("segmentation", False): segmentation_eval,
    ("detection", True): detection_train,
    ("detection", False): detection_eval,
}


def build_transform(
    task: str,
    train: bool,
    size: int,
    crop_scale: tuple[float, float] | None = None,
    crop_pct: float | None = None,
    interpolation: str = "bilinear",
    hflip: bool = True,
) -> v2.Transform:
    """The preset for `task`: a callable (image, target) -> (image, target) on uint8 tensors.

    `crop_scale` overrides a training preset's random-crop area range (classification's ImageNet
    default 0.08-1 can cut a centred object out of the frame; recipes for such data use e.g. 0.5-1).
    `crop_pct` and `interpolation` shape the classification eval preset (a zoo model's own values).
    `hflip`: random horizontal flips in the training presets.
    """
    if task not in TASKS:
        raise ParvisError(f"task {task!r} is unknown; choose one of {', '.join(TASKS)}")
    if size < 8:
        raise ParvisError(f"image size {size} is too small; use at least 8 px (e.g. --size 224)")
    if not train and task == "classification":
        return classification_eval(size, crop_pct, interpolation)
    if not train:
        return _PRESETS[(task, False)](size)
    if crop_scale is not None and task in ("classification", "segmentation"):
        return _PRESETS[(task, True)](size, tuple(crop_scale), hflip=hflip)
    return _PRESETS[(task, True)](size, hflip=hflip)


def decode_min_size(task: str, train: bool, size: int) -> int | None:
    """The smallest short side the decoder may return for this preset (JPEG DCT scaling).

    Eval presets only ever shrink the image to `size / CROP_PCT`, so decoding a large JPEG at a
    reduced scale loses nothing. Training crops may zoom into a small region, so they get the full
    image (None): cheaper decoding there would cost detail in exactly the crops that need it.
    """
    if train:
        return None
    return int(round(size / CROP_PCT)) if task == "classification" else size


class Normalize(torch.nn.Module):
    """uint8 (B, C, H, W) -> float normalized, in one pass, in the requested memory format.

    Batches from parvis's collate are already channels-last in memory (decoders produce HWC). For
    those, the per-channel affine is applied to the (B*H, W*C) view with the scale/shift pattern
    tiled W times: a broadcast along a long contiguous row vectorizes, while a (1, C, 1, 1)
    broadcast over NHWC memory has an inner loop of length C=3 (measured 3.4x slower on the CPU).
    """

    def __init__(
        self,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        dtype: torch.dtype = torch.float32,
        memory_format: torch.memory_format = torch.contiguous_format,
    ):
        super().__init__()
        std_t = torch.tensor(std, dtype=torch.float32)
        mean_t = torch.tensor(mean, dtype=torch.float32)
        # (x / 255 - mean) / std == x * scale - shift: one multiply-subtract per pixel.
        self.register_buffer("scale", 1.0 / (255.0 * std_t), persistent=False)
        self.register_buffer("shift", mean_t / std_t, persistent=False)
        self.dtype = dtype
        self.memory_format = memory_format
        self._patterns: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _pattern(self, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (width, device)
        if key not in self._patterns:
            self._patterns[key] = (
                self.scale.to(device, self.dtype).repeat(width),
                self.shift.to(device, self.dtype).repeat(width),
            )
        return self._patterns[key]

    def forward(self, images: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """`out` (optional): a preallocated (B, H, W, C) tensor of `dtype` to write into (e.g. in
        shared memory, so a loader worker's result crosses to the main process without a copy)."""
        n, c, h, w = images.shape
        nhwc = images.permute(0, 2, 3, 1)
        if self.memory_format == torch.channels_last and nhwc.is_contiguous():
            scale, shift = self._pattern(w, images.device)
            rows = nhwc.reshape(n * h, w * c)
            if out is None:
                rows = rows.to(self.dtype).mul_(scale)
            else:
                rows = torch.mul(rows, scale, out=out.view(n * h, w * c))
            return rows.sub_(shift).view(n, h, w, c).permute(0, 3, 1, 2)
        x = images.to(dtype=self.dtype, memory_format=self.memory_format)
        view = (1, c, 1, 1)
        x = x.mul_(self.scale.to(x.device, self.dtype).view(view)).sub_(self.shift.to(x.device, self.dtype).view(view))
        if out is not None:
            out.copy_(x.permute(0, 2, 3, 1))
            return out.permute(0, 3, 1, 2)
        return x


class EvalPreprocess:
    """One decoded RGB uint8 image (H, W, 3) -> the normalized float (3, S, S) a model evaluates on:
    its task's eval preset, then its mean/std. What serve (per request) and video (per frame of a
    classification or segmentation model) hand to a model, one image at a time."""

    def __init__(self, task: str, size: int, mean, std, crop_pct: float | None = None, interpolation: str = "bilinear"):
        self.transform = build_transform(task, False, size, crop_pct=crop_pct, interpolation=interpolation)
        self.normalize = Normalize(mean, std)

    @classmethod
    def for_model(cls, meta) -> EvalPreprocess:
        """The preprocessing a model's metadata (`parvis.models.ModelMeta`) describes."""
        extra = getattr(meta, "extra", None) or {}
        return cls(meta.task, meta.input_size, meta.mean, meta.std, extra.get("crop_pct"),
                   extra.get("interpolation", "bilinear"))  # fmt: skip

    def __call__(self, array) -> torch.Tensor:
        image = self.transform(tv_tensors.Image(to_tensor(array))).as_subclass(torch.Tensor)
        return self.normalize(image[None])[0].contiguous()
