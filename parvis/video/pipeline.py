"""Many video streams through one model: decode -> batch across streams -> infer -> track -> annotate -> write.

    summary = run_video(["a.mp4", "b.mp4"], model, out="runs/video", batch=4)

Stages are threads joined by bounded queues; after the muxer each thread is a `StageThread` running
small stage objects, one job each:

    source threads (one per stream: decode + resize + normalize)
        -> StreamMuxer (batches across streams; back-pressure in file mode, counted drops in live mode)
        -> inference thread: Infer (one batch at a time, any runtime, under the run's precision)
        -> tracking thread: Track (one ByteTracker per stream: all tracking state lives on this thread), Annotate
        -> writer thread: Write into StreamSinks (annotated MP4 and JSONL per stream, published atomically
           when the run completes), Progress

A source that fails (missing file, unreadable stream, lost connection) is reported in the summary and
closed; the other streams go on. Network sources retry with backoff before giving up.
"""

from __future__ import annotations

import contextlib
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
from PIL import Image

from parvis import runtime
from parvis.data.decode import IMAGE_SUFFIXES, read_image
from parvis.data.transforms import EvalPreprocess
from parvis.data.video_io import TruncatedVideoError, open_writer, probe, read_frames
from parvis.draw import annotate
from parvis.errors import BadSampleError, ParvisError
from parvis.io import atomic_write_text, publish
from parvis.structures import AGNOSTIC_NMS_IOU, Detections
from parvis.video.mot import evaluate_mot, format_mot
from parvis.video.muxer import Packet, StreamMuxer
from parvis.video.tracker import ByteTracker

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
    status: str = "ok"  # ok | truncated (ended before its declared length) | error (could not go on)
    error: str | None = None  # the reason, when not ok
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
    if not is_network(source):
        info = probe(source)
        state.fps = float(info.get("fps") or state.fps)
    yield from read_frames(source, on_corrupt=lambda: _count_corrupt(state))


def _count_corrupt(state: StreamState) -> None:
    state.corrupt += 1


class EvalPreset:
    """Classification and segmentation: the model's own eval preset (as predict and serve use)."""

    def __init__(self, meta):
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
            truncated = isinstance(exc, TruncatedVideoError)  # a short file: reading it again gives no more
            if is_network(state.source) and attempt < retries and not stop.is_set() and not truncated:
                attempt += 1
                state.retries += 1
                stop.wait(min(8.0, 0.5 * 2 ** (attempt - 1)))  # backoff 0.5, 1, 2, 4, 8 s
                continue
            state.error = reason.splitlines()[0] if reason else type(exc).__name__
            state.status = "truncated" if truncated else "error"
            break
    mux.end(stream)


# --------------------------------------------------------------------------- stages after the muxer


@dataclass
class Work:
    """One frame on its way from the muxer to the sinks."""

    packet: Packet  # .item is the source's FrameItem
    result: object = None  # the model's structure (Detections, ...), then the tracked one
    frame: np.ndarray | None = None  # the annotated frame, when video is written


class Infer:
    """A batch of packets -> Work items with the model's results. The model runs under `precision`'s
    autocast, on this stage's thread (autocast is per thread): an eager model computes at the
    precision the run reports, and a model that applies its own precision is unaffected."""

    busy_key = "infer_s"

    def __init__(self, model, precision: runtime.Precision | None):
        self.model, self.precision = model, precision
        self.sizes: list[int] = []  # frames per batch, for the summary

    def __call__(self, packets: list[Packet]) -> list[Work]:
        x = torch.stack([p.item.tensor for p in packets])
        with torch.inference_mode():
            with runtime.autocast(self.precision) if self.precision else contextlib.nullcontext():
                raw = self.model(x)
            # Decoding (peaks, boxes) in fp32, as predict does: bf16 keeps ~3 significant digits.
            results = self.model.postprocess(raw.float() if isinstance(raw, torch.Tensor) else raw)
        self.sizes.append(len(packets))
        return [Work(p, r) for p, r in zip(packets, results, strict=True)]


