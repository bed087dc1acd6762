"""Generated video of moving coloured rectangles, and a colour "detector" that finds them in the pixels.

Each object has its own colour; later objects are drawn on top, so crossings really occlude. The detector
segments each colour, boxes its largest blob and scores it by how much of the object is visible, so an
occluded object comes back as a smaller, low-score box (exactly what ByteTrack's second pass is for).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pipeline.core.types import Detections, Frame, FrameResult

BACKGROUND = (40, 40, 40)


@dataclass
class Mover:
    label: str
    color: tuple[int, int, int]  # BGR, unique per object
    start: int  # first frame it is on screen
    end: int  # last frame (inclusive)
    x: float  # centre at ``start``
    y: float
    vx: float  # pixels per frame
    vy: float
    w: float
    h: float

    def box(self, f: int) -> np.ndarray:
        cx = self.x + self.vx * (f - self.start)
        cy = self.y + self.vy * (f - self.start)
        return np.array([cx - self.w / 2, cy - self.h / 2, cx + self.w / 2, cy + self.h / 2], np.float64)

    def on(self, f: int) -> bool:
        return self.start <= f <= self.end


class Scene:
    def __init__(self, movers: list[Mover], width: int = 640, height: int = 360, fps: float = 10.0):
        self.movers = movers
        self.width, self.height, self.fps = width, height, fps

    def _clip(self, box: np.ndarray) -> tuple[int, int, int, int]:
        x1, y1, x2, y2 = np.round(box).astype(int)
        return (min(max(x1, 0), self.width), min(max(y1, 0), self.height),
                min(max(x2, 0), self.width), min(max(y2, 0), self.height))  # fmt: skip

    def render(self, f: int) -> np.ndarray:
        img = np.empty((self.height, self.width, 3), np.uint8)
        img[:] = BACKGROUND
        for m in self.movers:
            if m.on(f):
                x1, y1, x2, y2 = self._clip(m.box(f))
                img[y1:y2, x1:x2] = m.color
        return img

    def detect(self, img: np.ndarray, f: int, hidden: set[int] = frozenset()) -> Detections:
        """Find every mover's visible pixels; ``hidden`` movers (indices) are not reported (missed)."""
        boxes, scores, labels, self.last_rows = [], [], [], []
        for i, m in enumerate(self.movers):
            if not m.on(f) or i in hidden:
                continue
            # only the mover's own rectangle can hold its colour (colours are unique), so segment just that
            x1, y1, x2, y2 = self._clip(m.box(f))
            mask = np.all(img[y1:y2, x1:x2] == np.array(m.color, np.uint8), axis=2)
            if not mask.any():
                continue
            lab, n = ndimage.label(mask)
            sizes = ndimage.sum(mask, lab, range(1, n + 1))
            biggest = int(np.argmax(sizes)) + 1
            ys, xs = np.nonzero(lab == biggest)
            visible = sizes[biggest - 1] / (m.w * m.h)
            if visible < 0.1:
                continue
            boxes.append([x1 + xs.min(), y1 + ys.min(), x1 + xs.max() + 1, y1 + ys.max() + 1])
            scores.append(min(0.95, 0.2 + 0.75 * visible))
            labels.append(m.label)
            self.last_rows.append(i)
        if not boxes:
            return Detections.empty()
        return Detections(
            np.array(boxes, np.float32),
            np.array(scores, np.float32),
            np.zeros(len(boxes), np.int32),
            labels,
        )

    def results(self, camera_id: str, n_frames: int, t0: float = 1_700_000_000.0, hidden=None):
        """FrameResults for frames 0..n-1; ``hidden(f)`` -> set of mover indices the detector misses."""
        for f in range(n_frames):
            img = self.render(f)
            det = self.detect(img, f, hidden(f) if hidden else set())
            frame = Frame(camera_id, f, f / self.fps, t0 + f / self.fps, img)
            # extras["gt"][row] = index of the mover that detection row came from (for scoring ids)
            yield FrameResult(frame, det, "colour-blobs", extras={"gt": list(self.last_rows)})
