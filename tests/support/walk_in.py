"""A real clip with a static scene that a person then walks into, built from ../shared/data/videos/vtest.mp4.

The OpenCV sample (480x360, 10 fps, people walking across a campus) never holds still, so:
- the static scene is the per-pixel median of 80 of its frames (the walkers vanish, the scene stays),
  with fresh sensor-like noise on every frame (seeded), so motion detection sees a real, never identical feed;
- one real walker is cut out of consecutive real frames (box from the detector, linked frame to frame by
  IoU) and pasted onto that scene at the same place: the person steps into view (as from a doorway) and
  walks on.
Frames 0..static_frames-1 are static; the person is on screen from ``static_frames`` on.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pipeline.core.nms import iou_matrix
from pipeline.detect.detectors.base import Detector


def _shared_data() -> Path | None:
    for parent in Path(__file__).resolve().parents:
        if (parent / "shared" / "data" / "MANIFEST.md").is_file():
            return parent / "shared" / "data"
    return None


SHARED = _shared_data()
VTEST = SHARED / "videos" / "vtest.mp4" if SHARED else None
YOLOX_NANO = SHARED / "weights" / "yolox_nano.onnx" if SHARED else None


def read_frames(path: Path, limit: int | None = None) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames: list[np.ndarray] = []
    while limit is None or len(frames) < limit:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


def walk_in_clip(
    detector: Detector, static_frames: int = 40, walk_frames: int = 12, seed: int = 0, scale: float = 1.0
) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    """(frames, person box per frame or None while the scene is static). ``scale`` > 1 enlarges the clip
    (bilinear) so that it is bigger than a detector input and regions are cut from it."""
    assert VTEST is not None
    frames = read_frames(VTEST)
    background = np.median(np.stack(frames[::10]), axis=0).astype(np.uint8)
    # follow the walker who is at about (402,150)-(427,202) in frame 0
    box = np.array([402, 150, 427, 202], np.float32)
    track: list[tuple[int, np.ndarray]] = []
    for i in range(60):
        dets = detector.detect([frames[i]])[0]
        person = np.array([lab == "person" for lab in dets.labels], bool)
        if not person.any():
            break
        cand = dets.boxes[person]
        iou = iou_matrix(box[None], cand)[0]
        if iou.max() < 0.3:
            break
        box = cand[int(iou.argmax())]
        track.append((i, box.copy()))
        if len(track) == walk_frames:
            break
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    boxes: list[np.ndarray | None] = []
    h, w = background.shape[:2]

    def noisy(img: np.ndarray) -> np.ndarray:
        return np.clip(
            img.astype(np.int16) + rng.normal(0, 2.0, img.shape).round().astype(np.int16), 0, 255
        ).astype(np.uint8)

    def sized(img: np.ndarray) -> np.ndarray:
        if scale == 1.0:
            return img
        return cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_LINEAR)

    for _ in range(static_frames):
        out.append(noisy(sized(background)))
        boxes.append(None)
    for i, b in track:
        img = background.copy()
        x1, y1 = max(0, int(b[0]) - 3), max(0, int(b[1]) - 3)
        x2, y2 = min(w, int(np.ceil(b[2])) + 3), min(h, int(np.ceil(b[3])) + 3)
        img[y1:y2, x1:x2] = frames[i][y1:y2, x1:x2]
        out.append(noisy(sized(img)))
        boxes.append(b * np.float32(scale))
    return out, boxes
