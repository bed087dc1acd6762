"""Frames of a recorded clip, upright and on the video's own clock: for trying a door on a recording
(``faces try-door``) and enrolling from one (``faces enroll --video``).

Phone recordings are often stored landscape with a display-matrix rotation (``frame.rotation``, degrees
counter-clockwise); a face lying on its side is not found by the face detector, so the rotation is applied
here. Frames are thinned to at most ``fps`` per second of video time (the camera's ``detect_fps``) with the
decoder's own :class:`~pipeline.ingest.decoder.FrameThinner`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import cv2
import numpy as np

from pipeline.ingest.decoder import FrameThinner


def upright(image: np.ndarray, rotation: int) -> np.ndarray:
    """``image`` turned as its display matrix asks (``rotation``: degrees counter-clockwise)."""
    r = int(rotation) % 360
    if r == 90:
        return cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE)
    if r == 270:
        return cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE)
    if r == 180:
        return cv2.rotate(image, cv2.ROTATE_180)
    return image


def clip_frames(
    path: str | Path, fps: float | None = None, start: float = 0.0, end: float | None = None
) -> Iterator[tuple[float, np.ndarray]]:
    """(seconds from the clip's first frame, upright BGR image) for frames in [start, end), at most ``fps`` a
    second. Raises ValueError naming the file when it cannot be opened or has no video stream."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: no such file")
    try:
        container = av.open(str(p))
    except av.FFmpegError as exc:
        raise ValueError(f"{p}: cannot open as video ({exc})") from None
    with container:
        if not container.streams.video:
            raise ValueError(f"{p}: no video stream")
        thinner = FrameThinner(fps)
        t0: float | None = None
        for frame in container.decode(video=0):
            if frame.pts is None or frame.time_base is None:
                continue
            pts = float(frame.pts * frame.time_base)
            t0 = pts if t0 is None else t0
            t = pts - t0
            if t < start:
                continue
            if end is not None and t >= end:
                break
            if not thinner.keep(t):
                continue
            yield t, upright(frame.to_ndarray(format="bgr24"), getattr(frame, "rotation", 0) or 0)
