"""Predict on image files with a loaded model (see `parvis.runtimes.open_predictor`): JSON, PNG masks, overlays.

Preprocessing comes from the model's metadata (input size, mean/std, crop, task, class names), so
no flag repeats what the model already knows.
"""

from __future__ import annotations

import glob
import json
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import tv_tensors

from parvis import runtime
from parvis.data.decode import IMAGE_SUFFIXES, read_image, to_tensor
from parvis.data.transforms import Normalize
from parvis.draw import annotate, encode_jpeg, grey_png, heat_scale, heat_values, mask_png
from parvis.errors import BadSampleError, ParvisError
from parvis.io import atomic_write_bytes, atomic_write_text
from parvis.models import ModelMeta, VisionModel, eval_transform
from parvis.structures import Detections

# Detections scoring below this stay in results.json but are not drawn (the model keeps low scores for mAP).
DRAW_SCORE = 0.3


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


def _decode(path: Path, transform) -> tuple[Path, np.ndarray | None, torch.Tensor | None, str | None, float]:
    t0 = time.perf_counter()
    try:
        array = read_image(path)
    except BadSampleError as exc:
        return path, None, None, exc.reason, time.perf_counter() - t0
    image = transform(tv_tensors.Image(to_tensor(array))).as_subclass(torch.Tensor)
    return path, array, image.permute(1, 2, 0), None, time.perf_counter() - t0


def _put(q: queue.Queue, item, stop: threading.Event, consumer=None) -> None:
    """Put with back-pressure; gives up when `stop` is set, raises the `consumer` future's error."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            if consumer is not None and consumer.done():
                consumer.result()
                raise RuntimeError("the writer stage ended early") from None


def _get(q: queue.Queue, producer=None, stop: threading.Event | None = None):
    """The next item; None when `producer` (a future) has ended without one or `stop` is set. A
    producer's exception is raised here, in the consumer."""
    while True:
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            if stop is not None and stop.is_set():
                return None
            if producer is not None and producer.done():
                producer.result()
                return q.get_nowait() if not q.empty() else None


@torch.no_grad()
def predict_files(
    model: VisionModel,
    files: list[Path],
    out: str | Path,
    device: torch.device,
    batch_size: int = 16,
    decode_threads: int = 1,
    overlays: bool = True,
    stats: dict | None = None,
    write_results: bool = True,
) -> list[dict]:
    """Predict every file; write results.json (detection: boxes in the file's pixels; not with
    `write_results` false, as scale-out writes Parquet parts instead), masks/*.png for
    segmentation, and overlays/*.jpg (masks blended, boxes or the class drawn).

    Three stages overlap over bounded queues: `decode_threads` threads decode and resize batch k+1
    while the model runs batch k and a writer thread encodes the outputs of batch k-1. `stats`, when
    given, receives the wall time and each stage's busy time.
    """
    meta = model.meta
    out = Path(out)
    transform = eval_transform(meta)
    normalize = Normalize(meta.mean, meta.std, memory_format=runtime.preferred_memory_format(device)).to(device)
    chunks = [files[i : i + batch_size] for i in range(0, len(files), batch_size)]
    ready: queue.Queue = queue.Queue(maxsize=2)
    done: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()
    busy = {"decode_s": 0.0, "infer_s": 0.0, "write_s": 0.0}
    results: list[dict] = []

    def read() -> None:
        with ThreadPoolExecutor(max(1, decode_threads), thread_name_prefix="parvis-decode") as pool:
            for chunk in chunks:
                decoded = list(pool.map(lambda p: _decode(p, transform), chunk))
                busy["decode_s"] += sum(d[-1] for d in decoded)
                _put(ready, decoded, stop)
        _put(ready, None, stop)

    def write() -> None:
        while (item := _get(done, stop=stop)) is not None:
            t0 = time.perf_counter()
            decoded, raw = item
            _write_outputs(model, decoded, raw, out, overlays, results)
            busy["write_s"] += time.perf_counter() - t0

    start = time.perf_counter()
    with ThreadPoolExecutor(2, thread_name_prefix="parvis-predict") as stages:
        reader = stages.submit(read)
        writer = stages.submit(write)
        try:
            while (decoded := _get(ready, reader)) is not None:
                t0 = time.perf_counter()
                inputs = [d[2] for d in decoded if d[2] is not None]
                raw = None
                if inputs:
                    batch = normalize(torch.stack(inputs).permute(0, 3, 1, 2).to(device))
                    raw = model(batch).float()  # the model applies its own precision (open_predictor)
                busy["infer_s"] += time.perf_counter() - t0
                _put(done, (decoded, raw), stop, writer)
            _put(done, None, stop, writer)
            writer.result()
        finally:
            stop.set()
    wall = time.perf_counter() - start
    if write_results:
        atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    if stats is not None:
        stats.update(busy, wall_s=wall, images=len(files), images_per_s=len(files) / wall if wall > 0 else 0.0)
    return results


def _write_outputs(model, decoded, raw, out: Path, overlays: bool, results: list[dict]) -> None:
    meta = model.meta
    ok = [d for d in decoded if d[3] is None]
    post = iter(zip(ok, raw, model.postprocess(raw), strict=True)) if ok else iter(())
    for path, array, _, error, _ in decoded:
        if error is not None:
            results.append({"file": str(path), "error": error})
            continue
        _, logits, result = next(post)
        record = {"file": str(path)}
        if meta.task == "detection":
            result = _in_file_pixels(result, array, meta)
            record.update(width=array.shape[1], height=array.shape[0])
        elif meta.task == "segmentation":
            # Back to the file's own resolution before the argmax, so masks line up with the image.
            full = F.interpolate(logits[None], size=array.shape[:2], mode="bilinear", align_corners=False)
            mask = full[0].argmax(0).to(torch.uint8).cpu().numpy()
            result = result.__class__(torch.from_numpy(mask).long(), meta.class_names)
        record.update(result.to_dict())
        if meta.task == "segmentation":
            record["mask"] = _write_mask(out / "masks" / f"{path.stem}.png", mask)
        elif meta.task == "inspection":  # the anomaly map at the file's size: 255 = heatmap_scale
            heat = grey_png(heat_values(result, array.shape[:2]))
            record["heatmap"] = str(out / "heatmaps" / f"{path.stem}.png")
            record["heatmap_scale"] = heat_scale(result)
            atomic_write_bytes(Path(record["heatmap"]), heat, durable=False)
        if overlays:
            # Every detection the model kept goes to the JSON; those scoring at least DRAW_SCORE are drawn.
            drawn = annotate(array, result, min_score=DRAW_SCORE)
            record["overlay"] = _write_jpeg(out / "overlays" / f"{path.stem}.jpg", drawn)
        results.append(record)


def _in_file_pixels(result: Detections, array: np.ndarray, meta: ModelMeta) -> Detections:
    """Boxes scaled from the model's input back to the file's pixels."""
    height, width = array.shape[:2]
    scale = torch.tensor([width, height, width, height], dtype=torch.float32) / meta.input_size
    boxes = result.boxes.detach().float().cpu() * scale
    return Detections(boxes, result.scores.detach().cpu(), result.labels.detach().cpu(), meta.class_names)


def _write_mask(path: Path, mask: np.ndarray) -> str:
    atomic_write_bytes(path, mask_png(mask), durable=False)  # per image: rename-atomic, no fsync each
    return str(path)


def _write_jpeg(path: Path, image: np.ndarray) -> str:
    atomic_write_bytes(path, encode_jpeg(image), durable=False)  # per image: rename-atomic, no fsync each
    return str(path)
