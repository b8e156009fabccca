"""CLEAR-MOT (MOTA, MOTP, ID switches) and IDF1 for a tracker's output against ground truth, as py-motmetrics.

    result = evaluate_mot("MOT17-02/gt/gt.txt", "runs/video/MOT17-02.txt", gt_min_confidence=1)
    result.mota, result.idf1, result.to_dict()

Inputs are MOTChallenge text (`frame,id,x,y,w,h,conf,class,visibility`, 1-based frames, boxes left/top/width/
height) or the same rows in memory. Per frame (Bernardin & Stiefelhagen 2008, as `motmetrics.MOTAccumulator`):

1. a ground-truth object keeps the hypothesis it was matched to last time, if that one is still present and
   overlaps it with IoU >= iou_threshold;
2. the rest are matched by the Hungarian method on 1 - IoU, as many pairs as the threshold allows;
3. a match whose object was last matched to another hypothesis is an ID switch (however long ago: motmetrics'
   default max_switch_time is infinite); unmatched objects are misses (FN), unmatched hypotheses false
   positives (FP).

MOTA = 1 - (FN + FP + IDSW) / GT. MOTP here is the mean IoU of the matches (higher is better); motmetrics'
`motp` is the mean distance, 1 - this. IDF1 (Ristani et al. 2016) pairs ids once for the whole sequence,
maximizing the frames where a pair overlaps with IoU >= iou_threshold: IDF1 = 2 IDTP / (GT + hypotheses).

No pandas and no motmetrics at runtime; tests cross-check against motmetrics when it is installed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from parvis.errors import ParvisError
from parvis.structures import Detections
from parvis.video.tracker import box_iou, hungarian, linear_assignment

__all__ = ["ClearMOTAccumulator", "MOTResult", "evaluate_mot", "format_mot", "read_mot"]

# frame -> (ids (K,) int64, boxes (K, 4) float64 left, top, width, height)
MOTSequence = dict[int, tuple[np.ndarray, np.ndarray]]


# --------------------------------------------------------------------------- MOTChallenge text


def read_mot(source: str | Path | Iterable, min_confidence: float | None = None) -> MOTSequence:
    """MOTChallenge rows -> {frame: (ids, xywh boxes)}, frames as written (1-based).

    `source`: a text file, or an iterable of lines (str) or rows (sequences of numbers) in the same column order.
    Rows need at least frame, id, x, y, w, h; a missing confidence counts as 1. `min_confidence` drops rows whose
    confidence is below it: pass 1 for MOTChallenge ground truth, whose conf 0 marks boxes not to evaluate.
    """
    name = "rows"
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ParvisError(f"{path}: no such MOT file; give a MOTChallenge text file (frame,id,x,y,w,h,...)")
        name = str(path)
        source = path.read_text().splitlines()
    ids: dict[int, list[int]] = defaultdict(list)
    boxes: dict[int, list[list[float]]] = defaultdict(list)
    for line_no, row in enumerate(source, start=1):
        if isinstance(row, str):
            text = row.strip()
            if not text or text.startswith("#"):
                continue
            fields = text.replace(",", " ").split()
        else:
            fields = list(row)
        try:
            values = [float(v) for v in fields]
        except (TypeError, ValueError):
            raise ParvisError(f"{name}, line {line_no}: not numbers: {row!r}") from None
        if len(values) < 6:
            raise ParvisError(f"{name}, line {line_no}: need frame,id,x,y,w,h[,conf,...], got {len(values)} fields")
        if min_confidence is not None and (values[6] if len(values) > 6 else 1.0) < min_confidence:
            continue
        frame = int(values[0])
        ids[frame].append(int(values[1]))
        boxes[frame].append(values[2:6])
    return {
        frame: (np.asarray(ids[frame], dtype=np.int64), np.asarray(boxes[frame], dtype=np.float64).reshape(-1, 4))
        for frame in sorted(ids)
    }


def format_mot(frame: int, detections: Detections) -> list[str]:
    """A tracker's output for one frame as MOTChallenge result lines (`frame,id,x,y,w,h,score,-1,-1,-1`).

    Only tracked boxes (track_ids set) can be written; `frame` is 1-based as the format wants.
    """
    if detections.track_ids is None:
        raise ValueError("detections have no track_ids: run them through a tracker first")
    boxes = detections.boxes.detach().cpu().double().tolist()
    scores = detections.scores.detach().cpu().tolist()
    tracks = detections.track_ids.detach().cpu().tolist()
    return [
        f"{frame},{int(tid)},{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},{score:.4f},-1,-1,-1"
        for (x1, y1, x2, y2), score, tid in zip(boxes, scores, tracks, strict=True)
    ]


# --------------------------------------------------------------------------- metrics


@dataclass
class MOTResult:
    """CLEAR-MOT and ID metrics of one sequence (or several accumulated together)."""

    mota: float
    motp: float  # mean IoU of matched pairs (motmetrics' motp is 1 - this)
    idf1: float
    idp: float
    idr: float
    precision: float
    recall: float
    num_gt: int  # ground-truth boxes (GT)
    num_hyp: int  # hypothesis boxes
    num_matches: int  # matched pairs, ID switches included (TP)
    num_switches: int  # IDSW
    num_false_positives: int  # FP
    num_misses: int  # FN
    num_frames: int
    num_gt_ids: int
    num_hyp_ids: int

    def to_dict(self) -> dict:
        return asdict(self)


def _ratio(num: float, den: float) -> float:
    return num / den if den else float("nan")


class ClearMOTAccumulator:
    """Frame-by-frame CLEAR-MOT bookkeeping for one sequence; `result()` any time.

    Use it live (feed each frame's ground truth and the tracker's output) or through `evaluate_mot`.
    """

    def __init__(self, iou_threshold: float = 0.5) -> None:
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        self.iou_threshold = float(iou_threshold)
        self._max_distance = 1.0 - self.iou_threshold  # gate on 1 - IoU, bit for bit as motmetrics
        self._last_match: dict[int, int] = {}  # object id -> hypothesis id it was last matched to
        self._pair_frames: dict[tuple[int, int], int] = defaultdict(int)  # frames each (object, hyp) overlap
        self._gt_frames: dict[int, int] = defaultdict(int)
        self._hyp_frames: dict[int, int] = defaultdict(int)
        self.frames = self.num_gt = self.num_hyp = self.matches = self.switches = 0
        self.iou_sum = 0.0

    def update(
        self,
        gt_ids: Sequence[int] | np.ndarray,
        gt_boxes: np.ndarray,
        hyp_ids: Sequence[int] | np.ndarray,
        hyp_boxes: np.ndarray,
        box_format: str = "xywh",
        frame: int | None = None,
    ) -> None:
        """One frame: ground-truth and hypothesis ids with their boxes, (K, 4) in `box_format` ("xywh", "xyxy").

        `frame` only names the frame in error messages (default: the count of updates so far)."""
        if box_format not in ("xywh", "xyxy"):
            raise ValueError(f'box_format must be "xywh" or "xyxy", got {box_format!r}')
        gt_ids = np.asarray(gt_ids, dtype=np.int64).reshape(-1)
        hyp_ids = np.asarray(hyp_ids, dtype=np.int64).reshape(-1)
        gt = _to_xyxy(gt_boxes, box_format, len(gt_ids), "ground truth")
        hyp = _to_xyxy(hyp_boxes, box_format, len(hyp_ids), "hypothesis")
        for kind, ids in (("ground truth", gt_ids), ("hypothesis", hyp_ids)):
            if len(np.unique(ids)) != len(ids):
                where = frame if frame is not None else self.frames + 1
                raise ParvisError(f"frame {where}: an id occurs twice in the {kind}; ids must be unique per frame")

        self.frames += 1
        self.num_gt += len(gt_ids)
        self.num_hyp += len(hyp_ids)
        for o in gt_ids.tolist():
            self._gt_frames[o] += 1
        for h in hyp_ids.tolist():
            self._hyp_frames[h] += 1
        if len(gt_ids) == 0 or len(hyp_ids) == 0:
            return

        iou = box_iou(gt, hyp)
        distance = 1.0 - iou
        valid = distance <= self._max_distance
        for i, j in zip(*np.nonzero(valid), strict=True):
            self._pair_frames[int(gt_ids[i]), int(hyp_ids[j])] += 1

        # 1. Keep last frame's correspondences that still hold.
        gt_done = np.zeros(len(gt_ids), dtype=bool)
        hyp_done = np.zeros(len(hyp_ids), dtype=bool)
        hyp_index = {h: j for j, h in enumerate(hyp_ids.tolist())}
        for i, o in enumerate(gt_ids.tolist()):
            j = hyp_index.get(self._last_match.get(o, None))
            if j is not None and not hyp_done[j] and valid[i, j]:
                gt_done[i] = hyp_done[j] = True
                self.matches += 1
                self.iou_sum += float(iou[i, j])

        # 2. Hungarian on the rest; a new partner for an object matched before is an ID switch.
        open_valid = valid & ~gt_done[:, None] & ~hyp_done[None, :]
        rows, cols = linear_assignment(distance, open_valid)
        for i, j in zip(rows.tolist(), cols.tolist(), strict=True):
            o, h = int(gt_ids[i]), int(hyp_ids[j])
            previous = self._last_match.get(o)
            if previous is not None and previous != h:
                self.switches += 1
            self._last_match[o] = h
            self.matches += 1
            self.iou_sum += float(iou[i, j])

    def result(self) -> MOTResult:
        misses = self.num_gt - self.matches
        false_positives = self.num_hyp - self.matches
        idtp = self._id_true_positives()
        return MOTResult(
            mota=1.0 - _ratio(misses + false_positives + self.switches, self.num_gt),
            motp=_ratio(self.iou_sum, self.matches),
            idf1=_ratio(2 * idtp, self.num_gt + self.num_hyp),
            idp=_ratio(idtp, self.num_hyp),
            idr=_ratio(idtp, self.num_gt),
            precision=_ratio(self.matches, self.num_hyp),
            recall=_ratio(self.matches, self.num_gt),
            num_gt=self.num_gt,
            num_hyp=self.num_hyp,
            num_matches=self.matches,
            num_switches=self.switches,
            num_false_positives=false_positives,
            num_misses=misses,
            num_frames=self.frames,
            num_gt_ids=len(self._gt_frames),
            num_hyp_ids=len(self._hyp_frames),
        )

    def _id_true_positives(self) -> int:
        """Frames of overlap kept by the best one-to-one pairing of object ids with hypothesis ids."""
        if not self._pair_frames:
            return 0
        objects = sorted({o for o, _ in self._pair_frames})
        hyps = sorted({h for _, h in self._pair_frames})
        row = {o: r for r, o in enumerate(objects)}
        col = {h: c for c, h in enumerate(hyps)}
        overlap = np.zeros((len(objects), len(hyps)))
        for (o, h), count in self._pair_frames.items():
            overlap[row[o], col[h]] = count
        # Maximum weight, not maximum cardinality: zero-weight pairs mean "unpaired", so a dense solve on
        # -overlap is exact, and each connected group of ids that ever overlapped is solved on its own.
        total = 0
        for rows, cols in _components(overlap > 0):
            sub = overlap[np.ix_(rows, cols)]
            r, c = hungarian(-sub)
            total += int(sub[r, c].sum())
        return total


def _components(adjacency: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Connected components of a bipartite graph given as a (rows, cols) boolean matrix."""
    n_rows, n_cols = adjacency.shape
    parent = list(range(n_rows + n_cols))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for r, c in zip(*np.nonzero(adjacency), strict=True):
        a, b = find(int(r)), find(n_rows + int(c))
        if a != b:
            parent[a] = b
    groups: dict[int, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    for r in range(n_rows):
        groups[find(r)][0].append(r)
    for c in range(n_cols):
        groups[find(n_rows + c)][1].append(c)
    return [(np.asarray(rs), np.asarray(cs)) for rs, cs in groups.values() if rs and cs]


def _to_xyxy(boxes, box_format: str, count: int, kind: str) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) if count else np.zeros((0, 4))
    if len(boxes) != count:
        raise ValueError(f"{kind}: {count} ids but {len(boxes)} boxes")
    if box_format == "xywh":
        boxes = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)
    return boxes