class Track:
    """Detections to frame pixels, then one tracker per stream gives every box its track id. All
    tracking state lives here, so this stage runs on one thread."""

    busy_key = "track_s"

    def __init__(self, make_tracker, score_threshold: float):
        self.make_tracker, self.score_threshold = make_tracker, score_threshold
        self.trackers: dict[int, object] = {}

    def __call__(self, batch: list[Work]) -> list[Work]:
        for w in batch:
            if w.packet.stream not in self.trackers:
                self.trackers[w.packet.stream] = self.make_tracker()
            detections = _to_frame(w.result, w.packet.item.scale, self.score_threshold)
            w.result = self.trackers[w.packet.stream].update(detections)
        return batch


class Annotate:
    """Draws each result on a copy of its frame."""

    busy_key = "annotate_s"

    def __init__(self):
        self.draw = annotate

    def __call__(self, batch: list[Work]) -> list[Work]:
        for w in batch:
            w.frame = self.draw(w.packet.item.image, w.result)
        return batch


class Write:
    """Work items -> the sinks: an event per frame, its annotated frame to the stream's video and the
    mosaic; counts what was written and its latency from decode."""

    busy_key = "write_s"

    def __init__(self, sinks: StreamSinks, states: list[StreamState], mux: StreamMuxer, mosaic: Mosaic | None):
        self.sinks, self.states, self.mux, self.mosaic = sinks, states, mux, mosaic

    def __call__(self, batch: list[Work]) -> list[Work]:
        for w in batch:
            s, state = w.packet.stream, self.states[w.packet.stream]
            self.sinks.event(s, state.source, w.packet.index, w.result)
            if w.frame is not None:
                self.sinks.video(f"stream_{s}", w.frame, state.fps)
                if self.mosaic is not None and (tile := self.mosaic.add(s, w.frame, self._leader(s))) is not None:
                    self.sinks.video("mosaic", tile, state.fps)
            now = time.perf_counter()
            state.written += 1
            state.t_last = now
            state.latencies.append(now - w.packet.item.t_decoded)
        return batch

    def _leader(self, default: int) -> int:
        # The mosaic advances with the lowest-numbered stream that still has frames to come.
        ended, states = self.mux.ended, self.states
        return next((i for i in range(len(states)) if not (ended[i] and states[i].written >= states[i].decoded)),
                    default)  # fmt: skip


class Progress:
    """Hands the running counts to the caller's progress callback (the CLI's live table) per batch."""

    busy_key = None

    def __init__(self, callback, states: list[StreamState], mux: StreamMuxer, busy: dict):
        self.callback, self.states, self.mux, self.busy = callback, states, mux, busy

    def __call__(self, batch: list[Work]) -> list[Work]:
        self.callback(self.states, self.mux, {"decode_s": sum(s.busy_decode_s for s in self.states), **self.busy})
        return batch


class StageThread(threading.Thread):
    """Runs `steps` in order on every item of `inbox` (an iterable: the muxer's batches, or a queue
    read up to its None) and puts the result on `outbox`, a bounded queue, so a slow stage holds back
    the ones before it. Each step's time adds to busy[step.busy_key]. None goes on `outbox` when the
    inbox ends. A failure goes to `fail` (which stops the run), then the inbox is drained so the
    stage before never blocks on a full queue."""

    def __init__(self, name: str, inbox, steps: list, outbox: queue.Queue | None, busy: dict, fail):
        super().__init__(name=f"parvis-{name}", daemon=True)
        self.inbox, self.steps, self.outbox, self.busy, self.fail = inbox, steps, outbox, busy, fail

    def run(self) -> None:
        try:
            for item in self.inbox:
                for step in self.steps:
                    t0 = time.perf_counter()
                    item = step(item)
                    if step.busy_key:
                        self.busy[step.busy_key] += time.perf_counter() - t0
                if self.outbox is not None:
                    self.outbox.put(item)
        except BaseException as exc:  # noqa: BLE001 - reported by run_video
            self.fail(exc)
            for _ in self.inbox:
                pass
        finally:
            if self.outbox is not None:
                self.outbox.put(None)


