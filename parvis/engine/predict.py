"""Load a trained model from its checkpoint and predict on image files: JSON, PNG masks, overlays.

Preprocessing comes from the checkpoint's metadata (input size, mean/std, task, class names), so
no flag repeats what the model already knows.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import tv_tensors

from parvis import runtime
from parvis.data.decode import IMAGE_SUFFIXES, read_image, to_tensor
from parvis.data.transforms import Normalize, build_transform
from parvis.engine.checkpoint import load_checkpoint
from parvis.errors import BadSampleError, ParvisError
from parvis.io import atomic_write_bytes, atomic_write_text
from parvis.models import ModelMeta, VisionModel, build_model

# A fixed, distinguishable colour per class id for masks and overlays (background stays dark).
PALETTE = np.array(
    [
        [0, 0, 0],
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
        [250, 190, 212],
        [0, 128, 128],
        [220, 190, 255],
        [170, 110, 40],
        [255, 250, 200],
        [128, 0, 0],
    ],
    dtype=np.uint8,
)


def load_trained(path: str | Path, device: torch.device, use_ema: bool = False) -> VisionModel:
    """The model a parvis checkpoint describes, with its weights, in eval mode on `device`."""
    state = load_checkpoint(path)
    if not isinstance(state.get("meta"), dict) or "model" not in state:
        raise ParvisError(f"{path}: has no model metadata; it is not a checkpoint written by parvis train")
    meta = ModelMeta.from_dict(state["meta"])
    extra = {"scales": meta.extra["scales"]} if "scales" in meta.extra else {}  # HMSA: the trained scale list
    model = build_model(
        meta.name, meta.num_classes, meta.class_names, meta.input_size, mean=meta.mean, std=meta.std, **extra
    )
    weights = state["ema"] if use_ema and state.get("ema") else state["model"]
    if use_ema and not state.get("ema"):
        raise ParvisError(f"{path}: holds no EMA weights (trained without ema=true); drop --ema")
    # AveragedModel keeps a step counter next to the weights; the model does not want it.
    model.load_state_dict({k: v for k, v in weights.items() if k != "n_averaged"})
    return model.to(device, memory_format=runtime.preferred_memory_format(device)).eval()


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Image files from file names, folders (recursively) and glob patterns, in a stable order."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True))
            if not matches:
                raise ParvisError(f"{item}: no such file, folder or matching files; check the path")
            files += [m for m in matches if m.is_file()]
    if not files:
        raise ParvisError(f"no images found in {', '.join(inputs)}")
    return files


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend class colours over the image where the mask is not background."""
    colours = PALETTE[mask % len(PALETTE)]
    blended = (image * (1 - alpha) + colours * alpha).astype(np.uint8)
    return np.where(mask[..., None] > 0, blended, image)


@torch.no_grad()
def predict_files(
    model: VisionModel,
    files: list[Path],
    out: str | Path,
    device: torch.device,
    precision: runtime.Precision,
    batch_size: int = 16,
) -> list[dict]:
    """Predict every file; write results.json, and for segmentation masks/*.png and overlays/*.jpg."""
    from PIL import Image, ImageDraw

    meta = model.meta
    out = Path(out)
    transform = build_transform(meta.task, False, meta.input_size)
    normalize = Normalize(meta.mean, meta.std, memory_format=runtime.preferred_memory_format(device)).to(device)
    results: list[dict] = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        originals, inputs, ok = [], [], []
        for path in chunk:
            try:
                array = read_image(path)
            except BadSampleError as exc:
                results.append({"file": str(path), "error": exc.reason})
                continue
            image = transform(tv_tensors.Image(to_tensor(array)))
            originals.append(array)
            inputs.append(image.as_subclass(torch.Tensor).permute(1, 2, 0))
            ok.append(path)
        if not inputs:
            continue
        batch = normalize(torch.stack(inputs).permute(0, 3, 1, 2).to(device))
        with runtime.autocast(precision):
            raw = model(batch)
        raw = raw.float()
        for path, array, logits, result in zip(ok, originals, raw, model.postprocess(raw), strict=True):
            record = {"file": str(path), **result.to_dict()}
            if meta.task == "segmentation":
                # Back to the file's own resolution before the argmax, so masks line up with the image.
                full = F.interpolate(logits[None], size=array.shape[:2], mode="bilinear", align_corners=False)
                mask = full[0].argmax(0).to(torch.uint8).cpu().numpy()
                record.update(result.__class__(torch.from_numpy(mask).long(), meta.class_names).to_dict())
                record["mask"] = _write_mask(out / "masks" / f"{path.stem}.png", mask)
                record["overlay"] = _write_jpeg(out / "overlays" / f"{path.stem}.jpg", overlay(array, mask))
            else:
                canvas = Image.fromarray(array)
                ImageDraw.Draw(canvas).text((4, 4), f"{record['class_name']} {record['score']:.2f}", fill=(255, 255, 0))
                record["overlay"] = _write_jpeg(out / "overlays" / f"{path.stem}.jpg", np.asarray(canvas))
            results.append(record)
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    return results


def _write_mask(path: Path, mask: np.ndarray) -> str:
    """Class ids as a palette PNG: the pixel values are the ids, the palette makes them visible."""
    import io

    from PIL import Image

    im = Image.fromarray(mask)
    im.putpalette(PALETTE.flatten().tolist())
    buf = io.BytesIO()
    im.save(buf, "PNG")
    atomic_write_bytes(path, buf.getvalue())
    return str(path)


def _write_jpeg(path: Path, image: np.ndarray) -> str:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=90)
    atomic_write_bytes(path, buf.getvalue())
    return str(path)
