"""`parvis predict` for stereo models: a LEFT and a RIGHT image (or two folders of pairs matched by
file name) -> disparity as a 16-bit PNG (KITTI: value / 256 = pixels), a colour-mapped PNG, and
"closer than" masks for the planes asked (`--planes 8,16` in pixels of disparity, or `--depths 2m,5m`
with the camera's focal length x baseline), plus results.json.

Planes come from the model's plane head (Bi3D-style: one cheap pass per plane) when the runtime runs
a model that has one, else from thresholding the dense disparity; results.json says which.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from parvis.data.decode import decode, read_bytes
from parvis.errors import ParvisError
from parvis.io import atomic_write, atomic_write_text

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp")


def parse_planes(planes: str | None, depths: str | None, focal_baseline: float | None) -> list[float]:
    """Plane disparities in pixels from `--planes 8,16` or `--depths 2m,5m` (needs focal x baseline)."""
    out: list[float] = []
    if planes:
        for item in planes.split(","):
            try:
                value = float(item)
            except ValueError:
                raise ParvisError(
                    f"--planes {planes!r}: {item!r} is not a number of pixels (e.g. --planes 8,16)"
                ) from None
            if value <= 0:
                raise ParvisError(f"--planes {planes!r}: a plane's disparity must be > 0 px, got {item}")
            out.append(value)
    if depths:
        if not focal_baseline:
            raise ParvisError("--depths needs the camera's focal length x baseline: --focal-baseline F (px x m), "
                              "or a model trained on data whose dataset.yaml states it")  # fmt: skip
        for item in depths.split(","):
            text = item.strip().lower().removesuffix("m")
            try:
                metres = float(text)
            except ValueError:
                raise ParvisError(
                    f"--depths {depths!r}: {item!r} is not a depth in metres (e.g. --depths 2m,5m)"
                ) from None
            if metres <= 0:
                raise ParvisError(f"--depths {depths!r}: a depth must be > 0 m, got {item}")
            out.append(focal_baseline / metres)
    return out


def stereo_pairs(left: str, right: str) -> list[tuple[Path, Path]]:
    """(left, right) files: two files, or two folders whose images are matched by file name."""
    a, b = Path(left), Path(right)
    for p in (a, b):
        if not p.exists():
            raise ParvisError(
                f"{p}: no such file or folder; stereo predict takes LEFT RIGHT (two images or two folders)"
            )
    if a.is_file() and b.is_file():
        return [(a, b)]
    if a.is_dir() and b.is_dir():
        lefts = {p.name: p for p in sorted(a.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
        pairs = [(p, b / name) for name, p in lefts.items() if (b / name).is_file()]
        missing = [name for name in lefts if not (b / name).is_file()]
        if missing:
            raise ParvisError(f"{b}: no right image for {len(missing)} left image(s), e.g. {missing[0]}; "
                              "pairs are matched by file name")  # fmt: skip
        if not pairs:
            raise ParvisError(f"{a}: no images")
        return pairs
    raise ParvisError(f"{left} and {right}: give two image files or two folders, not one of each")


def read_pair(left: Path, right: Path) -> torch.Tensor:
    """(6, H, W) uint8: left RGB then right RGB; the views must have the same size."""
    views = [decode(read_bytes(p), name=p) for p in (left, right)]
    if views[0].shape != views[1].shape:
        raise ParvisError(f"{right}: {views[1].shape[1]}x{views[1].shape[0]} px, but {left} is "
                          f"{views[0].shape[1]}x{views[0].shape[0]}; a rectified pair has one size")  # fmt: skip
    return torch.from_numpy(np.concatenate(views, axis=2)).permute(2, 0, 1).contiguous()


def colorize(disparity: np.ndarray, max_disp: float) -> np.ndarray:
    """(H, W, 3) uint8: disparity through matplotlib's magma map (near = bright), 0..max_disp."""
    from matplotlib import colormaps  # noqa: PLC0415 - heavy: only when colour images are written

    scaled = np.clip(disparity / max(max_disp, 1e-6), 0, 1)
    return (colormaps["magma"](scaled)[..., :3] * 255).astype(np.uint8)


def _save_png(path: Path, image: Image.Image) -> Path:
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def predict_pairs(model, pairs: list[tuple[Path, Path]], out: str | Path, device: torch.device,
                  planes: list[float] | None = None) -> list[dict]:  # fmt: skip
    """Run a stereo model (from open_predictor) on each pair; write PNGs and results.json under `out`."""
    meta = model.meta
    if meta.task != "stereo":
        raise ParvisError(f"{meta.name} is a {meta.task} model; LEFT RIGHT pairs need a stereo model")
    out = Path(out)
    planes = list(planes or [])
    mean = torch.tensor(meta.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(meta.std, dtype=torch.float32).view(1, -1, 1, 1)
    max_disp = float(meta.extra.get("max_disp", 64))
    focal_baseline = meta.extra.get("focal_baseline")
    results = []
    for left, right in pairs:
        start = time.perf_counter()
        x = ((read_pair(left, right)[None].float() / 255 - mean) / std).to(device)
        with torch.inference_mode():
            disparity = model(x).float()[0, 0].cpu()
            logits = model.plane_logits(x, planes) if planes and hasattr(model, "plane_logits") else None
        ms = (time.perf_counter() - start) * 1000
        stem = left.stem
        d = disparity.numpy()
        png = Image.fromarray(np.clip(np.round(d * 256), 0, 65535).astype(np.uint16))
        record = {
            "left": str(left),
            "right": str(right),
            "disparity": str(_save_png(out / "disparity" / f"{stem}.png", png)),
            "color": str(_save_png(out / "color" / f"{stem}.png", Image.fromarray(colorize(d, max_disp)))),
            "ms": round(ms, 2),
            **model.postprocess(disparity[None, None])[0].to_dict(),
        }
        if planes:
            record["planes_from"] = "plane head" if logits is not None else "dense disparity"
            record["planes"] = {}
            for k, plane in enumerate(planes):
                closer = (logits[0, k] > 0).cpu().numpy() if logits is not None else d > plane
                mask = Image.fromarray((closer * 255).astype(np.uint8))
                name = f"{stem}_closer_{plane:g}px.png"
                record["planes"][f"{plane:g}"] = {
                    "mask": str(_save_png(out / "planes" / name, mask)),
                    "closer_share": float(closer.mean()),
                    **({"depth_m": focal_baseline / plane} if focal_baseline else {}),
                }
        results.append(record)
    atomic_write_text(out / "results.json", json.dumps(results, indent=2))
    return results
