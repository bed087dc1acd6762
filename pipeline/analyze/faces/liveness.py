"""Liveness evidence per tracked face, from dlib's 68 landmarks: a blink, or head motion a flat photo cannot
make.

- **Blink**: the eye aspect ratio (EAR, :func:`pipeline.models.dlib_shape.eye_aspect_ratio`) of some frame
  drops to ``blink_ear`` or below, with an earlier and a later frame of the same track at least
  ``blink_open_delta`` above that dip (eyes open, closed, open again). A photo's EAR stays put; tilting a
  photo enough to squash it by that much also makes it useless for matching.
- **Motion**: a planar photo moved, tilted or turned in front of the camera maps its landmarks between any
  two frames by one homography. A real head turning (or a mouth moving) does not: the nose tip moves
  against the cheeks and the jaw line slides. For each new frame, the RMS landmark residual of the best-fit
  homography from every earlier frame of the track in the window (at least ``MIN_PAIRS``) is measured in
  inter-ocular distances; evidence is a median of at least ``motion_min_residual`` (the median, because
  one landmark fit gone wrong makes a single pair large). Measured on the project's data: the frame of
  ``liveness/real.mov`` held as a print and moved by 60 homographies, through H.264: median statistic at
  most 0.032 (single pairs up to 0.054); real.mov itself (a live man turning and talking, 120 frames):
  median 0.063, 90th percentile 0.124.

Each kind of evidence is remembered with the capture time at which it was seen; the door policy accepts it
only inside its vote window.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.models.dlib_shape import LEFT_EYE, RIGHT_EYE, ShapePredictor, eye_aspect_ratio

# MTCNN box -> the box dlib's 68-point model was trained on (dlib's HOG detector), in MTCNN box units:
# median over the frames of liveness/real.mov where both found the face.
_DLIB_BOX = (0.0, 0.12, 1.05, 0.99)
MIN_PAIRS = 5


def dlib_box(box: np.ndarray) -> np.ndarray:
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = x2 - x1, y2 - y1
    a, b, c, d = _DLIB_BOX
    return np.array([x1 + a * w, y1 + b * h, x1 + c * w, y1 + d * h], np.float64)


@dataclass(frozen=True)
class LivenessSettings:
    blink_ear: float = 0.21
    blink_open_delta: float = 0.06
    motion_min_residual: float = 0.05
    window_s: float = 3.0


@dataclass(frozen=True)
class Evidence:
    """Capture times at which each kind of liveness was last seen for a track (None: never)."""

    blink_at: float | None = None
    motion_at: float | None = None


def homography_residual(a: np.ndarray, b: np.ndarray) -> float:
    """RMS distance, in inter-ocular distances of ``b``, between ``b`` and ``a`` mapped by the best
    least-squares homography a -> b."""
    src, dst = a.astype(np.float64), b.astype(np.float64)
    h, _ = cv2.findHomography(src, dst, 0)
    iod = float(np.linalg.norm(dst[list(RIGHT_EYE)].mean(0) - dst[list(LEFT_EYE)].mean(0)))
    if h is None or iod <= 1e-6:
        return 0.0
    mapped = cv2.perspectiveTransform(src[None], h)[0]
    return float(np.sqrt(((mapped - dst) ** 2).sum(1).mean()) / iod)


class LivenessTracker:
    """Landmarks and evidence per face track (bounded: tracks not seen for a window are dropped)."""

    def __init__(self, settings: LivenessSettings, predictor: ShapePredictor) -> None:
        self.s = settings
        self.predictor = predictor
        self._hist: dict[int, deque[tuple[float, np.ndarray, float]]] = {}
        self._evidence: dict[int, Evidence] = {}

    def landmarks(self, grey: np.ndarray, box: np.ndarray) -> np.ndarray:
        return self.predictor(grey, dlib_box(box))

    def observe(self, track_id: int, t: float, points: np.ndarray) -> Evidence:
        hist = self._hist.setdefault(track_id, deque())
        ear = eye_aspect_ratio(points)
        hist.append((t, points, ear))
        while hist and hist[0][0] < t - self.s.window_s:
            hist.popleft()
        ev = self._evidence.get(track_id, Evidence())
        earlier = list(hist)[:-1]
        if len(earlier) >= MIN_PAIRS:
            residual = float(np.median([homography_residual(p, points) for _, p, _ in earlier]))
            if residual >= self.s.motion_min_residual:
                ev = Evidence(ev.blink_at, t)
        ears = [e for _, _, e in hist]
        for i in range(1, len(ears) - 1):
            dip = ears[i]
            if (
                dip <= self.s.blink_ear
                and max(ears[:i]) >= dip + self.s.blink_open_delta
                and max(ears[i + 1 :]) >= dip + self.s.blink_open_delta
            ):
                ev = Evidence(t, ev.motion_at)
                break
        self._evidence[track_id] = ev
        self._prune(t)
        return ev

    def _prune(self, t: float) -> None:
        for tid in [k for k, h in self._hist.items() if not h or h[-1][0] < t - self.s.window_s]:
            del self._hist[tid]
            self._evidence.pop(tid, None)
