"""Many video streams through one model: decode -> batch across streams -> infer -> track -> annotate -> write.

    summary = run_video(["a.mp4", "b.mp4"], model, out="runs/video", batch=4)

Stages are threads joined by bounded queues:

    source threads (one per stream: decode + resize + normalize)
        -> StreamMuxer (batches across streams; back-pressure in file mode, counted drops in live mode)
        -> inference thread (one batch at a time, any runtime)
        -> tracking thread (one ByteTracker per stream: all tracking state lives on this thread; annotation)
        -> writer thread (annotated MP4 and JSONL per stream, atomically renamed when complete)

A source that fails (missing file, unreadable stream, lost connection) is reported in the summary and
closed; the other streams go on. Network sources retry with backoff before giving up.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from parvis.data.decode import IMAGE_SUFFIXES, read_image
from parvis.errors import BadSampleError, ParvisError
from parvis.video.muxer import StreamMuxer

NETWORK_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")


def is_network(source: str) -> bool:
    return source.lower().startswith(NETWORK_SCHEMES)


# --------------------------------------------------------------------------- sources


@dataclass
class FrameItem:
    image: np.ndarray  # the decoded frame, RGB uint8 (H, W, 3)
    tensor: torch.Tensor  # model input, normalized float (3, S, S)
    scale: float  # model pixels per frame pixel (letterbox)
    t_decoded: float


@dataclass
class StreamState:
    source: str
    live: bool
    fps: float = 15.0
    size: tuple[int, int] | None = None  # (width, height)
    decoded: int = 0
    written: int = 0
    corrupt: int = 0
    retries: int = 0
    error: str | None = None
    latencies: list[float] = field(default_factory=list)
    t_first: float | None = None
    t_last: float | None = None
    busy_decode_s: float = 0.0


def _frames_of(source: str, state: StreamState) -> Iterator[np.ndarray]:
    """Frames of a file, URL or image folder, as RGB uint8 arrays; corrupt frames are skipped and
    counted by the reader."""
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ParvisError(f"{source}: no images in the folder")
        for file in files:
            try:
                yield read_image(file)
            except BadSampleError:
                state.corrupt += 1
        return
    if not is_network(source) and not path.exists():
        raise ParvisError(f"{source}: no such file or folder")
    from parvis.video.io import probe, read_frames

    if not is_network(source):
        info = probe(source)
        state.fps = float(info.get("fps") or state.fps)
    yield from read_frames(source, on_corrupt=lambda: _count_corrupt(state))


def _count_corrupt(state: StreamState) -> None:
    state.corrupt += 1


class EvalPreset:
    """Classification and segmentation: the model's own eval preset (as predict and serve use)."""

    def __init__(self, meta):
        from parvis.data.transforms import EvalPreprocess

        self.prepare = EvalPreprocess(meta.task, meta.input_size, meta.mean, meta.std)

    def __call__(self, frame: np.ndarray) -> tuple[torch.Tensor, float]:
        return self.prepare(frame), 1.0


def preprocessor(meta):
    return Letterbox(meta) if meta.task == "detection" else EvalPreset(meta)


