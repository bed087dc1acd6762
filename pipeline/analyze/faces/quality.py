"""Is a detected face good enough to enroll? (size and sharpness)."""

from __future__ import annotations

import cv2
import numpy as np

CROP_SIDE = 112  # sharpness is measured on the face resized to this, so it does not depend on resolution


def face_side(box: np.ndarray) -> float:
    """The shorter side of an x1 y1 x2 y2 box, in pixels."""
    return float(min(box[2] - box[0], box[3] - box[1]))


def crop_face(image_bgr: np.ndarray, box: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """The box (grown by ``margin`` of its size on each side), clipped to the image."""
    h, w = image_bgr.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    mx, my = (x2 - x1) * margin, (y2 - y1) * margin
    xa, ya = max(0, int(x1 - mx)), max(0, int(y1 - my))
    xb, yb = min(w, int(np.ceil(x2 + mx))), min(h, int(np.ceil(y2 + my)))
    return image_bgr[ya:yb, xa:xb]


def sharpness(image_bgr: np.ndarray, box: np.ndarray) -> float:
    """Variance of the Laplacian of the face crop at 112x112 grey (low = blurry)."""
    crop = crop_face(image_bgr, box)
    if crop.size == 0:
        return 0.0
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY) if crop.ndim == 3 else crop
    grey = cv2.resize(grey, (CROP_SIDE, CROP_SIDE), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def enrollment_problem(
    image_bgr: np.ndarray, boxes: np.ndarray, min_face_px: float, min_sharpness: float
) -> str | None:
    """Why this photo cannot be enrolled, or None when it holds exactly one usable face."""
    if len(boxes) == 0:
        return "no face found"
    if len(boxes) > 1:
        return f"{len(boxes)} faces found; enroll from photos showing only this person"
    side = face_side(boxes[0])
    if side < min_face_px:
        return f"face too small ({side:.0f} px < {min_face_px:.0f} px)"
    sharp = sharpness(image_bgr, boxes[0])
    if sharp < min_sharpness:
        return f"face too blurry (sharpness {sharp:.1f} < {min_sharpness:.1f})"
    return None
