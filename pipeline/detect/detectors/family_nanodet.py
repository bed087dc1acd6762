"""Family ``nanodet``: NanoDet-m (RangiLyu/nanodet, Apache-2.0) exported to ONNX, e.g. ``nanodet-m-416``.

ShuffleNetV2 backbone, PAN neck, an anchor-free GFL head (generalized focal loss): for each of the strides
8, 16 and 32 the network gives, per grid cell, 80 class scores (sigmoid already applied in the graph) and,
per box side (left, top, right, bottom), a distribution over ``reg_max + 1`` = 8 distance bins. The
distance is the expectation of that distribution (softmax over the bins, dot 0..7) times the stride,
measured from the cell centre ((col + 0.5) * stride, (row + 0.5) * stride).

Preprocessing as the exported model was trained: BGR, letterbox to the fixed input (416) with the picture
centred on black, then (x - mean) / std per channel with NanoDet's ImageNet mean [103.53, 116.28,
123.675] and std [57.375, 57.12, 58.395]. Outputs are recognised by shape (last axis 80: scores, 32:
distributions; rows: which stride), not by name. Per-class NMS at ``detector.nms_iou``.

Config keys used: model (a model-store name or an .onnx path; ``detector.family: nanodet`` for a path),
backend (onnxruntime or tensorrt), device, threads, resize, score_threshold, nms_iou, classes.
"""

from __future__ import annotations

import logging

import numpy as np

from engines import create_engine
from engines.base import InferenceEngine
from pipeline.config.schema import DetectorConfig
from pipeline.core.nms import batched_nms
from pipeline.core.types import Detections
from pipeline.detect.detectors.base import Detector
from pipeline.detect.detectors.family_onnx_yolo import model_file
from pipeline.detect.detectors.letterbox import ResizeMode, Transform, resize_to_input
from pipeline.detect.detectors.yolo import class_mask
from pipeline.detect.detectors.yolo_decode import COCO_CLASSES
from pipeline.models.errors import ModelError

log = logging.getLogger(__name__)

MEAN = np.array([103.53, 116.28, 123.675], np.float32)
STD = np.array([57.375, 57.12, 58.395], np.float32)
STRIDES = (8, 16, 32)
REG_MAX = 7
#: at most this many candidates per stride go to NMS (the reference implementations keep 1000)
TOP_K = 1000


