"""CLEAR-MOT / IDF1 evaluation: hand-counted cases, MOTChallenge text in and out, agreement with py-motmetrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from parvis.errors import ParvisError
from parvis.structures import Detections
from parvis.video.mot import ClearMOTAccumulator, evaluate_mot, format_mot, read_mot
from parvis.video.tracker import ByteTracker


def walkers(n_objects=3, frames=20):
    """Ground-truth rows: objects walking right, 40 x 80 boxes, 100 px apart."""
    return [
        (f, o, 10.0 + 5 * f, 100.0 * o, 40.0, 80.0, 1, 1, 1.0)
        for f in range(1, frames + 1)
        for o in range(1, n_objects + 1)
    ]


def relabel(rows, mapping):
    return [(r[0], mapping(r[0], r[1]), *r[2:]) for r in rows]


def test_perfect_tracking():
    gt = walkers()
    result = evaluate_mot(gt, relabel(gt, lambda f, o: 10 + o))  # any ids, consistently
    assert result.mota == 1.0 and result.idf1 == 1.0 and result.motp == pytest.approx(1.0)
    assert (result.num_switches, result.num_false_positives, result.num_misses) == (0, 0, 0)
    assert result.num_gt == result.num_matches == 60 and result.num_frames == 20
    assert result.num_gt_ids == result.num_hyp_ids == 3


def test_one_id_change_is_one_switch():
    gt = walkers()
    result = evaluate_mot(gt, relabel(gt, lambda f, o: 7 if (o == 2 and f > 10) else o))
    assert result.num_switches == 1
    assert result.mota == pytest.approx(1 - 1 / 60)
    assert result.idf1 == pytest.approx(1 - 10 / 60)  # object 2 keeps one of its two ids: 10 frames lost


def test_swapped_ids_switch_both_objects():
    gt = walkers()
    swap = {1: 2, 2: 1, 3: 3}
    result = evaluate_mot(gt, relabel(gt, lambda f, o: swap[o] if f > 10 else o))
    assert result.num_switches == 2  # each of the two objects changes partner once
    assert result.mota == pytest.approx(1 - 2 / 60)


def test_previous_correspondence_wins_over_a_better_overlap():
    acc = ClearMOTAccumulator()
    acc.update([1], [[0, 0, 10, 10]], [5], [[0, 0, 10, 10]])
    # Hypothesis 6 now fits object 1 perfectly, 5 still overlaps it with IoU 0.8: the match stays with 5.
    acc.update([1], [[0, 0, 10, 10]], [5, 6], [[0, 0, 10, 8], [0, 0, 10, 10]])
    result = acc.result()
    assert (result.num_switches, result.num_false_positives, result.num_matches) == (0, 1, 2)
    assert result.motp == pytest.approx((1 + 0.8) / 2)


def test_misses_and_false_positives():
    gt = walkers()
    hyp = [r for r in gt if not (r[1] == 1 and r[0] in (3, 4, 5))]  # three misses
    hyp += [(2, 99, 500.0, 500.0, 30.0, 30.0, 0.5, -1, -1), (9, 99, 500.0, 500.0, 30.0, 30.0, 0.5, -1, -1)]
    hyp += [(30, 1, 0.0, 0.0, 10.0, 10.0, 0.5, -1, -1)]  # a frame the ground truth does not have
    result = evaluate_mot(gt, hyp)
    assert (result.num_misses, result.num_false_positives, result.num_switches) == (3, 3, 0)
    assert result.mota == pytest.approx(1 - 6 / 60)
    assert result.num_frames == 21


def test_overlap_below_threshold_is_a_miss_and_a_false_positive():
    acc = ClearMOTAccumulator(iou_threshold=0.5)
    acc.update([1], [[0, 0, 10, 10]], [1], [[6, 0, 10, 10]], box_format="xywh")  # IoU 4/16
    result = acc.result()
    assert (result.num_misses, result.num_false_positives, result.num_matches) == (1, 1, 0)
    assert result.mota == -1.0


def test_idf1_counts_the_best_single_pairing():
    acc = ClearMOTAccumulator()
    square = [[0, 0, 10, 10]]
    for hid in (1, 1, 2, 2):  # one object, covered by hypothesis 1 then 2
        acc.update([1], square, [hid], square)
    result = acc.result()
    assert result.idf1 == pytest.approx(2 * 2 / (4 + 4))
    assert result.num_switches == 1


def test_read_mot_files_lines_and_rows(tmp_path):
    lines = ["1,1,10,20,30,40,1,1,1", "1,2,50,20,30,40,0,1,1", "", "2, 1, 12, 20, 30, 40, 1, 1, 0.5"]
    path = tmp_path / "gt.txt"
    path.write_text("\n".join(lines) + "\n")
    for source in (path, str(path), lines, [[float(v) for v in line.split(",")] for line in lines if line]):
        seq = read_mot(source)
        assert sorted(seq) == [1, 2] and seq[1][0].tolist() == [1, 2]
        np.testing.assert_allclose(seq[2][1], [[12, 20, 30, 40]])
    assert read_mot(path, min_confidence=1)[1][0].tolist() == [1]  # conf 0 rows are not evaluated


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(ParvisError, match="no such MOT file"):
        read_mot(tmp_path / "missing.txt")
    with pytest.raises(ParvisError, match="line 2: not numbers"):
        read_mot(["1,1,0,0,1,1", "1,x,0,0,1,1"])
    with pytest.raises(ParvisError, match="need frame,id,x,y,w,h"):
        read_mot(["1,1,0,0"])
    with pytest.raises(ParvisError, match="frame 3: an id occurs twice"):
        evaluate_mot([(3, 1, 0, 0, 5, 5), (3, 1, 9, 9, 5, 5)], [])


def tracked_sequence(seed: int, frames: int = 60):
    """Ground truth of walkers plus noisy detections (misses, clutter) run through ByteTracker -> MOT lines."""
    rng = np.random.default_rng(seed)
    n = 8
    pos = rng.uniform(0, 600, (n, 2))
    vel = rng.uniform(-6, 6, (n, 2))
    size = rng.uniform(25, 70, (n, 2))
    gt, hyp = [], []
    tracker = ByteTracker()
    for f in range(1, frames + 1):
        xy = pos + vel * f
        boxes, scores = [], []
        for o in range(n):
            gt.append((f, o + 1, *xy[o], *size[o], 1, 1, 1.0))
            if rng.random() < 0.15:
                continue
            noisy = np.concatenate([xy[o], xy[o] + size[o]]) + rng.normal(0, 3, 4)
            boxes.append(noisy.tolist())
            scores.append(rng.uniform(0.2, 0.95))
        for _ in range(rng.poisson(1.0)):
            x, y = rng.uniform(0, 600, 2)
            boxes.append([x, y, x + 30, y + 50])
            scores.append(rng.uniform(0.4, 0.9))
        det = Detections(
            torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            torch.tensor(scores, dtype=torch.float32),
            torch.zeros(len(boxes), dtype=torch.int64),
            ["walker"],
        )
        hyp += format_mot(f, tracker.update(det))
    return gt, hyp


def test_format_mot_round_trip():
    gt, hyp = tracked_sequence(0)
    assert hyp and all(len(line.split(",")) == 10 for line in hyp)
    seq = read_mot(hyp)
    assert all(len(np.unique(ids)) == len(ids) for ids, _ in seq.values())
    result = evaluate_mot(gt, hyp)
    assert result.mota > 0.5 and result.idf1 > 0.5  # a sanity floor for the tracker on easy data
    with pytest.raises(ValueError, match="track_ids"):
        format_mot(1, Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), []))


def noisy_hypotheses(seed: int, frames: int = 60):
    """Ground truth and hand-made hypotheses with jitter, misses, fragments, id swaps and clutter."""
    rng = np.random.default_rng(seed)
    n = 8
    pos = rng.uniform(0, 400, (n, 2))
    vel = rng.uniform(-4, 4, (n, 2))
    size = rng.uniform(20, 60, (n, 2))
    start = rng.integers(1, frames // 2, n)
    end = start + rng.integers(10, frames, n)
    hid = {o: o + 100 for o in range(n)}
    next_hid = 1000
    gt, hyp = [], []
    for f in range(1, frames + 1):
        for o in range(n):
            if not start[o] <= f <= end[o]:
                continue
            x, y = pos[o] + vel[o] * f
            gt.append((f, o + 1, x, y, *size[o], 1, 1, 1.0))
            if rng.random() < 0.1:
                continue
            if rng.random() < 0.03:
                hid[o], next_hid = next_hid, next_hid + 1
            jitter = rng.normal(0, rng.choice([1.0, 6.0]), 4)  # the larger one often crosses IoU 0.5
            hyp.append(
                (f, hid[o], x + jitter[0], y + jitter[1], size[o][0] + jitter[2], size[o][1] + jitter[3], 0.9, -1, -1)
            )
        if rng.random() < 0.1:
            a, b = rng.choice(n, 2, replace=False)
            hid[a], hid[b] = hid[b], hid[a]
        for k in range(rng.poisson(0.5)):
            hyp.append((f, 5000 + k, *rng.uniform(0, 400, 2), 30.0, 30.0, 0.5, -1, -1))
    return gt, hyp


def write_rows(path, rows):
    path.write_text("".join(",".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r) + "\n" for r in rows))


@pytest.mark.filterwarnings("ignore")
def test_agrees_with_motmetrics(tmp_path, monkeypatch):
    mm = pytest.importorskip("motmetrics")
    if not hasattr(np, "asfarray"):  # motmetrics 1.4 still calls it; NumPy 2 removed it
        monkeypatch.setattr(np, "asfarray", lambda a, dtype=float: np.asarray(a, dtype=dtype), raising=False)
    names = ["mota", "motp", "idf1", "num_switches", "num_false_positives", "num_misses", "num_objects"]
    cases = [noisy_hypotheses(seed) for seed in range(3)] + [tracked_sequence(seed) for seed in range(3)]
    for k, (gt, hyp) in enumerate(cases):
        gt_path, hyp_path = tmp_path / f"gt{k}.txt", tmp_path / f"hyp{k}.txt"
        write_rows(gt_path, gt)
        if hyp and isinstance(hyp[0], str):
            hyp_path.write_text("\n".join(hyp) + "\n")
        else:
            write_rows(hyp_path, hyp)
        acc = mm.utils.compare_to_groundtruth(
            mm.io.loadtxt(str(gt_path), fmt="mot15-2D", min_confidence=1),
            mm.io.loadtxt(str(hyp_path), fmt="mot15-2D"),
            "iou",
            distth=0.5,
        )
        ref = mm.metrics.create().compute(acc, metrics=names, name="seq")
        ref = {name: float(ref[name].iloc[0]) for name in names}
        ours = evaluate_mot(gt_path, hyp_path, gt_min_confidence=1)
        assert ours.num_switches == ref["num_switches"], k
        assert ours.num_false_positives == ref["num_false_positives"], k
        assert ours.num_misses == ref["num_misses"], k
        assert ours.num_gt == ref["num_objects"], k
        assert ours.mota == pytest.approx(ref["mota"], abs=1e-12), k
        assert 1 - ours.motp == pytest.approx(ref["motp"], abs=1e-9), k
        assert ours.idf1 == pytest.approx(ref["idf1"], abs=1e-12), k
