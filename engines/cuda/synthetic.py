"""Detector-like NMS inputs for tests and benchmarks: clusters of jittered boxes around objects.

Real detector output is dense clusters of overlapping boxes around each object, many classes, and score ties
(scores are often quantised, e.g. fp16). Uniform random boxes barely overlap and would not exercise
suppression, so this generator mimics the clusters.
"""

from __future__ import annotations

import numpy as np


def clustered_detections(
    rng: np.random.Generator,
    batch: int,
    n: int,
    num_classes: int = 4,
    image_size: float = 1000.0,
    boxes_per_object: int = 12,
    score_decimals: int | None = 2,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(batch, n, 4) float32 x1y1x2y2, (batch, n) float32 scores, (batch, n) int32 class ids.

    ``score_decimals`` rounds scores so that ties occur (None keeps them continuous).
    """
    objects = max(1, n // boxes_per_object)
    centers = rng.uniform(0, image_size, (batch, objects, 2))
    sizes = rng.uniform(image_size * 0.02, image_size * 0.3, (batch, objects, 2))
    obj_class = rng.integers(0, num_classes, (batch, objects))
    which = rng.integers(0, objects, (batch, n))
    take = np.arange(batch)[:, None]
    c = centers[take, which] + rng.normal(0, 1, (batch, n, 2)) * sizes[take, which] * 0.12
    s = sizes[take, which] * rng.uniform(0.8, 1.25, (batch, n, 2))
    boxes = np.concatenate([c - s / 2, c + s / 2], -1).astype(np.float32)
    classes = obj_class[take, which].astype(np.int32)
    # a few boxes get a random other class, as real detectors confuse similar classes
    flip = rng.random((batch, n)) < 0.1
    classes[flip] = rng.integers(0, num_classes, int(flip.sum()))
    scores = rng.random((batch, n))
    if score_decimals is not None:
        scores = np.round(scores, score_decimals)
    return boxes, scores.astype(np.float32), classes
