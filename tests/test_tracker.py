"""ByteTracker on scripted box sequences, and the assignment solver it shares with the MOT metrics."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
import torch

from parvis.structures import Detections
from parvis.video.tracker import ByteTracker, box_iou, hungarian, linear_assignment

NAMES = ["person", "car"]


def dets(boxes, scores=None, labels=None) -> Detections:
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    n = len(boxes)
    scores = torch.full((n,), 0.9) if scores is None else torch.tensor(scores, dtype=torch.float32)
    labels = torch.zeros(n, dtype=torch.int64) if labels is None else torch.tensor(labels, dtype=torch.int64)
    return Detections(boxes, scores, labels, NAMES)


def box(cx, cy, w=40.0, h=80.0) -> list[float]:
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def ids_by_nearest(out: Detections, centers) -> list[int | None]:
    """The track id nearest each expected center (None when no output box is within 20 px)."""
    boxes = out.boxes.numpy()
    found = []
    for cx, cy in centers:
        if len(boxes) == 0:
            found.append(None)
            continue
        d = np.hypot((boxes[:, 0] + boxes[:, 2]) / 2 - cx, (boxes[:, 1] + boxes[:, 3]) / 2 - cy)
        k = int(d.argmin())
        found.append(int(out.track_ids[k]) if d[k] < 20 else None)
    return found


def test_first_frame_confirms_and_output_is_well_formed():
    tracker = ByteTracker()
    out = tracker.update(dets([box(100, 100), box(300, 100)], labels=[0, 1]))
    assert len(out) == 2
    assert out.track_ids.dtype == torch.int64 and out.track_ids.tolist() == [1, 2]
    assert out.labels.tolist() == [0, 1] and out.class_names == NAMES
    assert out.boxes.dtype == torch.float32 and out.boxes.shape == (2, 4)
    assert torch.allclose(out.boxes, dets([box(100, 100), box(300, 100)]).boxes, atol=1e-3)
    empty = tracker.update(dets([]))
    assert len(empty) == 0 and empty.track_ids.shape == (0,) and empty.track_ids.dtype == torch.int64


def test_id_kept_through_short_occlusion():
    tracker = ByteTracker(max_age=30)
    seen = []
    for t in range(40):
        center = (50 + 5 * t, 200 + 2 * t)
        occluded = 15 <= t < 22  # 7 frames without a detection
        out = tracker.update(dets([] if occluded else [box(*center)]))
        if occluded:
            assert len(out) == 0  # lost tracks are predicted, not reported
        else:
            seen += ids_by_nearest(out, [center])
    assert seen == [1] * len(seen)


def test_new_object_gets_new_id_after_min_hits():
    tracker = ByteTracker(min_hits=3)
    tracker.update(dets([box(100, 100)]))
    tracker.update(dets([box(100, 100)]))
    out = tracker.update(dets([box(100, 100), box(400, 300)]))
    assert out.track_ids.tolist() == [1]  # the newcomer is tentative (1 hit)
    out = tracker.update(dets([box(100, 100), box(400, 300)]))
    assert out.track_ids.tolist() == [1]
    out = tracker.update(dets([box(100, 100), box(400, 300)]))
    assert sorted(out.track_ids.tolist()) == [1, 2]
    assert ids_by_nearest(out, [(100, 100), (400, 300)]) == [1, 2]


def test_tentative_track_dies_at_first_miss():
    tracker = ByteTracker(min_hits=2)
    tracker.update(dets([box(100, 100)]))
    tracker.update(dets([box(100, 100), box(400, 300)]))  # tentative newcomer
    tracker.update(dets([box(100, 100)]))  # missed once: gone
    tracker.update(dets([box(100, 100), box(400, 300)]))  # starts over, tentative again
    out = tracker.update(dets([box(100, 100), box(400, 300)]))
    assert ids_by_nearest(out, [(100, 100), (400, 300)]) == [1, 2]


def test_crossing_objects_keep_their_ids():
    tracker = ByteTracker()
    history = []
    for t in range(50):
        a = (100 + 8 * t, 200)  # left to right
        b = (500 - 8 * t, 200)  # right to left on the same line: fully overlapping a at t = 25
        out = tracker.update(dets([box(*a), box(*b)], scores=[0.9, 0.85]))
        history.append(ids_by_nearest(out, [a, b]))
    first = history[0]
    assert first == [1, 2]
    # At t = 25 both boxes coincide (either id is "nearest"); on either side the velocities must keep them apart.
    for t, ids in enumerate(history):
        if t != 25:
            assert ids == first, f"frame {t}: {ids}"


def test_low_score_detection_continues_a_track_but_never_starts_one():
    tracker = ByteTracker(high_thresh=0.5, low_thresh=0.1)
    for t in range(5):
        tracker.update(dets([box(100 + 3 * t, 100)], scores=[0.9]))
    for t in range(5, 12):  # partly occluded: the detector's score drops below high_thresh
        out = tracker.update(dets([box(100 + 3 * t, 100), box(400, 400)], scores=[0.3, 0.3]))
        assert out.track_ids.tolist() == [1], t  # continued; the lone low-score box starts nothing
        assert out.scores.tolist() == pytest.approx([0.3])
    out = tracker.update(dets([box(100 + 3 * 12, 100)], scores=[0.05]))  # below low_thresh: ignored
    assert len(out) == 0
    tracker.update(dets([]))
    out = tracker.update(dets([box(100 + 3 * 14, 100)], scores=[0.3]))  # a lost track is re-found too
    assert out.track_ids.tolist() == [1]
    assert tracker.num_tracks == 1


def test_lost_track_survives_max_age_frames_then_dies():
    for gap, same in ((5, True), (6, False)):
        tracker = ByteTracker(max_age=5)
        for _ in range(3):
            tracker.update(dets([box(200, 200)]))
        for _ in range(gap):
            tracker.update(dets([]))
        assert tracker.num_tracks == (1 if same else 0)
        tracker.update(dets([box(200, 200)]))
        out = tracker.update(dets([box(200, 200)]))
        assert out.track_ids.tolist() == ([1] if same else [2]), gap


def test_ids_never_reused():
    tracker = ByteTracker(max_age=2)
    issued = []
    for round_ in range(4):
        x = 100 + 150 * round_
        for _ in range(3):
            out = tracker.update(dets([box(x, 100), box(x, 300)]))
        issued += out.track_ids.tolist()
        for _ in range(4):  # everyone dies
            tracker.update(dets([]))
        assert tracker.num_tracks == 0
    tracker.reset()  # a restarted stream keeps counting
    issued += tracker.update(dets([box(100, 100)])).track_ids.tolist()
    assert issued == list(range(1, 10))


def test_class_aware_matching_and_labels_kept():
    tracker = ByteTracker()
    tracker.update(dets([box(100, 100)], labels=[0]))
    tracker.update(dets([box(100, 100)], labels=[0]))
    # Same place, other class: not the person's track; a tentative car track starts.
    out = tracker.update(dets([box(100, 100)], labels=[1]))
    assert len(out) == 0
    out = tracker.update(dets([box(100, 100)], labels=[1]))
    assert out.track_ids.tolist() == [2] and out.labels.tolist() == [1]

    blind = ByteTracker(class_aware=False)
    blind.update(dets([box(100, 100)], labels=[0]))
    out = blind.update(dets([box(100, 100)], labels=[1]))
    assert out.track_ids.tolist() == [1] and out.labels.tolist() == [0]  # a track keeps its label


def test_filtered_boxes_off_returns_the_detections_boxes():
    tracker = ByteTracker(filtered_boxes=False)
    rng = np.random.default_rng(0)
    for t in range(10):
        raw = [b + rng.normal(0, 2) for b in box(100 + 4 * t, 100)]
        out = tracker.update(dets([[0, 0, 5, 5], raw], scores=[0.05, 0.8]))
        assert out.boxes.tolist() == dets([raw]).boxes.tolist()


def test_output_follows_detection_order_and_many_objects():
    rng = np.random.default_rng(1)
    centers = rng.uniform(0, 2000, (30, 2))
    velocity = rng.uniform(-3, 3, (30, 2))
    tracker = ByteTracker()
    for t in range(20):
        now = centers + velocity * t
        order = rng.permutation(30)
        out = tracker.update(dets([box(*now[k], 20, 20) for k in order]))
        ids = ids_by_nearest(out, now[order])  # in the order the detections came in
        assert out.track_ids.tolist() == ids
        assert sorted(ids) == list(range(1, 31))


def test_bad_arguments():
    with pytest.raises(ValueError, match="low_thresh"):
        ByteTracker(high_thresh=0.2, low_thresh=0.4)
    with pytest.raises(ValueError, match="min_hits"):
        ByteTracker(min_hits=0)
    with pytest.raises(ValueError, match="match_iou"):
        ByteTracker(match_iou=0.0)


def test_update_is_fast():
    """Budget 0.5 ms per frame for ~10 objects (about 0.3 ms on a laptop core); asserted loosely for shared CI."""
    rng = np.random.default_rng(0)
    n, frames = 10, 300
    pos = rng.uniform(0, 1000, (n, 2))
    vel = rng.uniform(-3, 3, (n, 2))
    stream = []
    for t in range(frames):
        c = pos + vel * t + rng.normal(0, 1, (n, 2))
        stream.append(dets([box(x, y, 40, 60) for x, y in c], scores=rng.uniform(0.3, 0.95, n).tolist()))
    tracker = ByteTracker()
    for d in stream[:20]:
        tracker.update(d)
    tracker = ByteTracker()
    start = time.perf_counter()
    for d in stream:
        tracker.update(d)
    per_frame = (time.perf_counter() - start) / frames
    assert tracker.num_tracks == n
    assert per_frame < 2e-3, f"{per_frame * 1e3:.2f} ms per frame"


# --------------------------------------------------------------------------- matching


def brute_force(cost, valid):
    """Most pairs, then least cost, by enumeration."""
    n, m = cost.shape
    best = (0, 0.0)
    for k in range(min(n, m), 0, -1):
        for rows in itertools.combinations(range(n), k):
            for cols in itertools.permutations(range(m), k):
                if all(valid[r, c] for r, c in zip(rows, cols, strict=True)):
                    total = sum(cost[r, c] for r, c in zip(rows, cols, strict=True))
                    if best[0] < k or total < best[1]:
                        best = (k, total)
        if best[0]:
            return best
    return best


def test_linear_assignment_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n, m = rng.integers(0, 5, 2)
        cost = rng.random((n, m))
        valid = rng.random((n, m)) < rng.random()
        rows, cols = linear_assignment(cost, valid)
        assert len(set(rows.tolist())) == len(rows) and len(set(cols.tolist())) == len(cols)
        assert valid[rows, cols].all()
        k, total = brute_force(cost, valid)
        assert len(rows) == k
        assert cost[rows, cols].sum() == pytest.approx(total)


def test_hungarian_matches_scipy():
    optimize = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(1)
    for _ in range(200):
        n, m = rng.integers(1, 30, 2)
        cost = rng.random((n, m))
        rows, cols = hungarian(cost)
        ref_rows, ref_cols = optimize.linear_sum_assignment(cost)
        assert len(rows) == min(n, m)
        assert cost[rows, cols].sum() == pytest.approx(cost[ref_rows, ref_cols].sum())


def test_box_iou():
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 0]], dtype=float)
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]], dtype=float)
    np.testing.assert_allclose(box_iou(a, b), [[1 / 3, 0, 1], [0, 0, 0]])
