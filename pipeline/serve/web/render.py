"""Draws a detected frame for the live view (boxes, labels, scores, track ids, faces, zones, lines, masks)
and encodes it as JPEG.

Runs only on the web app's worker threads, only while someone watches, on a copy of the frame: the camera
threads hand over a reference and never pay for drawing or encoding.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from pipeline.config.tracking import CameraZonesConfig
from pipeline.core.types import FrameResult

_BOX = (0, 220, 0)
_FACE = (255, 160, 0)
_ZONE = (0, 200, 255)
_LINE = (255, 0, 255)
_MASK = (60, 60, 60)


def _points(points: Sequence[Sequence[float]], normalized: bool, w: int, h: int) -> np.ndarray:
    pts = np.asarray(points, np.float32)
    if normalized:
        pts = pts * np.array([w, h], np.float32)
    return pts.round().astype(np.int32)


def _label(img: np.ndarray, text: str, x: int, y: int, color: tuple[int, int, int]) -> None:
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
    y = max(y, th + 4)
    cv2.rectangle(img, (x, y - th - 4), (x + tw + 4, y), color, -1)
    cv2.putText(img, text, (x + 2, y - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)


def annotate(
    result: FrameResult, zones: CameraZonesConfig | None = None, track_ids: dict[int, int] | None = None
) -> np.ndarray:
    """A new BGR image: ``result``'s frame with everything the pipeline knows about it drawn on top.
    ``track_ids`` maps a detection row to its track id."""
    img = result.frame.image.copy()
    h, w = img.shape[:2]
    if zones is not None:
        if zones.masks:
            shade = img.copy()
            for m in zones.masks:
                cv2.fillPoly(shade, [_points(m.points, m.normalized, w, h)], _MASK)
            img = cv2.addWeighted(shade, 0.5, img, 0.5, 0)
        for name, z in zones.zones.items():
            pts = _points(z.points, z.normalized, w, h)
            cv2.polylines(img, [pts], True, _ZONE, 2)
            _label(img, f"zone {name}", int(pts[:, 0].min()), int(pts[:, 1].min()), _ZONE)
        for name, ln in zones.lines.items():
            pts = _points(ln.points, ln.normalized, w, h)
            cv2.line(img, tuple(pts[0]), tuple(pts[1]), _LINE, 2)
            _label(img, f"line {name}", int(pts[0][0]), int(pts[0][1]), _LINE)
    det = result.detections
    for i in range(len(det)):
        x1, y1, x2, y2 = (int(round(float(v))) for v in det.boxes[i])
        cv2.rectangle(img, (x1, y1), (x2, y2), _BOX, 2)
        text = f"{det.labels[i]} {float(det.scores[i]):.2f}"
        if track_ids and i in track_ids:
            text += f" #{track_ids[i]}"
        _label(img, text, x1, y1, _BOX)
    for box, who in _faces(result):
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        cv2.rectangle(img, (x1, y1), (x2, y2), _FACE, 2)
        _label(img, who, x1, y2 + 16, _FACE)
    return img


def _faces(result: FrameResult) -> list[tuple[Sequence[float], str]]:
    """(box, name or 'unknown') per face the face stage saw (``FrameResult.faces``)."""
    return [(f.box, f.identity or "unknown") for f in result.faces or []]


def encode_jpeg(img: np.ndarray, quality: int = 75) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def track_ids_for(result: FrameResult, analyzers: Sequence[object]) -> dict[int, int]:
    """Detection row -> track id, read from a TrackingAnalyzer of the camera if there is one.

    Read from another thread without a lock: the dict may change while we look, in which case this frame
    simply shows no ids (the next one will)."""
    for a in analyzers:
        objects = getattr(a, "objects", None)
        if not isinstance(objects, dict):
            continue
        try:
            return {
                int(o.track.det_index): int(tid)
                for tid, o in list(objects.items())
                if o.last_seq == result.frame.seq and o.track.det_index >= 0
            }
        except (RuntimeError, AttributeError):
            return {}
    return {}
