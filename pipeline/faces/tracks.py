"""Face tracks: the same face from frame to frame, so that a door vote counts frames of one tracked face.

Greedy IoU association with each track's last box. A face that moves too far between two analysed frames,
or is lost for longer than ``max_gap_s``, starts a new track (and so a new vote): a vote can never be
completed by frames of two different faces that happen to get the same name.
"""

from __future__ import annotations

import numpy as np

from pipeline.tracking.geometry import iou_matrix


class FaceTracker:
    def __init__(self, min_iou: float = 0.3, max_gap_s: float = 1.0) -> None:
        self.min_iou = min_iou
        self.max_gap_s = max_gap_s
        self._next = 1
        self._boxes = np.zeros((0, 4), np.float64)
        self._ids: list[int] = []
        self._seen: list[float] = []

    def assign(self, boxes: np.ndarray, t: float) -> list[int]:
        """Track ids for this frame's face boxes (N, 4), in their order."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        alive = [i for i, s in enumerate(self._seen) if t - s <= self.max_gap_s]
        prev = self._boxes[alive]
        iou = iou_matrix(boxes, prev)
        out: list[int] = [0] * len(boxes)
        taken_new: set[int] = set()
        taken_old: set[int] = set()
        for flat in np.argsort(-iou, axis=None):
            r, c = divmod(int(flat), max(len(prev), 1))
            if not len(prev) or iou[r, c] < self.min_iou:
                break
            if r in taken_new or c in taken_old:
                continue
            taken_new.add(r)
            taken_old.add(c)
            out[r] = self._ids[alive[c]]
        for r in range(len(boxes)):
            if r not in taken_new:
                out[r] = self._next
                self._next += 1
        self._boxes, self._ids, self._seen = boxes.copy(), list(out), [t] * len(out)
        return out
