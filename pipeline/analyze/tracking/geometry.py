"""Polygons, anchor points and box overlap, vectorised with NumPy."""

from __future__ import annotations

import numpy as np

from pipeline.core.nms import iou_matrix as box_iou


def anchor_points(boxes: np.ndarray, anchor: str) -> np.ndarray:
    """(N, 2) points of (N, 4) x1y1x2y2 boxes: ``bottom_center`` (feet on the ground) or ``center``."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    cx = (boxes[:, 0] + boxes[:, 2]) * 0.5
    y = boxes[:, 3] if anchor == "bottom_center" else (boxes[:, 1] + boxes[:, 3]) * 0.5
    return np.stack([cx, y], axis=1)


def scale_points(points, normalized: bool, width: int, height: int) -> np.ndarray:
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    if normalized:
        pts = pts * np.array([width, height], np.float64)
    return pts


def points_in_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Even-odd ray casting: bool (N,) for (N, 2) points against a (M, 2) polygon."""
    points = np.asarray(points, np.float64).reshape(-1, 2)
    if points.shape[0] == 0:
        return np.zeros((0,), bool)
    x = points[:, 0:1]
    y = points[:, 1:2]
    nxt = np.concatenate([polygon[1:], polygon[:1]])
    x1 = polygon[None, :, 0]
    y1 = polygon[None, :, 1]
    x2 = nxt[None, :, 0]
    y2 = nxt[None, :, 1]
    straddles = (y1 > y) != (y2 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
    hits = straddles & (x < x_cross)
    return (hits.sum(axis=1) % 2) == 1


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) IoU of x1y1x2y2 boxes in float64 (tracking matches on it): pipeline.core.nms.iou_matrix."""
    return box_iou(a, b, dtype=np.float64)


def segments_intersect(p: np.ndarray, q: np.ndarray, a: np.ndarray, b: np.ndarray) -> bool:
    """Whether segment p-q crosses segment a-b (touching counts)."""

    def orient(u, v, w) -> float:
        return float((v[0] - u[0]) * (w[1] - u[1]) - (v[1] - u[1]) * (w[0] - u[0]))

    o1, o2 = orient(a, b, p), orient(a, b, q)
    o3, o4 = orient(p, q, a), orient(p, q, b)
    return (o1 * o2 <= 0) and (o3 * o4 <= 0)
