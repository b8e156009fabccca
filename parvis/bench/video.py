"""`parvis bench video`: the multi-stream pipeline against its ceiling and a sequential peer.

For every (streams, batch) pair, in one run:
  aggregate_fps     frames per second of `parvis video` (decode, batch across streams, infer, track,
                    annotate, encode) over all streams
  model_only_img_s  the same runtime on preprocessed frames at the same batch, nothing else
  ceiling_fps       1 / (decode + inference at that batch + tracking + annotate and encode), per frame,
                    each stage timed alone here: on a CPU every stage shares the same cores, so that sum
                    bounds any pipeline; on a GPU the ceiling is the slowest stage instead
  peer_fps          a plain loop over the streams one after another: PyAV decode, the model per frame,
                    supervision's ByteTrack, PyAV encode (the way most people first write it); detection
                    models only, with supervision installed (pip install ".[peers]"), else a note says why
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from parvis.data.video_io import open_writer, read_frames
from parvis.draw import annotate
from parvis.errors import ParvisError
from parvis.structures import Detections
from parvis.video.pipeline import _to_frame, preprocessor, run_video
from parvis.video.tracker import ByteTracker


def _clips(folder: Path, n: int) -> list[str]:
    clips = sorted(str(p) for p in (folder / "clips").glob("*.mp4")) if (folder / "clips").is_dir() else []
    clips = clips or sorted(str(p) for p in folder.glob("*.mp4"))
    if len(clips) < n:
        raise ParvisError(f"{folder}: has {len(clips)} clips, the sweep needs {n}; pass --clips with more")
    return clips[:n]


def stage_times(model, clip: str, batch: int, score_threshold: float = 0.3) -> dict:
    """Per-frame ms of each stage alone, on one clip: decode (+ preprocessing), inference at `batch`,
    tracking, annotate + encode."""
    prep = preprocessor(model.meta)
    t0 = time.perf_counter()
    frames, inputs = [], []
    for frame in read_frames(clip):
        x, scale = prep(frame)
        frames.append(frame)
        inputs.append(x)
    decode = (time.perf_counter() - t0) / len(frames)
    results = []
    times = []
    with torch.inference_mode():
        model(torch.stack(inputs[:batch]))  # warm-up
        for i in range(0, len(inputs) - batch + 1, batch):
            t = time.perf_counter()
            raw = model(torch.stack(inputs[i : i + batch]))
            out = model.postprocess(raw)
            times.append(time.perf_counter() - t)
            results += out
    infer = statistics.median(times) / batch
    tracked = []
    tracker = ByteTracker()
    t0 = time.perf_counter()
    for r in results:
        if model.meta.task == "detection":
            r = tracker.update(_to_frame(r, scale, score_threshold))
        tracked.append(r)
    track = (time.perf_counter() - t0) / max(1, len(results))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        with open_writer(Path(tmp) / "x.mp4", frames[0].shape[1], frames[0].shape[0], 15.0) as writer:
            for frame, r in zip(frames, tracked, strict=False):
                writer.write(annotate(frame, r))
        encode = (time.perf_counter() - t0) / max(1, len(tracked))
    return {"decode_ms": decode * 1000, "infer_ms": infer * 1000, "track_ms": track * 1000, "encode_ms": encode * 1000,
            "model_only_img_s": batch / statistics.median(times)}  # fmt: skip


def sequential_peer(model, clips: list[str], out: Path) -> float | None:
    """Frames/s of the plain loop: one stream after another, the model per frame, supervision's
    ByteTrack, PyAV encode. None when supervision is not installed."""
    try:
        import supervision as sv  # noqa: PLC0415 - optional peer (pip install ".[peers]")
    except ImportError:
        return None
    prep = preprocessor(model.meta)
    frames_done = 0
    start = time.perf_counter()
    with torch.inference_mode():
        for k, clip in enumerate(clips):
            tracker = sv.ByteTrack()
            writer_cm = None
            for frame in read_frames(clip):
                x, scale = prep(frame)
                det = model.postprocess(model(x[None]))[0]
                det = _to_frame(det, scale, 0.3)
                sv_det = sv.Detections(xyxy=det.boxes.numpy(), confidence=det.scores.numpy(),
                                       class_id=det.labels.numpy().astype(int))  # fmt: skip
                sv_det = tracker.update_with_detections(sv_det)
                n = len(sv_det)
                shown = Detections(
                    torch.as_tensor(sv_det.xyxy, dtype=torch.float32).reshape(n, 4),
                    torch.as_tensor(sv_det.confidence if n else [], dtype=torch.float32),
                    torch.as_tensor(sv_det.class_id if n else [], dtype=torch.int64),
                    det.class_names,
                    torch.as_tensor(sv_det.tracker_id if n else [], dtype=torch.int64),
                )
                if writer_cm is None:
                    writer_cm = open_writer(out / f"peer_{k}.mp4", frame.shape[1], frame.shape[0], 15.0)
                    writer = writer_cm.__enter__()
                writer.write(annotate(frame, shown))
                frames_done += 1
            if writer_cm is not None:
                writer_cm.__exit__(None, None, None)
    return frames_done / (time.perf_counter() - start)


def bench_video(
    model,
    clips_dir: Path,
    streams: list[int],
    batches: list[int] | None = None,
    progress=None,
) -> dict:
    clips = _clips(clips_dir, max(streams))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for s in streams:
            for b in batches or sorted({1, s}):
                run = run_video(clips[:s], model, tmp / f"run_{s}_{b}", batch=b)
                stages = stage_times(model, clips[0], b)
                per_frame = stages["decode_ms"] + stages["infer_ms"] + stages["track_ms"] + stages["encode_ms"]
                peer = sequential_peer(model, clips[:s], tmp) if model.meta.task == "detection" else None
                row = {"streams": s, "batch": b, "aggregate_fps": run["aggregate_fps"],
                       "mean_batch": run["mean_batch"], "model_only_img_s": stages["model_only_img_s"],
                       "ceiling_fps": 1000.0 / per_frame, **{k: v for k, v in stages.items() if k.endswith("_ms")},
                       "peer_fps": peer}  # fmt: skip
                row["ceiling_ratio"] = row["aggregate_fps"] / row["ceiling_fps"]
                row["vs_peer"] = row["aggregate_fps"] / peer if peer else None
                row["dropped"] = sum(x["dropped"] for x in run["streams"])
                if run.get("tracking"):  # over all streams, as MOTChallenge sums sequences
                    row["mota"] = run["tracking"]["mota"]
                    row["id_switches"] = run["tracking"]["id_switches"]
                    row["idf1_mean"] = run["tracking"]["idf1_mean"]
                rows.append(row)
                if progress:
                    progress(row)
    return {"rows": rows, "clips": clips, "notes": _peer_notes(model.meta.task, rows)}


def _peer_notes(task: str, rows: list[dict]) -> list[str]:
    """One line saying why the peer columns are empty, when they are."""
    if task != "detection":
        return [f"peer columns empty: the sequential peer loop tracks detections; a {task} model has none"]
    if any(r["peer_fps"] is None for r in rows):
        return ['peer columns empty: the sequential peer needs supervision (its ByteTrack): pip install ".[peers]"']
    return []
