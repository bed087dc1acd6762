"""Boxes found in crops, back on the frame, without the duplicates crops make.

Two crops that overlap both see an object in their shared strip, and a crop edge that cuts an object
yields a partial box (a torso, a car's front half). Each crop's detections are shifted by the crop's
origin; a box touching an edge of its crop that is not an edge of the frame is *cut*; a cut box mostly
inside (intersection over its own area >= ``cut_overlap``) a box of the same class that is not cut is
dropped; then class-aware NMS removes the remaining duplicates.
"""

from __future__ import annotations

import numpy as np

from pipeline.core.nms import batched_nms
from pipeline.core.types import Detections

Crop = tuple[int, int, int, int]  # x1 y1 x2 y2 in frame pixels

#: a box edge this close (pixels) to an inner crop edge counts as cut by it
EDGE_PX = 2.0


def _cut_mask(boxes: np.ndarray, crop: Crop, width: int, height: int) -> np.ndarray:
    """Rows of ``boxes`` (crop pixels) touching a crop edge that lies inside the frame."""
    x1, y1, x2, y2 = crop
    cw, ch = x2 - x1, y2 - y1
    cut = np.zeros(len(boxes), bool)
    if x1 > 0:
        cut |= boxes[:, 0] <= EDGE_PX
    if y1 > 0:
        cut |= boxes[:, 1] <= EDGE_PX
    if x2 < width:
        cut |= boxes[:, 2] >= cw - EDGE_PX
    if y2 < height:
        cut |= boxes[:, 3] >= ch - EDGE_PX
    return cut


def concat_detections(parts: list[Detections]) -> Detections:
    """The rows of ``parts`` in order; landmarks kept only when every non-empty part has them."""
    parts = [p for p in parts if len(p)]
    with_lm = bool(parts) and all(p.landmarks is not None for p in parts)
    if not parts:
        return Detections.empty()
    return Detections(
        boxes=np.concatenate([p.boxes for p in parts]).astype(np.float32).reshape(-1, 4),
        scores=np.concatenate([p.scores for p in parts]).astype(np.float32),
        class_ids=np.concatenate([p.class_ids for p in parts]).astype(np.int32),
        labels=[lab for p in parts for lab in p.labels],
        landmarks=np.concatenate([p.landmarks for p in parts if p.landmarks is not None])
        if with_lm
        else None,
    )


def merge_crops(
    crops: list[Crop],
    results: list[Detections],
    width: int,
    height: int,
    nms_iou: float = 0.45,
    cut_overlap: float = 0.5,
    extra: Detections | None = None,
) -> Detections:
    """One frame's detections from the detections of each of its crops (boxes in crop pixels).

    ``extra``: whole boxes found earlier outside the crops (carried objects, frame pixels); they take part
    as uncut boxes, so a crop edge cutting a carried object does not add a partial duplicate of it."""
    shifted: list[Detections] = []
    cut_parts: list[np.ndarray] = []
    for crop, det in zip(crops, results, strict=True):
        if len(det) == 0:
            continue
        ox, oy = float(crop[0]), float(crop[1])
        cut_parts.append(_cut_mask(det.boxes, crop, width, height))
        boxes = det.boxes.astype(np.float32) + np.array([ox, oy, ox, oy], np.float32)
        lms = None if det.landmarks is None else det.landmarks + np.array([ox, oy], np.float32)
        shifted.append(Detections(boxes, det.scores, det.class_ids, list(det.labels), lms))
    if extra is not None and len(extra):
        shifted.append(extra)
        cut_parts.append(np.zeros(len(extra), bool))
    merged = concat_detections(shifted)
    if len(merged) == 0:
        return merged
    cut = np.concatenate(cut_parts)
    if len(shifted) > 1 and cut.any():
        merged, cut = _drop_cut_duplicates(merged, cut, cut_overlap)
    keep = batched_nms(merged.boxes, merged.scores, merged.class_ids, nms_iou)
    return merged.select(keep)


def _drop_cut_duplicates(
    det: Detections, cut: np.ndarray, cut_overlap: float
) -> tuple[Detections, np.ndarray]:
    """Drop cut boxes mostly inside a whole box of the same class (the rest of the object was seen)."""
    ci = np.flatnonzero(cut)
    wi = np.flatnonzero(~cut)
    if wi.size == 0:
        return det, cut
    a = det.boxes[ci]
    b = det.boxes[wi]
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    area = np.maximum((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]), 1e-6)
    ios = iw * ih / area[:, None]
    same = det.class_ids[ci][:, None] == det.class_ids[wi][None, :]
    drop = ((ios >= cut_overlap) & same).any(axis=1)
    keep = np.ones(len(det), bool)
    keep[ci[drop]] = False
    return det.select(keep), cut[keep]
