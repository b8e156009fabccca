"""Synthetic video clips with MOTChallenge tracks, and the PyAV helpers they are written with."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from parvis.cli.main import main
from parvis.data.synth import CLASSES
from parvis.data.video_io import (
    TruncatedVideoError,
    open_writer,
    probe,
    read_frames,
    read_frames_with_pts,
    video_encoder,
)
from parvis.data.video_synth import ClipRenderer, synthesize_video
from parvis.errors import BadSampleError, ParvisError

FRAMES, WIDTH, HEIGHT, SEED = 40, 160, 120, 3


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("video") / "video"
    summary = synthesize_video(out, n_clips=3, frames=FRAMES, width=WIDTH, height=HEIGHT, seed=SEED, workers=2)
    return out, summary


def read_gt(path: Path) -> list[list]:
    rows = []
    for line in path.read_text().splitlines():
        f = line.split(",")
        assert len(f) == 9, line
        rows.append([int(v) for v in f[:8]] + [float(f[8])])
    return rows


def frames_by_id(rows: list[list]) -> dict[int, list[int]]:
    seen = defaultdict(list)
    for row in rows:
        seen[row[1]].append(row[0])
    return seen


def test_same_seed_gives_identical_files_whatever_the_workers(clips, tmp_path):
    out, _ = clips
    again = tmp_path / "again"
    synthesize_video(again, n_clips=3, frames=FRAMES, width=WIDTH, height=HEIGHT, seed=SEED, workers=1)
    names = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for name in names:
        assert (out / name).read_bytes() == (again / name).read_bytes(), name
    other = tmp_path / "other"
    synthesize_video(other, n_clips=1, frames=FRAMES, width=WIDTH, height=HEIGHT, seed=SEED + 1, workers=1)
    assert (other / "gt/clip_000.txt").read_text() != (out / "gt/clip_000.txt").read_text()


def test_video_json_and_summary(clips):
    out, summary = clips
    meta = json.loads((out / "video.json").read_text())
    assert meta["classes"] == list(CLASSES) == ["circle", "ring", "square", "star", "triangle"]
    assert meta["frames"] == FRAMES and meta["size"] == {"width": WIDTH, "height": HEIGHT}
    assert meta["fps"] == 15 and meta["seed"] == SEED and meta["codec"] == video_encoder() == summary["codec"]
    assert [c["name"] for c in meta["clips"]] == ["clip_000", "clip_001", "clip_002"]
    for clip in meta["clips"]:
        assert (out / clip["video"]).is_file() and (out / clip["gt"]).is_file()
        assert 2 <= len(clip["objects"]) <= 6
        assert clip["boxes"] == len(read_gt(out / clip["gt"]))
    assert summary["boxes"] == sum(c["boxes"] for c in meta["clips"]) > 0
    assert not list(out.parent.glob("*.tmp-*"))


def test_clips_decode_to_the_right_frame_count_and_size(clips):
    out, _ = clips
    for mp4 in sorted((out / "clips").glob("*.mp4")):
        info = probe(mp4)
        assert (info["frames"], info["width"], info["height"], info["fps"]) == (FRAMES, WIDTH, HEIGHT, 15.0)
        assert info["codec"] in ("h264", "mpeg4")
        frames = list(read_frames_with_pts(mp4))
        assert [f.index for f in frames] == list(range(FRAMES))
        assert all(f.image.shape == (HEIGHT, WIDTH, 3) and f.image.dtype == np.uint8 for f in frames)
        times = [f.time for f in frames]
        assert times == sorted(times) and times[1] == pytest.approx(1 / 15)


def test_decoded_frames_match_the_rendered_ones(clips):
    out, _ = clips
    renderer = ClipRenderer(SEED, 0, FRAMES, WIDTH, HEIGHT)
    decoded = list(read_frames(out / "clips/clip_000.mp4"))
    for t in (0, FRAMES // 2, FRAMES - 1):
        rendered = renderer.frame(t)[0].astype(np.int16)
        assert np.abs(decoded[t] - rendered).mean() < 6  # lossy, but close


def test_gt_lines_parse_and_boxes_lie_inside_the_frame(clips):
    out, _ = clips
    meta = json.loads((out / "video.json").read_text())
    for clip in meta["clips"]:
        classes = {o["id"]: CLASSES.index(o["class"]) + 1 for o in clip["objects"]}
        rows = read_gt(out / clip["gt"])
        assert len({(r[0], r[1]) for r in rows}) == len(rows)  # one box per object per frame
        for frame, track, x, y, w, h, conf, cls, visibility in rows:
            assert 1 <= frame <= FRAMES and track in classes and cls == classes[track]
            assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= WIDTH and y + h <= HEIGHT
            assert conf == 1 and 0 < visibility <= 1


def test_objects_that_enter_or_leave_appear_or_disappear(clips):
    out, _ = clips
    meta = json.loads((out / "video.json").read_text())
    motions = set()
    for clip in meta["clips"]:
        seen = frames_by_id(read_gt(out / clip["gt"]))
        for obj in clip["objects"]:
            frames = seen[obj["id"]]
            motions.add(obj["motion"])
            assert frames, obj
            if obj["motion"] in ("enter", "cross"):
                assert frames[0] > 1, obj
            if obj["motion"] in ("leave", "cross"):
                assert frames[-1] < FRAMES, obj
            if obj["motion"] == "stay":  # always whole in the frame: missing only while hidden
                assert len(frames) >= FRAMES // 2, obj
    assert "cross" in motions and "stay" in motions  # every clip has both


def test_the_crossing_object_occludes_or_is_occluded():
    hidden = 0
    for clip in range(3):
        renderer = ClipRenderer(SEED, clip, FRAMES, WIDTH, HEIGHT)
        stay, cross = renderer.tracks[0], renderer.tracks[1]
        t = round(cross.t_anchor)
        rows = {row[1]: row for row in renderer.frame(t)[1]}
        # Whichever is drawn first is (partly) hidden at the meeting frame: visibility drops or it is left out.
        below = min((stay, cross), key=lambda tr: renderer.order.index(tr.id - 1))
        hidden += below.id not in rows or rows[below.id][8] < 0.95
    assert hidden >= 2


def test_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "vid"
    argv = ["data", "synth", "--task", "video", "--out", str(out), "--n", "2", "--frames", "12", "--size", "96x64"]
    assert main([*argv, "--fps", "10", "--seed", "5"]) == 0
    line = capsys.readouterr().out.strip()
    assert "2 clips x 12 frames at 96x64, 10 fps" in line and str(out) in line and video_encoder() in line
    assert probe(out / "clips/clip_001.mp4")["frames"] == 12
    assert json.loads((out / "video.json").read_text())["fps"] == 10


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--size", "96by64"], "--size"),
        (["--size", "97x64"], "--size"),
        (["--size", "8x8"], "--size"),
        (["--val-fraction", "0.1"], "--val-fraction"),
    ],
)
def test_cli_bad_values_are_one_line(extra, needle, tmp_path, capsys):
    out = tmp_path / "vid"
    assert main(["data", "synth", "--task", "video", "--out", str(out), *extra]) != 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("parvis: error:") and needle in lines[0], lines
    assert not out.exists()


def test_cli_image_task_rejects_video_flags(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path / "x"), "--frames", "10"]) != 0
    assert "--frames" in capsys.readouterr().err


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"n_clips": 0}, "n_clips"),
        ({"frames": 0}, "frames"),
        ({"width": 100, "height": 33}, "width and height"),
        ({"fps": 0}, "fps"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, name):
    with pytest.raises(ParvisError, match=name):
        synthesize_video(tmp_path / "x", **kwargs)


# --- parvis.data.video_io ------------------------------------------------------------------------


def ramp(i: int, w: int = 64, h: int = 48) -> np.ndarray:
    return np.full((h, w, 3), 10 * i, np.uint8)


def test_writer_round_trip_and_odd_sizes_are_padded(tmp_path):
    with open_writer(tmp_path / "a.mp4", 63, 47, fps=29.97) as writer:
        for i in range(5):
            writer.write(ramp(i, 63, 47))
    info = probe(tmp_path / "a.mp4")
    assert (info["frames"], info["width"], info["height"]) == (5, 64, 48)
    assert info["fps"] == pytest.approx(29.97)
    frames = list(read_frames(tmp_path / "a.mp4"))
    assert [round(float(f.mean()) / 10) for f in frames] == [0, 1, 2, 3, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4"]


def test_writer_leaves_nothing_behind_on_error(tmp_path):
    target = tmp_path / "b.mp4"
    with pytest.raises(RuntimeError), open_writer(target, 64, 48, 15) as writer:
        writer.write(ramp(1))
        raise RuntimeError("boom")
    with pytest.raises(ValueError, match="48x64x3"), open_writer(target, 64, 48, 15) as writer:
        writer.write(np.zeros((48, 64), np.uint8))
    with pytest.raises(ParvisError, match="no frames"), open_writer(target, 64, 48, 15):
        pass
    assert list(tmp_path.iterdir()) == []


def test_writer_replaces_an_old_file_only_when_complete(tmp_path):
    target = tmp_path / "c.mp4"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), open_writer(target, 64, 48, 15) as writer:
        writer.write(ramp(1))
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    with open_writer(target, 64, 48, 15) as writer:
        writer.write(ramp(1))
    assert probe(target)["frames"] == 1


def test_reading_bad_files_raises_bad_sample_error(tmp_path, clips):
    with pytest.raises(BadSampleError) as err:
        list(read_frames(tmp_path / "missing.mp4"))
    assert err.value.kind == "io"
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 50)
    with pytest.raises(BadSampleError, match="junk.mp4") as err:
        probe(junk)
    assert err.value.kind == "format"
    data = (clips[0] / "clips/clip_000.mp4").read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 2])  # the index comes first (faststart): frames run out
    with pytest.raises(TruncatedVideoError, match=r"truncated: \d+ of its \d+ frames could be read"):
        list(read_frames(truncated))
    # With on_corrupt too: the frames before the cut come out, then the cut is raised, not just counted,
    # so a pipeline can tell a short file from a whole one.
    frames = []
    with pytest.raises(TruncatedVideoError, match=rf"truncated: (\d+) of its {FRAMES} frames") as err:
        frames.extend(read_frames(truncated, on_corrupt=lambda: None))
    assert 0 < len(frames) < FRAMES and f"truncated: {len(frames)} of" in str(err.value)


def test_corrupt_packets_raise_or_are_skipped_and_counted(tmp_path):
    rng = np.random.default_rng(0)
    good = tmp_path / "good.mp4"
    with open_writer(good, 64, 48, 10, reproducible=True) as writer:
        for _ in range(20):  # noise: every frame is a large packet
            writer.write(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    data = bytearray(good.read_bytes())
    # Overwrite two packets' worth of frame data mid-file: at least one packet's NAL length prefix
    # becomes 0xFFFFFFFF, which every H.264 decoder rejects (damage inside a slice may be concealed).
    mdat = data.find(b"mdat")
    start, span = mdat + (len(data) - mdat) * 2 // 5, (len(data) - mdat) // 10
    data[start : start + span] = b"\xff" * span
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(bytes(data))
    with pytest.raises(BadSampleError, match="undecodable") as err:
        list(read_frames(bad))
    assert err.value.kind == "corrupt"
    skipped = []
    frames = list(read_frames(bad, on_corrupt=lambda: skipped.append(1)))
    assert skipped and len(frames) + len(skipped) <= 20 and len(frames) >= 14