class Letterbox:
    """RGB frame -> (3, S, S) normalized float: pad to a square (bottom/right), resize to the model's
    input size. Boxes come back to the frame by dividing by `scale`. Keeping the aspect ratio keeps
    objects the shape the model was trained on."""

    def __init__(self, meta):
        self.size = meta.input_size
        self.mean = torch.tensor(meta.mean).view(3, 1, 1) * 255.0
        self.std = torch.tensor(meta.std).view(3, 1, 1) * 255.0

    def __call__(self, frame: np.ndarray) -> tuple[torch.Tensor, float]:
        h, w = frame.shape[:2]
        side = max(h, w)
        x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).float()
        if h != w:
            x = F.pad(x, (0, side - w, 0, side - h), value=114.0)
        x = F.interpolate(x[None], size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        return ((x[0] - self.mean) / self.std).contiguous(), self.size / side


def _source_thread(stream: int, state: StreamState, mux: StreamMuxer, prep: Letterbox, stop: threading.Event,
                   retries: int) -> None:  # fmt: skip
    index = 0
    attempt = 0
    while not stop.is_set():
        try:
            t0 = time.perf_counter()
            for frame in _frames_of(state.source, state):
                tensor, scale = prep(frame)
                now = time.perf_counter()
                state.busy_decode_s += now - t0
                state.size = (frame.shape[1], frame.shape[0])
                state.decoded += 1
                state.t_first = state.t_first or now
                if not mux.put(stream, index, FrameItem(frame, tensor, scale, now)):
                    return
                index += 1
                attempt = 0  # a working connection resets the backoff
                if stop.is_set():
                    break
                t0 = time.perf_counter()
            break  # the source ended normally
        except Exception as exc:  # noqa: BLE001 - any failure closes this stream only, with its reason
            reason = str(exc) if isinstance(exc, ParvisError) else f"{type(exc).__name__}: {exc}"
            if is_network(state.source) and attempt < retries and not stop.is_set():
                attempt += 1
                state.retries += 1
                stop.wait(min(8.0, 0.5 * 2 ** (attempt - 1)))  # backoff 0.5, 1, 2, 4, 8 s
                continue
            state.error = reason.splitlines()[0] if reason else type(exc).__name__
            break
    mux.end(stream)


# --------------------------------------------------------------------------- run


def run_video(
    sources: list[str],
    model,
    out: str | Path,
    batch: int = 4,
    live: bool | None = None,
    push_timeout_ms: float = 20.0,
    queue_size: int = 4,
    write_video: bool = True,
    score_threshold: float = 0.3,
    retries: int = 5,
    progress=None,
    tracker_factory=None,
    track_threshold: float = 0.4,
    mosaic: bool = False,
) -> dict:
    """Run every source through `model` (a VisionModel, e.g. from load_predictor); write per-stream
    annotated MP4 and JSONL under `out` and return (and write) summary.json's content."""
    from parvis.video.annotate import annotate
    from parvis.video.mot import format_mot
    from parvis.video.tracker import ByteTracker

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = model.meta
    n = len(sources)
    states = [StreamState(s, is_network(s) if live is None else live) for s in sources]
    mux = StreamMuxer(n, batch, push_timeout_ms, queue_size, [s.live for s in states])
    prep = preprocessor(meta)
    stop = threading.Event()
    to_track: queue.Queue = queue.Queue(maxsize=4)
    to_write: queue.Queue = queue.Queue(maxsize=8)
    busy = {"infer_s": 0.0, "track_s": 0.0, "annotate_s": 0.0, "write_s": 0.0}
    batches: list[int] = []
    failure: list[BaseException] = []
    # Tracks start from detections scoring >= track_threshold and are confirmed at once; lower scores
    # (down to 0.1) only continue tracks. On the synthetic clips with the shapes detector: MOTA 0.82
    # at 0.4 and one hit, 0.76 with ByteTrack's usual 0.5 and two hits (its scores on video run lower).
    make_tracker = tracker_factory or (lambda: ByteTracker(high_thresh=track_threshold, min_hits=1))

    def infer() -> None:
        try:
            with torch.inference_mode():
                for packets in mux.batches():
                    t0 = time.perf_counter()
                    x = torch.stack([p.item.tensor for p in packets])
                    raw = model(x)
                    results = model.postprocess(raw)
                    busy["infer_s"] += time.perf_counter() - t0
                    batches.append(len(packets))
                    to_track.put(list(zip(packets, results, strict=True)))
        except BaseException as exc:  # noqa: BLE001 - reported by run_video
            failure.append(exc)
            stop.set()
            mux.close()
        finally:
            to_track.put(None)

    def track() -> None:
        trackers = {}
        try:
            while (items := to_track.get()) is not None:
                for packet, result in items:
                    state = states[packet.stream]
                    t0 = time.perf_counter()
                    if meta.task == "detection":
                        result = _to_frame(result, packet.item.scale, score_threshold)
                        tracker = trackers.setdefault(packet.stream, make_tracker())
                        result = tracker.update(result)
                    t1 = time.perf_counter()
                    frame = annotate(packet.item.image, result) if write_video else None
                    t2 = time.perf_counter()
                    busy["track_s"] += t1 - t0
                    busy["annotate_s"] += t2 - t1
                    to_write.put((packet, state, result, frame))
        except BaseException as exc:  # noqa: BLE001
            failure.append(exc)
            stop.set()
            mux.close()
            while to_track.get() is not None:  # let the inference thread finish
                pass
        finally:
            to_write.put(None)

    tiler = Mosaic(n) if mosaic and write_video else None

    def write() -> None:
        writers, logs, tmp_logs = {}, {}, {}
        try:
            while (item := to_write.get()) is not None:
                packet, state, result, frame = item
                t0 = time.perf_counter()
                s = packet.stream
                if (s, "jsonl") not in logs:
                    for kind in ("jsonl", "mot.txt") if meta.task == "detection" else ("jsonl",):
                        tmp_logs[(s, kind)] = out / f".stream_{s}.{kind}.partial"
                        logs[(s, kind)] = open(tmp_logs[(s, kind)], "w")  # noqa: SIM115 - closed below
                event = {"stream": s, "source": state.source, "frame": packet.index, "t": round(time.time(), 3),
                         **result.to_dict()}  # fmt: skip
                logs[(s, "jsonl")].write(json.dumps(event) + "\n")
                if (s, "mot.txt") in logs:  # MOTChallenge tracks, 1-based frames, for MOT evaluation
                    logs[(s, "mot.txt")].writelines(line + "\n" for line in format_mot(packet.index + 1, result))
                if frame is not None:
                    if s not in writers:
                        from parvis.video.io import open_writer

                        cm = open_writer(out / f"stream_{s}.mp4", frame.shape[1], frame.shape[0], state.fps)
                        writers[s] = (cm, cm.__enter__())
                    writers[s][1].write(frame)
                    if tiler is not None:
                        # The mosaic advances with the lowest-numbered stream that still has frames to come.
                        leader = next(
                            (i for i in range(n) if not (mux.ended[i] and states[i].written >= states[i].decoded)), s
                        )
                        tile = tiler.add(s, frame, leader)
                    if tiler is not None and tile is not None:
                        if "mosaic" not in writers:
                            from parvis.video.io import open_writer

                            cm = open_writer(out / "mosaic.mp4", tile.shape[1], tile.shape[0], states[s].fps)
                            writers["mosaic"] = (cm, cm.__enter__())
                        writers["mosaic"][1].write(tile)
                now = time.perf_counter()
                busy["write_s"] += now - t0
                state.written += 1
                state.t_last = now
                state.latencies.append(now - packet.item.t_decoded)
                if progress is not None:
                    progress(states, mux, {"decode_s": sum(x.busy_decode_s for x in states), **busy})
        except BaseException as exc:  # noqa: BLE001
            failure.append(exc)
            stop.set()
            mux.close()
            while to_write.get() is not None:
                pass
        finally:
            for cm, _ in writers.values():
                cm.__exit__(*((type(failure[0]), failure[0], None) if failure else (None, None, None)))
            for (s, kind), f in logs.items():
                f.close()
                if not failure:
                    tmp_logs[(s, kind)].replace(out / f"stream_{s}.{kind}")
                else:
                    tmp_logs[(s, kind)].unlink(missing_ok=True)

    start = time.perf_counter()
    sources_t = [
        threading.Thread(
            target=_source_thread, args=(i, states[i], mux, prep, stop, retries), daemon=True, name=f"parvis-source-{i}"
        )  # fmt: skip
        for i in range(n)
    ]
    stages = [threading.Thread(target=f, daemon=True, name=f"parvis-{f.__name__}") for f in (infer, track, write)]
    for t in sources_t + stages:
        t.start()
    try:
        for t in stages:
            while t.is_alive():
                t.join(0.2)
    except KeyboardInterrupt:
        stop.set()
        mux.close()
        for t in stages:
            t.join(30)
        raise
    finally:
        stop.set()
        mux.close()
    wall = time.perf_counter() - start
    if failure:
        exc = failure[0]
        if isinstance(exc, ParvisError):
            raise exc
        raise ParvisError(f"video pipeline failed: {type(exc).__name__}: {exc}")
    summary = _summary(states, mux, wall, busy, batches, out, write_video)
    if meta.task == "detection":
        _evaluate_tracks(summary, out)
    from parvis.io import atomic_write_text

    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


class Mosaic:
    """All streams tiled in one video: a grid of the latest annotated frame of each stream, each tile
    the size of the first frame seen. A mosaic frame is written each time the lowest-numbered stream
    still running delivers one, so the mosaic runs at that stream's pace."""

    def __init__(self, n: int):
        self.n = n
        self.cols = int(np.ceil(np.sqrt(n)))
        self.rows = int(np.ceil(n / self.cols))
        self.tile: tuple[int, int] | None = None  # (height, width)
        self.latest: dict[int, np.ndarray] = {}

    def add(self, stream: int, frame: np.ndarray, leader: int) -> np.ndarray | None:
        """Remember `stream`'s latest frame; the tiled frame when `stream` is the `leader`."""
        from PIL import Image

        if self.tile is None:
            self.tile = (frame.shape[0] - frame.shape[0] % 2, frame.shape[1] - frame.shape[1] % 2)
        h, w = self.tile
        if frame.shape[:2] != (h, w):
            frame = np.asarray(Image.fromarray(frame).resize((w, h)))
        self.latest[stream] = frame
        if stream != leader:
            return None
        canvas = np.zeros((self.rows * h, self.cols * w, 3), np.uint8)
        for i, tile in self.latest.items():
            r, c = divmod(i, self.cols)
            canvas[r * h : (r + 1) * h, c * w : (c + 1) * w] = tile
        return canvas


def ground_truth_of(source: str) -> Path | None:
    """The MOTChallenge ground truth next to a clip in `parvis data synth --task video` layout
    (clips/NAME.mp4 -> gt/NAME.txt), or None."""
    path = Path(source)
    gt = path.parent.parent / "gt" / f"{path.stem}.txt"
    return gt if path.parent.name == "clips" and gt.is_file() else None


def _evaluate_tracks(summary: dict, out: Path) -> None:
    """MOTA, ID switches and IDF1 per stream whose clip has ground truth (synthetic clips do)."""
    from parvis.video.mot import evaluate_mot

    results = []
    for s in summary["streams"]:
        gt = ground_truth_of(s["source"])
        tracks = out / f"stream_{s['stream']}.mot.txt"
        if gt is None or not tracks.is_file() or s["error"]:
            continue
        r = evaluate_mot(gt, tracks)
        results.append(r)
        s["tracking"] = {"mota": r.mota, "id_switches": r.num_switches, "idf1": r.idf1,
                         "false_positives": r.num_false_positives, "misses": r.num_misses, "gt_boxes": r.num_gt,
                         "motp_iou": r.motp, "ground_truth": str(gt)}  # fmt: skip
    if results:  # over all streams, as MOTChallenge sums a benchmark's sequences
        gt_n = sum(r.num_gt for r in results)
        errors = sum(r.num_misses + r.num_false_positives + r.num_switches for r in results)
        summary["tracking"] = {"mota": 1 - errors / gt_n if gt_n else 0.0, "gt_boxes": gt_n, "streams": len(results),
                               "id_switches": sum(r.num_switches for r in results),
                               "misses": sum(r.num_misses for r in results),
                               "false_positives": sum(r.num_false_positives for r in results),
                               "idf1_mean": float(np.mean([r.idf1 for r in results]))}  # fmt: skip


def _to_frame(det, scale: float, score_threshold: float, nms_iou: float = 0.6):
    """Model-pixel boxes -> frame pixels, low scores kept for the tracker's second stage.

    Class-agnostic NMS first: a detector unsure between two classes (ring or circle) puts a peak in
    both class maps at the same place, and a class-aware tracker would follow both as two objects
    (measured on the synthetic clips: most of the false positives, MOTA 0.71 -> see README)."""
    from torchvision.ops import nms

    from parvis.structures import Detections

    keep = det.scores >= min(score_threshold, 0.1)
    boxes, scores, labels = det.boxes[keep].float(), det.scores[keep].float(), det.labels[keep]
    if len(boxes) > 1:
        kept = nms(boxes, scores, nms_iou)
        boxes, scores, labels = boxes[kept], scores[kept], labels[kept]
    return Detections(boxes / scale, scores, labels, det.class_names)


def _summary(states, mux, wall, busy, batches, out, write_video) -> dict:
    streams = []
    for i, s in enumerate(states):
        span = (s.t_last - s.t_first) if s.t_first and s.t_last and s.t_last > s.t_first else wall
        lat = np.array(s.latencies) * 1000 if s.latencies else None
        streams.append({
            "stream": i, "source": s.source, "live": s.live, "frames": s.written, "decoded": s.decoded,
            "fps": s.written / span if span > 0 and s.written else 0.0, "dropped": mux.dropped[i],
            "errors": s.corrupt + (1 if s.error else 0), "corrupt_frames": s.corrupt, "error": s.error,
            "retries": s.retries, "size": list(s.size) if s.size else None,
            "latency_ms_p50": float(np.percentile(lat, 50)) if lat is not None else None,
            "latency_ms_p99": float(np.percentile(lat, 99)) if lat is not None else None,
            "decode_s": s.busy_decode_s,
            "video": str(out / f"stream_{i}.mp4") if write_video and s.written else None,
            "events": str(out / f"stream_{i}.jsonl") if s.written else None,
        })  # fmt: skip
    mosaic = out / "mosaic.mp4"
    total = sum(s["frames"] for s in streams)
    return {
        "streams": streams,
        "frames": total,
        "wall_s": wall,
        "aggregate_fps": total / wall if wall > 0 else 0.0,
        "batches": len(batches),
        "mean_batch": float(np.mean(batches)) if batches else 0.0,
        "stage_busy_s": {"decode_s": sum(s["decode_s"] for s in streams), **busy},
        "mosaic": str(mosaic) if mosaic.is_file() else None,
    }