# --------------------------------------------------------------------------- sinks


class StreamSinks:
    """The files a run writes under `out`: stream_N.jsonl (and stream_N.mot.txt for detection),
    stream_N.mp4 and mosaic.mp4.

        with StreamSinks(out, detection=True) as sinks:
            sinks.event(0, "a.mp4", 0, detections)
            sinks.video("stream_0", frame, fps=15.0)

    Opens in __enter__; each file starts on its first write as a hidden temp file beside its name.
    __exit__ publishes them all (atomic rename) when the block ends cleanly and removes them when it
    raised, so a failed run leaves no half-written output."""

    def __init__(self, out: Path, detection: bool):
        self.out, self.detection = Path(out), detection
        self._logs: dict[int, list] = {}
        self._videos: dict[str, object] = {}

    def __enter__(self) -> StreamSinks:
        self._files = contextlib.ExitStack()
        return self

    def __exit__(self, *exc) -> bool:
        return self._files.__exit__(*exc)

    def event(self, stream: int, source: str, index: int, result) -> None:
        if stream not in self._logs:
            kinds = ("jsonl", "mot.txt") if self.detection else ("jsonl",)
            self._logs[stream] = [self._files.enter_context(_text_sink(self.out / f"stream_{stream}.{k}"))
                                  for k in kinds]  # fmt: skip
        logs = self._logs[stream]
        event = {"stream": stream, "source": source, "frame": index, "t": round(time.time(), 3), **result.to_dict()}
        logs[0].write(json.dumps(event) + "\n")
        if self.detection:  # MOTChallenge tracks, 1-based frames, for MOT evaluation
            logs[1].writelines(line + "\n" for line in format_mot(index + 1, result))

    def video(self, name: str, frame: np.ndarray, fps: float) -> None:
        """Append `frame` to NAME.mp4, which takes the size of its first frame."""
        if name not in self._videos:
            path = self.out / f"{name}.mp4"
            self._videos[name] = self._files.enter_context(open_writer(path, frame.shape[1], frame.shape[0], fps))
        self._videos[name].write(frame)


