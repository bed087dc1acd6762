"""A batched constant-velocity Kalman filter over boxes (cx, cy, w, h), one row per track.

Noise scales with box size (as in ByteTrack/BoT-SORT), so a far-away 20 px person and a close 300 px car
get comparable relative uncertainty. All tracks are predicted/updated in one set of matrix ops.
"""

from __future__ import annotations

import numpy as np

_F = np.eye(8)
_F[:4, 4:] = np.eye(4)
_H = np.eye(4, 8)
_STD_POS = 1.0 / 20
_STD_VEL = 1.0 / 160


def xyxy_to_cxcywh(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    return np.stack([boxes[:, 0] + w / 2, boxes[:, 1] + h / 2, w, h], axis=1)


def cxcywh_to_xyxy(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64).reshape(-1, 4)
    half_w = np.abs(z[:, 2]) / 2
    half_h = np.abs(z[:, 3]) / 2
    return np.stack([z[:, 0] - half_w, z[:, 1] - half_h, z[:, 0] + half_w, z[:, 1] + half_h], axis=1)


def initiate(measurements: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """States (N, 8) and covariances (N, 8, 8) for new tracks from (N, 4) cxcywh measurements."""
    n = measurements.shape[0]
    mean = np.zeros((n, 8))
    mean[:, :4] = measurements
    w = np.maximum(measurements[:, 2], 1.0)
    h = np.maximum(measurements[:, 3], 1.0)
    std = np.stack(
        [2 * _STD_POS * w, 2 * _STD_POS * h, 2 * _STD_POS * w, 2 * _STD_POS * h,
         10 * _STD_VEL * w, 10 * _STD_VEL * h, 10 * _STD_VEL * w, 10 * _STD_VEL * h],
        axis=1,
    )  # fmt: skip
    cov = np.zeros((n, 8, 8))
    idx = np.arange(8)
    cov[:, idx, idx] = std**2
    return mean, cov


def predict(mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One time step for every row."""
    if mean.shape[0] == 0:
        return mean, cov
    w = np.maximum(mean[:, 2], 1.0)
    h = np.maximum(mean[:, 3], 1.0)
    std = np.stack(
        [_STD_POS * w, _STD_POS * h, _STD_POS * w, _STD_POS * h,
         _STD_VEL * w, _STD_VEL * h, _STD_VEL * w, _STD_VEL * h],
        axis=1,
    )  # fmt: skip
    mean = mean @ _F.T
    cov = _F @ cov @ _F.T
    idx = np.arange(8)
    cov[:, idx, idx] += std**2
    return mean, cov


def update(mean: np.ndarray, cov: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Correct rows with (N, 4) cxcywh measurements z (same row order)."""
    if mean.shape[0] == 0:
        return mean, cov
    w = np.maximum(mean[:, 2], 1.0)
    h = np.maximum(mean[:, 3], 1.0)
    r = np.stack([_STD_POS * w, _STD_POS * h, _STD_POS * w, _STD_POS * h], axis=1) ** 2
    s = cov[:, :4, :4].copy()
    idx = np.arange(4)
    s[:, idx, idx] += r
    pht = cov[:, :, :4]  # P H^T, (N, 8, 4)
    gain = np.linalg.solve(s, np.swapaxes(pht, 1, 2))  # S^-1 (H P), (N, 4, 8)
    gain = np.swapaxes(gain, 1, 2)  # K = P H^T S^-1, (N, 8, 4)
    innov = z - mean[:, :4]
    mean = mean + np.einsum("nij,nj->ni", gain, innov)
    cov = cov - gain @ cov[:, :4, :]
    return mean, cov
