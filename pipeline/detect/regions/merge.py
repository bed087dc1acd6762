"""Boxes found in crops, back on the frame, one box per object (SAHI-style greedy merging).

Two crops that overlap both see an object in their shared strip, and a crop edge that cuts an object
yields a partial box (legs, a torso, a car's front half). Plain NMS by IoU keeps such pieces: a piece of a
person has a low IoU with the person. Like SAHI's greedy non-maximum *merging* (obss/sahi
``postprocess/combine.py``), pieces are matched by how much of them lies inside another box:

1. Each crop's detections are shifted by the crop's origin. A box touching an edge of its crop that is not
   an edge of the frame is *cut* (the crop saw part of the object).
2. Per class, whole boxes first, each in falling score order, a box not yet taken takes every remaining
   box that matches it. A whole box takes whole boxes by IoU >= ``nms_iou`` (NMS) and cut pieces lying
   >= ``match_threshold`` inside it; it keeps its own box (a whole view of the object). A cut box takes
   only cut boxes, when the smaller lies >= ``match_threshold`` inside the other (an object wider than
   the overlap, in pieces on both sides of a seam), and becomes their union. A group's score is its best
   member's. A piece never takes a whole box, so a seam box across two people swallows neither.
3. A cut box left over that lies mostly (>= ``match_threshold`` of its area) inside the whole boxes kept,
   e.g. a seam box across two people's legs, is a piece of objects already reported: dropped.

Whole boxes of different crops are merged by IoU only: merging them by containment too (a torso in a tile
inside the person in the whole frame) cost people found with NanoDet and YOLOv3-tiny, whose large false
boxes contain real small people (BENCHMARKS.md, issue 19).
"""

from __future__ import annotations

import numpy as np

from pipeline.core.nms import batched_nms, box_area, intersection_matrix
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
    match_threshold: float = 0.5,
    extra: Detections | None = None,
) -> Detections:
    """One frame's detections from the detections of each of its crops (boxes in crop pixels).

    ``extra``: whole boxes found earlier outside the crops (carried objects, frame pixels); they take part
    as uncut boxes, so a crop edge cutting a carried object does not add a partial
    duplicate of it. Rows of ``extra`` that are kept keep their exact boxes."""
    shifted, cut_parts = _on_frame(crops, results, width, height)
    if extra is not None and len(extra):
        shifted.append(extra)
        cut_parts.append(np.zeros(len(extra), bool))
    merged = concat_detections(shifted)
    if len(merged) == 0:
        return merged
    if len(shifted) == 1 and not np.concatenate(cut_parts).any():
        keep = batched_nms(merged.boxes, merged.scores, merged.class_ids, nms_iou)
        return merged.select(keep)
    return greedy_merge(merged, np.concatenate(cut_parts), nms_iou, match_threshold)


def _on_frame(
    crops: list[Crop], results: list[Detections], width: int, height: int
) -> tuple[list[Detections], list[np.ndarray]]:
    """Step 1: each non-empty crop's detections in frame pixels, and which of them its crop cut."""
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
    return shifted, cut_parts


def whole_boxes_on_frame(crops: list[Crop], results: list[Detections], width: int, height: int) -> Detections:
    """The crops' detections that no inner crop edge cut, in frame pixels (before any merging): the
    objects a crop saw whole this frame."""
    shifted, cut_parts = _on_frame(crops, results, width, height)
    if not shifted:
        return Detections.empty()
    return concat_detections(shifted).select(~np.concatenate(cut_parts))


def greedy_merge(det: Detections, cut: np.ndarray, nms_iou: float, match_threshold: float) -> Detections:
    """Steps 2-3 of the module docstring on frame-pixel boxes; ``cut``: which rows are cut pieces."""
    boxes = det.boxes.astype(np.float32).copy()
    scores = det.scores.astype(np.float32).copy()
    rows: list[int] = []
    for cls in np.unique(det.class_ids):
        idx = np.flatnonzero(det.class_ids == cls)
        # whole boxes first, each group in score order: a piece never takes a whole box (a cut box across
        # two people must not swallow either of them)
        idx = idx[np.lexsort((-det.scores[idx], cut[idx]))]
        b = det.boxes[idx].astype(np.float32)
        area = np.maximum(box_area(b), 1e-6)
        inter = intersection_matrix(b, b)
        iou = inter / np.maximum(area[:, None] + area[None, :] - inter, 1e-6)
        ios = inter / np.minimum(area[:, None], area[None, :])
        c = cut[idx]
        whole = ~c[:, None] & ~c[None, :]
        inside = inter / area[None, :]  # [a, b]: share of b lying inside a
        # a cut piece joins a whole box when the piece lies inside it; two cut pieces (of an object wider
        # than the overlap, on both sides of a seam) join when the smaller lies inside the other
        match = np.where(
            whole, iou >= nms_iou, np.where(c[None, :] & c[:, None], ios, inside) >= match_threshold
        )
        match &= ~(c[:, None] & ~c[None, :])  # a cut box takes only cut boxes
        taken = np.zeros(len(idx), bool)
        kept_whole: list[int] = []
        kept_cut: list[int] = []
        for a in range(len(idx)):
            if taken[a]:
                continue
            group = np.flatnonzero(match[a] & ~taken)
            group = group[group != a]
            taken[a] = True
            taken[group] = True
            members = np.concatenate([[a], group])
            if not c[a]:
                scores[idx[a]] = det.scores[idx[members]].max()
                kept_whole.append(a)
            else:
                g = b[members]
                boxes[idx[a]] = [g[:, 0].min(), g[:, 1].min(), g[:, 2].max(), g[:, 3].max()]
                scores[idx[a]] = det.scores[idx[members]].max()
                kept_cut.append(a)
        if kept_cut and kept_whole:
            whole_boxes = boxes[idx[kept_whole]]
            kept_cut = [k for k in kept_cut if covered_share(boxes[idx[k]], whole_boxes) < match_threshold]
        rows.extend(int(idx[k]) for k in kept_whole + kept_cut)
    order = sorted(rows, key=lambda r: -float(scores[r]))
    keep = np.asarray(order, np.int64)
    out = det.select(keep)
    return Detections(boxes[keep], scores[keep], out.class_ids, out.labels, out.landmarks)


def covered_share(box: np.ndarray, others: np.ndarray) -> float:
    """Share of ``box``'s area covered by the union of ``others`` (overlaps among them counted once)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    area = (x2 - x1) * (y2 - y1)
    if area <= 0 or len(others) == 0:
        return 0.0
    o = np.clip(others, [x1, y1, x1, y1], [x2, y2, x2, y2])
    o = o[(o[:, 2] > o[:, 0]) & (o[:, 3] > o[:, 1])]
    if len(o) == 0:
        return 0.0
    xs, ys = np.unique(o[:, 0::2]), np.unique(o[:, 1::2])
    cx, cy = (xs[:-1] + xs[1:]) / 2, (ys[:-1] + ys[1:]) / 2  # cell centres of the compressed grid
    inside = (
        (o[:, None, None, 0] <= cx[None, None, :])
        & (cx[None, None, :] <= o[:, None, None, 2])
        & (o[:, None, None, 1] <= cy[None, :, None])
        & (cy[None, :, None] <= o[:, None, None, 3])
    ).any(axis=0)
    cells = np.diff(ys)[:, None] * np.diff(xs)[None, :]
    return float((cells * inside).sum()) / area