@contextlib.contextmanager
def _text_sink(path: Path) -> Iterator:
    """A text file written as .NAME.partial beside `path`: renamed to `path` on a clean exit,
    removed on an error."""
    tmp = path.parent / f".{path.name}.partial"
    f = open(tmp, "w")  # noqa: SIM115 - closed on both paths below
    try:
        yield f
    except BaseException:
        f.close()
        tmp.unlink(missing_ok=True)
        raise
    f.close()
    publish(tmp, path)


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
    precision: runtime.Precision | None = None,
    info: dict | None = None,
) -> dict:
    """Run every source through `model` (a VisionModel, e.g. from open_predictor); write per-stream
    annotated MP4 and JSONL under `out` and return (and write) summary.json's content. `precision`
    (from runtime.resolve_precision) is the autocast the model runs under; summary["precision"]
    names it, else the precision `info` (open_predictor's) says the runtime runs, with summary["runtime"]."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = model.meta
    n = len(sources)
    states = [StreamState(s, is_network(s) if live is None else live) for s in sources]
    mux = StreamMuxer(n, batch, push_timeout_ms, queue_size, [s.live for s in states])
    prep = preprocessor(meta)
    stop = threading.Event()
    busy = {"infer_s": 0.0, "track_s": 0.0, "annotate_s": 0.0, "write_s": 0.0}
    failure: list[BaseException] = []

    def fail(exc: BaseException) -> None:
        failure.append(exc)
        stop.set()
        mux.close()

    # Tracks start from detections scoring >= track_threshold and are confirmed at once; lower scores
    # (down to 0.1) only continue tracks. On the synthetic clips with the shapes detector: MOTA 0.82
    # at 0.4 and one hit, 0.76 with ByteTrack's usual 0.5 and two hits (its scores on video run lower).
    make_tracker = tracker_factory or (lambda: ByteTracker(high_thresh=track_threshold, min_hits=1))
    infer = Infer(model, precision)
    after_infer = [Track(make_tracker, score_threshold)] if meta.task == "detection" else []
    after_infer += [Annotate()] if write_video else []
    to_track: queue.Queue = queue.Queue(maxsize=4)  # batches
    to_write: queue.Queue = queue.Queue(maxsize=max(1, 8 // batch))  # batches: about 8 frames
    interrupted = False
    start = time.perf_counter()
    with StreamSinks(out, meta.task == "detection") as sinks:
        writing = [Write(sinks, states, mux, Mosaic(n) if mosaic and write_video else None)]
        writing += [Progress(progress, states, mux, busy)] if progress is not None else []
        stages = [
            StageThread("infer", mux.batches(), [infer], to_track, busy, fail),
            StageThread("track", iter(to_track.get, None), after_infer, to_write, busy, fail),
            StageThread("write", iter(to_write.get, None), writing, None, busy, fail),
        ]
        sources_t = [
            threading.Thread(target=_source_thread, args=(i, s, mux, prep, stop, retries), daemon=True,
                             name=f"parvis-source-{i}")
            for i, s in enumerate(states)
        ]  # fmt: skip
        for t in sources_t + stages:
            t.start()
        try:
            for t in stages:
                while t.is_alive():
                    t.join(0.2)
        except KeyboardInterrupt:  # stop reading; what was read is written and published, then re-raised
            interrupted = True
            stop.set()
            mux.close()
            for t in stages:
                t.join(30)
        finally:
            stop.set()
            mux.close()
        if failure:  # raised inside the sinks' block: nothing half-written is published
            if isinstance(failure[0], ParvisError):
                raise failure[0]
            raise ParvisError(f"video pipeline failed: {type(failure[0]).__name__}: {failure[0]}")
        if any(t.is_alive() for t in stages):
            raise KeyboardInterrupt
    if interrupted:
        raise KeyboardInterrupt
    wall = time.perf_counter() - start
    summary = _summary(states, mux, wall, busy, infer.sizes, out, write_video)
    summary["runtime"] = (info or {}).get("runtime")
    summary["precision"] = precision.name if precision else (info or {}).get("precision")
    if meta.task == "detection":
        _evaluate_tracks(summary, out)
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


def _to_frame(det, scale: float, score_threshold: float, nms_iou: float = AGNOSTIC_NMS_IOU):
    """Model-pixel boxes -> frame pixels, low scores kept for the tracker's second stage.

    Class-agnostic NMS first: a detector unsure between two classes (ring or circle) puts a peak in
    both class maps at the same place, and a class-aware tracker would follow both as two objects
    (measured on the synthetic clips: most of the false positives, MOTA 0.71 -> see README)."""
    keep = det.scores >= min(score_threshold, 0.1)
    found = Detections(det.boxes[keep].float(), det.scores[keep].float(), det.labels[keep], det.class_names)
    found = found.agnostic_nms(nms_iou)
    return Detections(found.boxes / scale, found.scores, found.labels, det.class_names)


def _summary(states, mux, wall, busy, batches, out, write_video) -> dict:
    streams = []
    for i, s in enumerate(states):
        span = (s.t_last - s.t_first) if s.t_first and s.t_last and s.t_last > s.t_first else wall
        lat = np.array(s.latencies) * 1000 if s.latencies else None
        streams.append({
            "stream": i, "source": s.source, "live": s.live, "frames": s.written, "decoded": s.decoded,
            "fps": s.written / span if span > 0 and s.written else 0.0, "dropped": mux.dropped[i],
            "status": s.status, "errors": s.corrupt + (1 if s.error else 0), "corrupt_frames": s.corrupt,
            "error": s.error,
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
