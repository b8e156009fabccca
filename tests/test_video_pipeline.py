"""`parvis video` end to end on tiny synthetic clips: outputs, frame counts, broken sources, live drops."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from parvis.data.video_io import open_writer, probe
from parvis.errors import ParvisError
from parvis.models import build_model
from parvis.models.base import ModelMeta, VisionModel
from parvis.structures import Detections
from parvis.video.pipeline import StreamSinks, run_video

pytestmark = pytest.mark.slow


def make_clip(path, frames: int = 24, width: int = 96, height: int = 64) -> str:
    with open_writer(path, width, height, 15) as writer:
        for i in range(frames):
            frame = np.full((height, width, 3), 40, np.uint8)
            frame[10:40, 5 + 2 * i : 35 + 2 * i] = (220, 60, 60)  # a square moving right
            writer.write(frame)
    return str(path)


class BoxModel(VisionModel):
    """A stand-in detector: one box per frame that moves with the frame's content, optional delay."""

    def __init__(self, delay_s: float = 0.0):
        super().__init__(ModelMeta(name="boxes", task="detection", num_classes=1, class_names=["square"],
                                   input_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))  # fmt: skip
        self.delay_s = delay_s

    def forward(self, images):
        time.sleep(self.delay_s)
        # Column of the red square's centre: the centroid of where red exceeds green (the square).
        excess = (images[:, 0] - images[:, 1]).clamp(min=0).sum(1)  # (N, W)
        cols = torch.arange(excess.shape[1], dtype=torch.float32)
        return ((excess * cols).sum(1) / excess.sum(1).clamp(min=1e-6))[:, None]

    def postprocess(self, raw):
        out = []
        for col in raw[:, 0].tolist():
            box = torch.tensor([[col - 5.0, 2.0, col + 5.0, 12.0]])
            out.append(Detections(box, torch.tensor([0.9]), torch.tensor([0]), ["square"]))
        return out


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    return [make_clip(root / "a.mp4", 24), make_clip(root / "b.mp4", 18)]


def test_two_streams_give_decodable_videos_and_events_with_the_right_counts(clips, tmp_path):
    summary = run_video(clips, BoxModel(), tmp_path, batch=2)
    assert [s["frames"] for s in summary["streams"]] == [24, 18]
    assert summary["frames"] == 42 and summary["aggregate_fps"] > 0
    assert 1 < summary["mean_batch"] <= 2  # frames of both streams shared batches
    for i, n in enumerate([24, 18]):
        info = probe(tmp_path / f"stream_{i}.mp4")
        assert info["frames"] == n and (info["width"], info["height"]) == (96, 64)
        events = [json.loads(line) for line in (tmp_path / f"stream_{i}.jsonl").read_text().splitlines()]
        assert [e["frame"] for e in events] == list(range(n))
        ids = {d["track_id"] for e in events for d in e["detections"]}
        assert len(ids) == 1  # one object, one track id for the whole clip
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["streams"][0]["fps"] > 0 and saved["streams"][1]["dropped"] == 0


def test_mosaic_tiles_every_stream_in_one_video(clips, tmp_path):
    summary = run_video(clips, BoxModel(), tmp_path, batch=2, mosaic=True)
    info = probe(tmp_path / "mosaic.mp4")
    assert (info["width"], info["height"]) == (2 * 96, 64)  # 2 streams: a 2 x 1 grid of 96 x 64 tiles
    assert 24 <= info["frames"] <= 42 and summary["mosaic"].endswith("mosaic.mp4")


