"""Video files in and out, on PyAV (FFmpeg): the one place the project encodes, decodes and probes video.

    with open_writer("out.mp4", 320, 240, fps=15) as w:
        for frame in frames:          # RGB uint8, 240 x 320 x 3
            w.write(frame)
    for frame in read_frames("out.mp4"):
        ...
    probe("out.mp4")  # {"frames": 150, "fps": 15.0, "width": 320, "height": 240, "codec": "h264", ...}

Writing is atomic (temp file in the same folder, fsync, rename on a clean close); a failure leaves
nothing behind. Corrupt data while reading raises `BadSampleError` naming the file and frame, unless
the caller passes ``on_corrupt``: then an undecodable packet is skipped and reported through that
callback (a live pipeline counts it and goes on). Damage the demuxer cannot step over (a truncated
MP4 without its index, a broken container) always raises. A file cut short after its index yields
the frames before the cut, then raises `TruncatedVideoError` (also with ``on_corrupt``: there is
nothing to go on to, and a caller must be able to tell a short file from a whole one). Damage inside
a frame's data that the decoder conceals (FFmpeg's error concealment) yields a frame with artefacts
and is not reported.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Callable, Iterator
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import av
import numpy as np

from parvis.errors import BadSampleError, ParvisError
from parvis.io import publish

# Preferred first: H.264 plays everywhere and is what cameras send. MPEG-4 part 2 is in every
# FFmpeg build, so it is the fallback when a build has no H.264 encoder (libx264 is GPL and some
# builds leave it out). The generic "h264" name can resolve to a hardware encoder (NVENC, VAAPI),
# which is why each candidate is tried on a real frame rather than looked up by name.
ENCODER_CANDIDATES = ("libx264", "libopenh264", "h264", "mpeg4")
CRF = 18  # libx264 constant quality: visually lossless on these scenes, ~10x smaller than raw
MAX_FPS = 1000


class TruncatedVideoError(BadSampleError):
    """The file ends before the frame count its header declares; the frames before the cut were read."""


class Frame(NamedTuple):
    """One decoded frame: ``index`` counts the frames yielded (0-based), ``pts`` is the stream
    timestamp in ``time_base`` units (None if the container has none), ``time`` is in seconds."""

    index: int
    pts: int | None
    time: float | None
    image: np.ndarray  # H x W x 3 RGB uint8


# --- encoder choice -----------------------------------------------------------------------------


@lru_cache(maxsize=1)
def video_encoder() -> str:
    """Name of the encoder ``open_writer`` uses: the first of ENCODER_CANDIDATES that encodes a test
    clip with this PyAV build. Raises ParvisError if none does."""
    errors = []
    for name in ENCODER_CANDIDATES:
        try:
            buf = io.BytesIO()
            with av.open(buf, "w", format="mp4") as container:
                stream = _add_stream(container, name, 64, 64, Fraction(15), reproducible=True)
                for i in range(2):
                    frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 40 * i, np.uint8), format="rgb24")
                    frame.pts = i
                    container.mux(stream.encode(frame))
                container.mux(stream.encode(None))
            if buf.tell() > 0:
                return name
        except (av.FFmpegError, ValueError, OSError) as exc:
            errors.append(f"{name}: {exc}")
    tried = "; ".join(errors)
    raise ParvisError(f"no usable video encoder in PyAV {av.__version__} ({tried}); reinstall PyAV: pip install av")


def _add_stream(container, name: str, width: int, height: int, rate: Fraction, reproducible: bool):
    x264 = av.codec.Codec(name, "w").name == "libx264"  # "h264" may name it too
    options = {"crf": str(CRF), "preset": "veryfast"} if x264 else {}
    if x264 and reproducible:
        # libx264's macroblock-tree rate control does not repeat itself: 40 encodes of the same
        # frames in one process gave 2-3 different files, with mbtree off all 40 were identical.
        options["x264-params"] = "mbtree=0"
    stream = container.add_stream(name, rate=rate, options=options)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.codec_context.time_base = 1 / rate
    # Encoders split work by thread count (libx264 does), so the bytes depend on it: one thread
    # makes them the same on every machine.
    stream.codec_context.thread_count = 1 if reproducible else 0
    if not x264:
        # No constant-quality mode common to these: about 0.3 bits per pixel keeps shapes crisp.
        stream.codec_context.bit_rate = max(200_000, int(0.3 * width * height * float(rate)))
    return stream


# --- writing ------------------------------------------------------------------------------------


class VideoWriter:
    """Encodes RGB uint8 frames of one fixed size; made by `open_writer`, which owns the file."""

    def __init__(self, container, stream, path: Path, width: int, height: int):
        self._container, self._stream = container, stream
        self.path, self.width, self.height = path, width, height
        self.codec = stream.codec_context.name
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.shape != (self.height, self.width, 3):
            raise ValueError(
                f"{self.path}: frame must be {self.height}x{self.width}x3 uint8 RGB, got "
                f"{'x'.join(map(str, frame.shape))} {frame.dtype}"
            )
        # H.264 4:2:0 needs even sides: an odd last row/column is repeated rather than refused.
        pad_h, pad_w = self._stream.height - self.height, self._stream.width - self.width
        if pad_h or pad_w:
            frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        vf.pts = self.frames
        self._container.mux(self._stream.encode(vf))
        self.frames += 1

    def _finish(self) -> None:
        self._container.mux(self._stream.encode(None))  # flush the frames the encoder holds back
        self._container.close()


@contextlib.contextmanager
def open_writer(
    path: str | Path, width: int, height: int, fps: float, reproducible: bool = False, codec: str | None = None
) -> Iterator[VideoWriter]:
    """Context manager that writes an MP4 (or any container FFmpeg knows by ``path``'s suffix) from
    RGB uint8 frames of ``height x width x 3``, using `video_encoder()` unless ``codec`` is given.

    The file appears at ``path`` only when the block ends without an error and at least one frame
    was written; until then it is a hidden temp file in the same folder, removed on any failure.
    Odd sides are padded to even by repeating the last row/column. By default the encoder uses
    every core; ``reproducible=True`` makes the same frames give the same bytes on every run and
    machine with the same PyAV build (one encoder thread, no libx264 macroblock-tree), at some speed
    and a few percent of file size.
    """
    path = Path(path)
    if not (isinstance(width, int) and isinstance(height, int)) or width < 2 or height < 2:
        raise ParvisError(f"{path}: video size must be integers >= 2, got {width}x{height}")
    if not 0 < fps <= MAX_FPS:
        raise ParvisError(f"{path}: fps must be in (0, {MAX_FPS}], got {fps!r}")
    name = codec or video_encoder()
    rate = Fraction(fps).limit_denominator(1001)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # The suffix stays last so FFmpeg picks the container from it.
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise ParvisError(f"cannot write {path}: {exc.strerror or exc}; choose a writable location") from None
    container = None
    try:
        try:
            # faststart: the index (moov) goes before the frames, so the file can be read while it
            # downloads, e.g. over HTTP from a server without range requests.
            options = {"movflags": "+faststart"} if path.suffix.lower() in (".mp4", ".mov", ".m4v") else {}
            container = av.open(tmp, "w", options=options)
            stream = _add_stream(container, name, width + width % 2, height + height % 2, rate, reproducible)
        except av.FFmpegError as exc:
            raise ParvisError(f"cannot write {path} with encoder {name}: {exc}") from None
        writer = VideoWriter(container, stream, path, width, height)
        yield writer
        if writer.frames == 0:
            raise ParvisError(f"{path}: no frames were written, so no video was saved")
        writer._finish()
        container = None
        publish(tmp, path, fsync=True)
    except BaseException:
        if container is not None:
            with contextlib.suppress(Exception):
                container.close()
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# --- reading ------------------------------------------------------------------------------------


def _open(path: str | Path, timeout: float | None):
    try:
        container = av.open(str(path), "r", timeout=timeout)
    except FileNotFoundError:
        raise BadSampleError(path, "no such file; check the path", kind="io") from None
    except PermissionError:
        raise BadSampleError(path, "permission denied", kind="io") from None
    except av.FFmpegError as exc:
        reason = f"not a readable video, or truncated ({_reason(exc)}); re-create or remove it"
        raise BadSampleError(path, reason, kind="format") from None
    if not container.streams.video:
        container.close()
        raise BadSampleError(path, "has no video stream", kind="format")
    return container


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc)


def read_frames_with_pts(
    path: str | Path, on_corrupt: Callable[[], None] | None = None, timeout: float | None = None
) -> Iterator[Frame]:
    """Decode the first video stream of ``path`` (a file or a URL FFmpeg can open) into `Frame`s.

    A packet the decoder rejects raises BadSampleError (kind "corrupt") naming the file and the
    frame, or, when ``on_corrupt`` is given, is skipped and reported by calling it; ``index`` then
    keeps counting the frames actually yielded. A file that ends before its declared frame count
    raises TruncatedVideoError after its last frame, with or without ``on_corrupt``. ``timeout``
    (seconds) bounds network opens and reads.
    """
    container = _open(path, timeout)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame threads: about 2x faster decoding, same pixels
        time_base = stream.time_base
        index = 0

        skipped = 0

        def frames_of(packet):
            nonlocal index, skipped
            try:
                decoded = stream.decode(packet)
            except av.FFmpegError as exc:
                if on_corrupt is None:
                    reason = f"undecodable data after {index} good frames ({_reason(exc)}); re-encode or remove it"
                    raise BadSampleError(path, reason) from None
                on_corrupt()
                skipped += 1
                return
            for vf in decoded:
                t = float(vf.pts * time_base) if vf.pts is not None and time_base else None
                yield Frame(index, vf.pts, t, vf.to_ndarray(format="rgb24"))
                index += 1

        try:
            for packet in container.demux(stream):  # the last, empty packet flushes the decoder
                yield from frames_of(packet)
        except av.FFmpegError as exc:
            raise BadSampleError(path, f"after frame {index}: damaged container ({_reason(exc)})") from None
        # A file cut short after its index (MP4 with faststart) ends early without a decoder error
        # (frames lost to skipped corrupt packets are already counted).
        if stream.frames and index + skipped < stream.frames:
            raise TruncatedVideoError(path, f"truncated: {index} of its {stream.frames} frames could be read")
    finally:
        container.close()


def read_frames(
    path: str | Path, on_corrupt: Callable[[], None] | None = None, timeout: float | None = None
) -> Iterator[np.ndarray]:
    """The images of `read_frames_with_pts`: H x W x 3 RGB uint8 arrays, same corrupt-frame rules."""
    for frame in read_frames_with_pts(path, on_corrupt=on_corrupt, timeout=timeout):
        yield frame.image


def probe(path: str | Path) -> dict:
    """{"frames", "fps", "width", "height", "codec", "seconds"} of the first video stream, from the
    container header; the frame count is taken by reading packets (no decoding) where the header has
    none. fps and seconds are None where the container does not say."""
    container = _open(path, None)
    try:
        stream = container.streams.video[0]
        frames = stream.frames
        if not frames:
            try:
                frames = sum(1 for p in container.demux(stream) if p.size)
            except av.FFmpegError as exc:
                raise BadSampleError(path, f"damaged container ({_reason(exc)})") from None
        rate = stream.average_rate or stream.guessed_rate
        seconds = None
        if stream.duration is not None and stream.time_base:
            seconds = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            seconds = container.duration / av.time_base
        return {
            "frames": int(frames),
            "fps": float(rate) if rate else None,
            "width": stream.codec_context.width,
            "height": stream.codec_context.height,
            "codec": stream.codec_context.name,
            "seconds": seconds,
        }
    finally:
        container.close()
