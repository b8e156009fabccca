"""`parvis bench stereo`: OpenCV's StereoSGBM against learned stereo models on the same pairs.

Every method sees the same rectified pairs at their own resolution, with the same thread count,
and is scored by the same code (`parvis.engine.stereo_metrics`) on the pixels with ground truth.

SGBM (opencv-python-headless, an optional dependency) runs with the parameters OpenCV's own
stereo_match sample uses for colour images: block 5, P1 = 8 * 3 * 5^2, P2 = 32 * 3 * 5^2,
uniqueness 10, speckle window 100 / range 2 (in disparity units), disp12MaxDiff 1, the 3-way
mode, numDisparities = the data's max_disp rounded up to 16. SGBM leaves holes (occlusions,
left border, failed uniqueness); as KITTI's devkit does for sparse methods, each hole is filled
with the smaller of its row's nearest valid disparities to the left and right (background
interpolation), so every method is scored on every valid pixel; `density` says how many pixels
SGBM itself answered. Timing includes the hole filling.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from parvis.data.check import load_config as load_data_config
from parvis.data.check import open_dataset
from parvis.engine.loading import load_trained
from parvis.engine.stereo_metrics import error_sums, eval_planes, metrics_from_sums, plane_sums
from parvis.errors import ParvisError
from parvis.runtimes import open_predictor

SGBM_BLOCK = 5


def sgbm_matcher(max_disp: int, threads: int):
    """OpenCV's StereoSGBM with the parameters in the module docstring."""
    try:
        import cv2  # noqa: PLC0415 - optional dependency of this benchmark only
    except ImportError:
        raise ParvisError("bench stereo's SGBM baseline needs OpenCV: pip install opencv-python-headless") from None
    cv2.setNumThreads(threads)
    block = SGBM_BLOCK
    return cv2.StereoSGBM_create(
        minDisparity=0,
        numDisparities=max(16, -(-int(max_disp) // 16) * 16),
        blockSize=block,
        P1=8 * 3 * block * block,
        P2=32 * 3 * block * block,
        disp12MaxDiff=1,
        uniquenessRatio=10,
        speckleWindowSize=100,
        speckleRange=2,
        mode=cv2.STEREO_SGBM_MODE_SGBM_3WAY,
    )


def fill_holes(disparity: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Each invalid pixel gets min(nearest valid to its left, nearest valid to its right) in its row
    (one side when only one exists; 0 for a row with none): KITTI's background interpolation."""
    h, w = disparity.shape
    cols = np.arange(w)
    out = np.zeros_like(disparity, dtype=np.float32)
    for y in range(h):
        ok = valid[y]
        if not ok.any():
            continue
        row = disparity[y].astype(np.float32)
        idx_left = np.maximum.accumulate(np.where(ok, cols, -1))
        idx_right = np.minimum.accumulate(np.where(ok, cols, w)[::-1])[::-1]
        left = np.where(idx_left >= 0, row[np.clip(idx_left, 0, w - 1)], np.inf)
        right = np.where(idx_right < w, row[np.clip(idx_right, 0, w - 1)], np.inf)
        out[y] = np.where(ok, row, np.minimum(left, right))
    return out


def sgbm_disparity(matcher, left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, float]:
    """(filled disparity in px, share of pixels SGBM answered) for uint8 RGB (H, W, 3) views."""
    raw = matcher.compute(np.ascontiguousarray(left[..., ::-1]), np.ascontiguousarray(right[..., ::-1]))
    valid = raw >= 0  # OpenCV marks holes with (minDisparity - 1) * 16
    disparity = raw.astype(np.float32) / 16.0
    return fill_holes(disparity, valid), float(valid.mean())


def _percentiles(ms: list[float]) -> dict[str, float]:
    return {"ms_p50": float(np.percentile(ms, 50)), "ms_p95": float(np.percentile(ms, 95))}


def _timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - start) * 1000


def open_stereo_model(source: str, threads: int) -> tuple[str, object, dict]:
    """(label, model, info): a parvis checkpoint runs eagerly at fp32 (so the plane head can be timed
    against the dense head of the same network); artifacts and optimize folders through their runtime."""
    if str(source).endswith(".pt"):
        model = load_trained(source, torch.device("cpu")).eval()
        if model.meta.task != "stereo":
            raise ParvisError(f"{source}: a {model.meta.task} model; bench stereo needs a stereo one")
        info = {"runtime": "torch", "precision": "fp32", "threads": threads}
        return f"{model.meta.name}", model, info
    model, info = open_predictor(source, torch.device("cpu"), None, "auto", threads)
    if model.meta.task != "stereo":
        raise ParvisError(f"{source}: a {model.meta.task} model; bench stereo needs a stereo one")
    return f"{model.meta.name} ({info.get('runtime')})", model, info


def bench_stereo(
    models: list[tuple[str, object, dict]],
    data: str,
    split: str = "val",
    threads: int = 2,
    max_pairs: int | None = None,
    warmup: int = 2,
    progress: Callable[[str], None] = lambda _: None,
) -> dict:
    """Rows for `sgbm` and each learned model: epe, bad1/2/3, d1, ms_p50/ms_p95 per pair; for a model
    with a plane head also ms per plane (one plane) and plane accuracy on three planes.

    `models`: (label, model from open_predictor, its info). The pairs are read once and fed to each
    method in turn, so file reading is in no one's time.
    """
    dataset = open_dataset(data, "stereo", split)
    n = len(dataset) if max_pairs is None else min(len(dataset), max_pairs)
    if n == 0:
        raise ParvisError(f"{data}: the {split} split has no stereo pairs")
    max_disp = int((load_data_config(data) or {}).get("max_disp") or 0)
    pairs = []
    for i in range(n):
        image, target = dataset[i]
        if target is None:
            raise ParvisError(f"{dataset.pair_paths(i)[0]}: no ground-truth disparity; bench stereo needs it")
        pairs.append((image.as_subclass(torch.Tensor), target))
    if not max_disp:
        max_disp = int(max(float(t.max()) for _, t in pairs)) + 1
    torch.set_num_threads(threads)
    rows = [_sgbm_row(pairs, max_disp, threads, warmup, progress)]
    for label, model, info in models:
        rows.append(_model_row(label, model, info, pairs, max_disp, warmup, progress))
    best = min(rows[1:], key=lambda r: r["epe"], default=None)
    return {
        "data": str(data),
        "split": split,
        "pairs": n,
        "size": f"{pairs[0][0].shape[-1]}x{pairs[0][0].shape[-2]}",
        "max_disp": max_disp,
        "threads": threads,
        "rows": rows,
        "learned_beats_sgbm": None
        if best is None
        else bool(best["epe"] < rows[0]["epe"] and best["bad3"] < rows[0]["bad3"]),
    }


def _sgbm_row(pairs, max_disp: int, threads: int, warmup: int, progress) -> dict:
    matcher = sgbm_matcher(max_disp, threads)
    sums = torch.zeros(6, dtype=torch.float64)
    times, density = [], []
    for i, (image, target) in enumerate(pairs):
        left = image[:3].permute(1, 2, 0).numpy()
        right = image[3:].permute(1, 2, 0).numpy()
        if i < warmup:
            sgbm_disparity(matcher, left, right)
        (disparity, dense), ms = _timed(lambda left=left, right=right: sgbm_disparity(matcher, left, right))
        times.append(ms)
        density.append(dense)
        sums += error_sums(torch.from_numpy(disparity), target)
    row = {"method": "sgbm", "runtime": f"opencv {_cv2_version()}", "precision": "int16", **metrics_from_sums(sums)}
    row.update(_percentiles(times))
    row["density"] = float(np.mean(density))
    progress(f"sgbm: EPE {row['epe']:.3f} px, bad-3 {row['bad3']:.2f}%, {row['ms_p50']:.1f} ms/pair")
    return row


def _cv2_version() -> str:
    import cv2  # noqa: PLC0415 - optional dependency, imported by sgbm_matcher first

    return cv2.__version__


def _model_row(label: str, model, info: dict, pairs, max_disp: int, warmup: int, progress) -> dict:
    mean = torch.tensor(model.meta.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(model.meta.std, dtype=torch.float32).view(1, -1, 1, 1)
    planes_of = getattr(model, "forward_planes", None)
    planes = eval_planes(max_disp)
    sums = torch.zeros(6, dtype=torch.float64)
    plane_stats = torch.zeros(len(planes), 4, dtype=torch.float64)
    times, plane_times = [], []
    with torch.inference_mode():
        for i, (image, target) in enumerate(pairs):
            x = (image[None].float() / 255 - mean) / std
            if i < warmup:
                model(x)
                if planes_of is not None:
                    planes_of(x, planes[:1])
            raw, ms = _timed(lambda x=x: model(x))
            times.append(ms)
            disparity = torch.as_tensor(np.asarray(raw) if not isinstance(raw, torch.Tensor) else raw)
            sums += error_sums(disparity.float().reshape(target.shape), target)
            if planes_of is not None:
                _, plane_ms = _timed(lambda x=x: planes_of(x, planes[:1]))
                plane_times.append(plane_ms)
                probs = planes_of(x, planes).float().sigmoid()[0]
                for k, plane in enumerate(planes):
                    plane_stats[k] += plane_sums(probs[k] > 0.5, target, plane)
    row = {
        "method": label,
        "runtime": info.get("runtime"),
        "precision": info.get("precision"),
        **metrics_from_sums(sums),
        **_percentiles(times),
    }
    if plane_times:
        row["ms_per_plane_p50"] = float(np.percentile(plane_times, 50))
        row["plane_cost_ratio"] = row["ms_per_plane_p50"] / row["ms_p50"]
        acc = plane_stats[:, 1] / plane_stats[:, 0].clamp(min=1)
        row["plane_acc"] = float(acc.mean())
        row["plane_iou"] = float((plane_stats[:, 2] / plane_stats[:, 3].clamp(min=1)).mean())
        row["planes"] = planes
    progress(
        f"{label}: EPE {row['epe']:.3f} px, bad-3 {row['bad3']:.2f}%, {row['ms_p50']:.1f} ms/pair"
        + (f", one plane {row['ms_per_plane_p50']:.1f} ms ({row['plane_cost_ratio']:.2f}x)" if plane_times else "")
    )
    return row