def test_a_broken_source_leaves_the_others_at_full_output(clips, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    summary = run_video([clips[0], str(broken), str(tmp_path / "missing.mp4"), clips[1]], BoxModel(), tmp_path / "o",
                        batch=4)  # fmt: skip
    frames = [s["frames"] for s in summary["streams"]]
    assert frames == [24, 0, 0, 18]
    errors = [s["error"] for s in summary["streams"]]
    assert errors[0] is None and errors[3] is None
    assert "broken.mp4" in errors[1] and "missing.mp4" in errors[2]
    assert summary["streams"][1]["errors"] == 1
    assert [s["status"] for s in summary["streams"]] == ["ok", "error", "error", "ok"]


def test_a_truncated_file_is_reported_as_truncated_with_its_frames_kept(clips, tmp_path):
    data = open(clips[0], "rb").read()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 9 // 10])  # the index comes first (faststart): the frames run out
    summary = run_video([str(cut), clips[1]], BoxModel(), tmp_path / "o", batch=2)
    short, whole = summary["streams"]
    assert short["status"] == "truncated" and 0 < short["frames"] < 24  # was "ok", 1 error
    assert f"truncated: {short['frames']} of its 24 frames could be read" in short["error"]
    assert short["errors"] >= 1 and probe(tmp_path / "o" / "stream_0.mp4")["frames"] == short["frames"]
    assert whole["status"] == "ok" and whole["frames"] == 18 and whole["error"] is None
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["streams"][0]["status"] == "truncated"


def test_live_mode_drops_frames_when_the_model_falls_behind_and_counts_them(clips, tmp_path):
    summary = run_video([clips[0]], BoxModel(delay_s=0.03), tmp_path, batch=1, live=True, queue_size=1)
    s = summary["streams"][0]
    assert s["dropped"] > 0
    assert s["frames"] + s["dropped"] == s["decoded"] == 24


def test_classification_and_segmentation_models_run_too(clips, tmp_path):
    for name, classes in (("resnet18", ["a", "b"]), ("unet_small", ["background", "a"])):
        model = build_model(name, len(classes), classes, 32).eval()
        summary = run_video(clips[:1], model, tmp_path / name, batch=4)
        assert summary["streams"][0]["frames"] == 24
        event = json.loads((tmp_path / name / "stream_0.jsonl").read_text().splitlines()[0])
        assert ("class_name" in event) if name == "resnet18" else ("class_shares" in event)


def test_the_model_runs_under_the_precision_given_and_the_summary_names_it(clips, tmp_path):
    from parvis import runtime

    seen = []

    class Recording(BoxModel):
        def forward(self, images):
            seen.append(torch.nn.functional.conv2d(images, torch.ones(1, 3, 1, 1)).dtype)
            return super().forward(images)

    bf16 = runtime.resolve_precision("bf16", "cpu", "infer")
    summary = run_video(clips[:1], Recording(), tmp_path / "bf16", batch=4, precision=bf16, write_video=False)
    assert set(seen) == {torch.bfloat16} and summary["precision"] == "bf16"
    assert summary["streams"][0]["frames"] == 24  # results decoded (in fp32) and tracked as usual
    seen.clear()
    summary = run_video(clips[:1], Recording(), tmp_path / "none", batch=4, write_video=False)
    assert set(seen) == {torch.float32} and summary["precision"] is None


class FailingModel(BoxModel):
    """Fails on its third batch, after earlier frames reached the writer."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, images):
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("boom")
        return super().forward(images)


def test_a_failed_run_publishes_no_output(clips, tmp_path):
    with pytest.raises(ParvisError, match="video pipeline failed: RuntimeError: boom"):
        run_video(clips, FailingModel(), tmp_path, batch=2, mosaic=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no stream files, no temp files, no summary


def test_stream_sinks_publish_on_a_clean_exit_and_remove_everything_on_an_error(tmp_path):
    frame = np.zeros((32, 48, 3), np.uint8)
    det = Detections(torch.tensor([[1.0, 2.0, 9.0, 12.0]]), torch.tensor([0.9]), torch.tensor([0]), ["square"],
                     torch.tensor([7]))  # fmt: skip
    with pytest.raises(RuntimeError), StreamSinks(tmp_path, detection=True) as sinks:
        sinks.event(0, "a.mp4", 0, det)
        sinks.video("stream_0", frame, 15.0)
        assert {p.name for p in tmp_path.iterdir()} >= {".stream_0.jsonl.partial", ".stream_0.mot.txt.partial"}
        raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []
    with StreamSinks(tmp_path, detection=True) as sinks:
        for i in range(3):
            sinks.event(0, "a.mp4", i, det)
            sinks.video("stream_0", frame, 15.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stream_0.jsonl", "stream_0.mot.txt", "stream_0.mp4"]
    assert probe(tmp_path / "stream_0.mp4")["frames"] == 3
    assert len((tmp_path / "stream_0.mot.txt").read_text().splitlines()) == 3