def grid_centres(size: int, stride: int) -> np.ndarray:
    """(cells, 2) x, y centres of a size x size input's grid at ``stride``, row by row."""
    n = -(-size // stride)
    ys, xs = np.mgrid[0:n, 0:n]
    return np.stack([(xs.ravel() + 0.5) * stride, (ys.ravel() + 0.5) * stride], axis=1).astype(np.float32)


def distances(reg: np.ndarray) -> np.ndarray:
    """(cells, 4 * (REG_MAX + 1)) bin logits -> (cells, 4) expected distances in grid units."""
    logits = reg.reshape(-1, 4, REG_MAX + 1).astype(np.float32)
    logits = logits - logits.max(axis=2, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=2, keepdims=True)
    return p @ np.arange(REG_MAX + 1, dtype=np.float32)


class NanoDetDetector(Detector):
    """NanoDet on an ONNX engine with a fixed batch of 1 (each image is run on its own)."""

    def __init__(
        self,
        engine: InferenceEngine,
        *,
        input_size: int,
        labels: list[str],
        resize: ResizeMode = "letterbox",
        score_threshold: float = 0.25,
        nms_iou: float = 0.45,
        classes: list[str] | None = None,
        name: str = "nanodet",
        max_detections: int = 300,
    ) -> None:
        self.engine = engine
        self.input_size = input_size
        self.labels = list(labels)
        self.resize = resize
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou
        self.allowed = class_mask(self.labels, classes, name)
        self.name = name
        self.max_detections = max_detections
        self._input = engine.input_names[0]
        self._centres = {s: grid_centres(input_size, s) for s in STRIDES}

    def preprocessing(self) -> str:
        how = "pad 0 centred, " if self.resize == "letterbox" else ""
        return f"{self.resize} to {self.input_size}x{self.input_size} ({how}BGR, (x - mean) / std)"

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, Transform]:
        """(1, 3, S, S) float32 blob and the image's transform to input pixels."""
        canvas, t = resize_to_input(image, self.input_size, self.resize, pad_value=0, center=True)
        blob = (canvas.astype(np.float32) - MEAN) / STD
        return np.ascontiguousarray(blob.transpose(2, 0, 1)[None]), t

    def levels(self, out: dict[str, np.ndarray]) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """(stride, scores (cells, C), bin logits (cells, 32)) per stride, told apart by shape."""
        cls: dict[int, np.ndarray] = {}
        reg: dict[int, np.ndarray] = {}
        cells = {len(self._centres[s]): s for s in STRIDES}
        for name, a in out.items():
            a = a.reshape(a.shape[-2], a.shape[-1])
            stride = cells.get(a.shape[0])
            if stride is None:
                raise ModelError(f"model {self.name}: output {name} {a.shape} matches no stride {STRIDES}")
            if a.shape[1] == 4 * (REG_MAX + 1):
                reg[stride] = a
            elif a.shape[1] == len(self.labels):
                cls[stride] = a
            else:
                raise ModelError(f"model {self.name}: output {name} has {a.shape[1]} columns")
        if set(cls) != set(STRIDES) or set(reg) != set(STRIDES):
            raise ModelError(f"model {self.name}: expected scores and box bins for strides {STRIDES}")
        return [(s, cls[s], reg[s]) for s in STRIDES]

    def decode(self, out: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes (input pixels, x1y1x2y2), scores and class ids after per-class NMS, for one image."""
        all_boxes, all_scores, all_cls = [], [], []
        for stride, scores, reg in self.levels(out):
            if self.allowed is not None:
                scores = np.where(self.allowed[None, :], scores, 0.0)
            best = scores.max(axis=1)
            rows = np.flatnonzero(best >= max(self.score_threshold, 1e-8))
            if rows.size > TOP_K:
                rows = rows[np.argsort(-best[rows], kind="stable")[:TOP_K]]
            if rows.size == 0:
                continue
            d = distances(reg[rows]) * np.float32(stride)
            c = self._centres[stride][rows]
            boxes = np.concatenate([c - d[:, :2], c + d[:, 2:]], axis=1)
            np.clip(boxes, 0, self.input_size, out=boxes)
            cls = scores[rows].argmax(axis=1)
            all_boxes.append(boxes)
            all_scores.append(scores[rows, cls].astype(np.float32))
            all_cls.append(cls.astype(np.int32))
        if not all_boxes:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32)
        b, s, c = np.concatenate(all_boxes), np.concatenate(all_scores), np.concatenate(all_cls)
        keep = batched_nms(b, s, c, self.nms_iou)[: self.max_detections]
        return b[keep], s[keep], c[keep]

    def detect(self, images: list[np.ndarray]) -> list[Detections]:
        results = []
        for image in images:
            blob, t = self.prepare(image)
            boxes, scores, cls = self.decode(self.engine.run({self._input: blob}))
            results.append(
                Detections(
                    boxes=t.to_image(boxes),
                    scores=scores,
                    class_ids=cls,
                    labels=[self.labels[c] for c in cls.tolist()],
                )
            )
        return results

    def close(self) -> None:
        self.engine.close()


def build(cfg: DetectorConfig) -> NanoDetDetector:
    path, name = model_file(cfg.model)
    if cfg.backend == "torch":
        raise ModelError(
            f"detector.backend: 'torch' cannot run ONNX file {path}; use onnxruntime or tensorrt"
        )
    engine = create_engine(path, backend=cfg.backend, device=cfg.device, threads=cfg.threads)
    try:
        shape = engine.input_shape()
        size = int(shape[2]) if shape and len(shape) == 4 and isinstance(shape[2], int) else cfg.input_size
        if size != cfg.input_size:
            log.info(
                "%s: using the model's fixed input size %d (detector.input_size=%d)",
                name,
                size,
                cfg.input_size,
            )
        resize: ResizeMode = "letterbox" if cfg.resize == "auto" else cfg.resize
        det = NanoDetDetector(
            engine,
            input_size=size,
            labels=list(COCO_CLASSES),
            resize=resize,
            score_threshold=cfg.score_threshold,
            nms_iou=cfg.nms_iou,
            classes=cfg.classes,
            name=name,
        )
        det.levels(engine.run({engine.input_names[0]: np.zeros((1, 3, size, size), np.float32)}))
    except BaseException:
        engine.close()
        raise
    log.info("detector %s: preprocessing %s", name, det.preprocessing())
    return det