def evaluate_mot(
    gt: str | Path | Iterable | Mapping,
    hyp: str | Path | Iterable | Mapping,
    iou_threshold: float = 0.5,
    gt_min_confidence: float | None = None,
) -> MOTResult:
    """MOTA, MOTP, IDF1 and counts of one sequence.

    `gt`, `hyp`: MOTChallenge files, in-memory rows, or `read_mot` results. Frames are the union of both;
    a frame only in one of them contributes misses or false positives. `gt_min_confidence=1` ignores the
    ground-truth rows MOTChallenge marks with conf 0 (as motmetrics' MOTChallenge evaluation does).
    """
    gt_seq = gt if isinstance(gt, Mapping) else read_mot(gt, min_confidence=gt_min_confidence)
    hyp_seq = hyp if isinstance(hyp, Mapping) else read_mot(hyp)
    empty = (np.zeros(0, dtype=np.int64), np.zeros((0, 4)))
    acc = ClearMOTAccumulator(iou_threshold)
    for frame in sorted(set(gt_seq) | set(hyp_seq)):
        gt_ids, gt_boxes = gt_seq.get(frame, empty)
        hyp_ids, hyp_boxes = hyp_seq.get(frame, empty)
        acc.update(gt_ids, gt_boxes, hyp_ids, hyp_boxes, frame=frame)
    return acc.result()
