"""Face tracks: the same face from frame to frame, so that a door vote counts frames of one tracked face.

Greedy association with each track's last box by centre distance (in face sizes) and size ratio, not IoU:
on a slow CPU the face stage may analyse one frame a second, and a face walking towards the door moves more
than its own width between analysed frames less often than it stops overlapping itself. A face that moves
further than ``max_move`` face sizes, changes size by more than ``max_scale``, or is lost for longer than
``max_gap_s`` (the analyzer passes its doors' vote window: older frames cannot vote anyway) starts a new
track, and so a new vote. Two people side by side are two tracks; a track that still names two people is
voided by the door policy's no-conflicting-identity rule.
"""

from __future__ import annotations

import numpy as np

from pipeline.analyze.faces.quality import face_side


class FaceTracker:
    def __init__(self, max_gap_s: float = 3.0, max_move: float = 1.0, max_scale: float = 1.6) -> None:
        self.max_gap_s = max_gap_s
        self.max_move = max_move
        self.max_scale = max_scale
        self._next = 1
        self._tracks: list[tuple[int, np.ndarray, float]] = []  # (id, last box, last seen)

    def assign(self, boxes: np.ndarray, t: float) -> list[int]:
        """Track ids for this frame's face boxes (N, 4), in their order."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        alive = [tr for tr in self._tracks if t - tr[2] <= self.max_gap_s]
        pairs = []
        for r, b in enumerate(boxes):
            size_b = max(face_side(b), 1.0)
            cb = (b[:2] + b[2:]) / 2
            for c, (_, p, _) in enumerate(alive):
                size_p = max(face_side(p), 1.0)
                move = float(np.linalg.norm(cb - (p[:2] + p[2:]) / 2)) / max(size_b, size_p)
                scale = max(size_b, size_p) / min(size_b, size_p)
                if move <= self.max_move and scale <= self.max_scale:
                    pairs.append((move, r, c))
        out: list[int] = [0] * len(boxes)
        used_r: set[int] = set()
        used_c: set[int] = set()
        for _, r, c in sorted(pairs):
            if r in used_r or c in used_c:
                continue
            used_r.add(r)
            used_c.add(c)
            out[r] = alive[c][0]
        for r in range(len(boxes)):
            if r not in used_r:
                out[r] = self._next
                self._next += 1
        kept = [tr for c, tr in enumerate(alive) if c not in used_c]
        self._tracks = kept + [(out[r], boxes[r].copy(), t) for r in range(len(boxes))]
        return out
