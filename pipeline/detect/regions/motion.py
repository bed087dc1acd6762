"""Cheap motion detection: where in a frame did something change?

Frigate's recipe, written for this pipeline: shrink the frame to a small grey copy, blur it against sensor
noise, take its absolute difference from a running-average background, threshold, dilate, and return the
bounding boxes of the remaining blobs in full-frame pixels. The background learns with
``cv2.accumulateWeighted`` so slow light changes fade in; a change over most of the frame at once (lights
switched, camera shaken) resets the background and is reported as ``recalibrated`` so the caller can scan
the whole frame instead of trusting the boxes.

Costs well under a millisecond per 1080p frame at the default 180-pixel-high copy (most of it is the
resize), so it can run on every detected frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.config.regions import MotionConfig


@dataclass(frozen=True)
class Motion:
    """Boxes (N, 4) x1 y1 x2 y2 float32 in frame pixels; ``recalibrated``: the background was reset."""

    boxes: np.ndarray
    recalibrated: bool = False
    first: bool = False  # no background yet (first frame, or the frame size changed)


class MotionDetector:
    def __init__(self, cfg: MotionConfig) -> None:
        self.cfg = cfg
        self._bg: np.ndarray | None = None
        self._shape: tuple[int, int] = (0, 0)
        self._kernel = np.ones((3, 3), np.uint8)

    def _small(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        sh = min(self.cfg.frame_height, h)
        sw = max(1, round(w * sh / h))
        small = cv2.resize(image, (sw, sh), interpolation=cv2.INTER_AREA)
        grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY) if small.ndim == 3 else small
        if self.cfg.blur > 1:
            grey = cv2.GaussianBlur(grey, (self.cfg.blur, self.cfg.blur), 0)
        return grey

    def detect(self, image: np.ndarray) -> Motion:
        """Motion boxes of ``image`` (HxWx3 BGR) against the background; then learn ``image`` into it."""
        h, w = image.shape[:2]
        grey = self._small(image)
        empty = np.zeros((0, 4), np.float32)
        if self._bg is None or self._shape != (h, w):
            self._bg = grey.astype(np.float32)
            self._shape = (h, w)
            return Motion(empty, first=True)
        delta = cv2.absdiff(grey, cv2.convertScaleAbs(self._bg))
        _, mask = cv2.threshold(delta, self.cfg.threshold, 255, cv2.THRESH_BINARY)
        mask = cv2.dilate(mask, self._kernel, iterations=2)
        if float(np.count_nonzero(mask)) > self.cfg.recalibrate_fraction * mask.size:
            self._bg = grey.astype(np.float32)
            return Motion(empty, recalibrated=True)
        cv2.accumulateWeighted(grey, self._bg, self.cfg.alpha)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        sy = h / grey.shape[0]
        sx = w / grey.shape[1]
        boxes = []
        for c in contours:
            x, y, bw, bh = cv2.boundingRect(c)
            if bw * bh < self.cfg.contour_area:
                continue
            boxes.append((x * sx, y * sy, min(w, (x + bw) * sx), min(h, (y + bh) * sy)))
        return Motion(np.asarray(boxes, np.float32).reshape(-1, 4))
