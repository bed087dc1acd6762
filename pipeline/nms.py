"""Non-maximum suppression on the CPU, vectorised with NumPy. The one place NMS lives for CPU paths.

Boxes are (N, 4) x1 y1 x2 y2. Ties in score are broken by the lower original index first (a stable sort),
the same order ``torchvision.ops.nms`` uses on CPU, so the two keep the same boxes.
"""

from __future__ import annotations

import numpy as np


def box_area(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU, (len(a), len(b)). Zero-area pairs give 0, never NaN."""
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0).astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Hard NMS. Returns kept indices, highest score first."""
    boxes = np.asarray(boxes, np.float32)
    scores = np.asarray(scores, np.float32)
    n = boxes.shape[0]
    if n == 0:
        return np.zeros((0,), np.int64)
    order = np.argsort(-scores, kind="stable")
    b = boxes[order]
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    areas = box_area(b)
    suppressed = np.zeros(n, bool)
    keep = []
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = np.arange(i + 1, n)
        rest = rest[~suppressed[rest]]
        if rest.size == 0:
            break
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        union = areas[i] + areas[rest] - inter
        iou = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
        suppressed[rest[iou > iou_threshold]] = True
    return order[np.asarray(keep, np.int64)]


def batched_nms(
    boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou_threshold: float
) -> np.ndarray:
    """Class-aware NMS: boxes of different classes never suppress each other.

    Uses the coordinate-offset trick (shift each class far apart) so one NMS pass serves all classes.
    """
    boxes = np.asarray(boxes, np.float32)
    if boxes.shape[0] == 0:
        return np.zeros((0,), np.int64)
    max_coord = float(np.abs(boxes).max()) + 1.0
    offsets = np.asarray(class_ids, np.float32)[:, None] * (max_coord * 2.0)
    return nms(boxes + offsets, scores, iou_threshold)


def soft_nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    iou_threshold: float = 0.3,
    sigma: float = 0.5,
    score_threshold: float = 0.001,
    method: str = "gaussian",
) -> tuple[np.ndarray, np.ndarray]:
    """Soft-NMS (Bodla et al. 2017): decay overlapping scores instead of removing boxes.

    method: "gaussian" (score *= exp(-iou^2 / sigma)) or "linear" (score *= 1 - iou when iou > threshold).
    Returns (kept indices in selection order, their decayed scores).
    """
    if method not in ("gaussian", "linear"):
        raise ValueError(f"soft_nms method must be 'gaussian' or 'linear', got {method!r}")
    boxes = np.asarray(boxes, np.float32)
    s = np.asarray(scores, np.float32).copy()
    n = boxes.shape[0]
    idx = np.arange(n)
    keep: list[int] = []
    kept_scores: list[float] = []
    alive = s >= score_threshold
    while alive.any():
        cand = np.flatnonzero(alive)
        best = cand[np.argmax(s[cand])]
        keep.append(int(idx[best]))
        kept_scores.append(float(s[best]))
        alive[best] = False
        rest = np.flatnonzero(alive)
        if rest.size == 0:
            break
        iou = iou_matrix(boxes[best : best + 1], boxes[rest])[0]
        if method == "gaussian":
            s[rest] *= np.exp(-(iou * iou) / sigma)
        else:
            s[rest] = np.where(iou > iou_threshold, s[rest] * (1.0 - iou), s[rest])
        alive[rest] = s[rest] >= score_threshold
    return np.asarray(keep, np.int64), np.asarray(kept_scores, np.float32)
