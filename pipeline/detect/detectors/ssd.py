"""SSD detector: SSDlite-MobileNetV2 (pipeline/models/ssdlite.py) on any engine, per-class NMS in NumPy.

Preprocessing is what the TensorFlow Object Detection API graph does itself, so boxes match TensorFlow's:
RGB, a plain resize to 300x300 with TensorFlow 1's bilinear sampling (source pixel = output pixel x
in/out, no half-pixel shift; OpenCV's INTER_LINEAR samples half a pixel off and moves boxes by up to a
pixel of the input), then x * 2/255 - 1. ``detector.resize: letterbox`` keeps the aspect ratio instead
(pad value 128, i.e. 0 after scaling).

Post-processing follows the graph's ``BatchMultiClassNonMaxSuppression``: every (anchor, class) pair above
the score threshold is a candidate, boxes are clipped to the input window, zero-area boxes dropped, NMS runs
per class at the graph's IoU (0.6 here) in normalised coordinates, and the best ``max_detections`` are kept.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from engines.base import InferenceEngine
from pipeline.core.nms import batched_nms
from pipeline.core.types import Detections
from pipeline.detect.detectors.base import Detector
from pipeline.detect.detectors.letterbox import Transform, resize_to_input
from pipeline.detect.detectors.yolo import class_mask
from pipeline.models.errors import ModelError

SsdResize = Literal["stretch", "letterbox"]


def resize_bilinear_tf1(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """TensorFlow 1 ``resize_bilinear`` (align_corners=False, no half-pixel centres) as float32.

    Output pixel (i, j) samples the input at (i * in_h / out_h, j * in_w / out_w); the neighbour below or
    right is clamped at the last row/column.
    """
    h, w = image.shape[:2]
    ys = np.arange(out_h, dtype=np.float32) * np.float32(h / out_h)
    xs = np.arange(out_w, dtype=np.float32) * np.float32(w / out_w)
    y0 = np.floor(ys).astype(np.int64)
    x0 = np.floor(xs).astype(np.int64)
    y1 = np.minimum(y0 + 1, h - 1)
    x1 = np.minimum(x0 + 1, w - 1)
    dy = (ys - y0)[:, None, None]
    dx = (xs - x0)[None, :, None]
    # np.take, not fancy indexing: several times faster on these (rows, cols, 3) gathers
    rows0 = np.take(image, y0, axis=0)
    rows1 = np.take(image, y1, axis=0)
    tl = np.take(rows0, x0, axis=1).astype(np.float32)
    tr = np.take(rows0, x1, axis=1).astype(np.float32)
    bl = np.take(rows1, x0, axis=1).astype(np.float32)
    br = np.take(rows1, x1, axis=1).astype(np.float32)
    top = tl + (tr - tl) * dx
    bottom = bl + (br - bl) * dx
    return top + (bottom - top) * dy


class SsdDetector(Detector):
    """Batched SSD inference; the engine returns decoded ``boxes`` (N, A, 4) in [0, 1] and ``scores``."""

    def __init__(
        self,
        engine: InferenceEngine,
        *,
        labels: list[str],
        input_size: int = 300,
        resize: SsdResize = "stretch",
        score_threshold: float = 0.25,
        nms_iou: float = 0.6,
        classes: list[str] | None = None,
        name: str = "ssd",
        max_detections: int = 300,
        max_candidates: int = 5000,
    ) -> None:
        if resize not in ("stretch", "letterbox"):
            raise ModelError(f"detector.resize: SSD supports 'stretch' or 'letterbox', got {resize!r}")
        self.engine = engine
        self.labels = list(labels)
        self.input_size = input_size
        self.resize = resize
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou
        self.allowed = class_mask(self.labels, classes, name)
        self.name = name
        self.max_detections = max_detections
        self.max_candidates = max_candidates
        self._input = engine.input_names[0]

    def preprocessing(self) -> str:
        how = "TF1 bilinear" if self.resize == "stretch" else "pad 128 centred"
        return f"{self.resize} to {self.input_size}x{self.input_size} ({how}), RGB x 2/255 - 1"

    def prepare(self, images: list[np.ndarray]) -> tuple[np.ndarray, list[Transform]]:
        """(N, 3, S, S) float32 blob in [-1, 1], RGB, and each image's transform to input pixels."""
        s = self.input_size
        planes, transforms = [], []
        for img in images:
            if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] == 0 or img.shape[1] == 0:
                raise ValueError(f"expected a non-empty HxWx3 image, got shape {img.shape}")
            h, w = img.shape[:2]
            if self.resize == "stretch":
                planes.append(resize_bilinear_tf1(img[..., ::-1], s, s))
                transforms.append(Transform(s / w, s / h, 0.0, 0.0, w, h))
            else:
                canvas, t = resize_to_input(img, s, "letterbox", 128, True)
                planes.append(canvas[..., ::-1].astype(np.float32))
                transforms.append(t)
        blob = np.ascontiguousarray(np.stack(planes).transpose(0, 3, 1, 2))
        blob *= np.float32(2.0 / 255.0)
        blob -= np.float32(1.0)
        return blob, transforms

    def raw(self, images: list[np.ndarray]) -> dict[str, np.ndarray]:
        blob, _ = self.prepare(images)
        return self.engine.run({self._input: blob})

    def select(self, boxes: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-class NMS of one image: (K, 4) x1y1x2y2 in [0, 1], (K,) scores, (K,) class ids."""
        if self.allowed is not None:
            scores = np.where(self.allowed[None, :], scores, 0.0)
        anchor, cls = np.nonzero(scores >= max(self.score_threshold, 1e-8))
        s = scores[anchor, cls].astype(np.float32)
        if s.size > self.max_candidates:
            top = np.argsort(-s, kind="stable")[: self.max_candidates]
            anchor, cls, s = anchor[top], cls[top], s[top]
        b = np.clip(boxes[anchor], 0.0, 1.0).astype(np.float32)
        nonempty = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        b, s, cls = b[nonempty], s[nonempty], cls[nonempty].astype(np.int32)
        kept = batched_nms(b, s, cls, self.nms_iou)[: self.max_detections]
        return b[kept], s[kept], cls[kept]

    def detect(self, images: list[np.ndarray]) -> list[Detections]:
        if not images:
            return []
        blob, transforms = self.prepare(images)
        out = self.engine.run({self._input: blob})
        boxes, scores = out["boxes"], out["scores"]
        if boxes.shape[0] != len(images) or scores.shape[-1] != len(self.labels):
            raise ModelError(
                f"model {self.name}: batch of {len(images)} gave boxes {boxes.shape}, scores {scores.shape} "
                f"for {len(self.labels)} labels"
            )
        s = np.float32(self.input_size)
        results = []
        for i, t in enumerate(transforms):
            xyxy, sc, cls = self.select(boxes[i], scores[i])
            results.append(
                Detections(
                    boxes=t.to_image(xyxy * s),
                    scores=sc,
                    class_ids=cls,
                    labels=[self.labels[c] for c in cls.tolist()],
                )
            )
        return results

    def close(self) -> None:
        self.engine.close()
