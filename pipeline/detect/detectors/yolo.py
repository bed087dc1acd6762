"""YOLO object detector over any engine: darknet models (imported to PyTorch) and ONNX exports.

A call to :meth:`YoloDetector.detect` resizes every image to the network input, stacks them into one
batch, runs a single forward pass, decodes the output layout (see yolo_decode.py), keeps the best class
per candidate above ``score_threshold`` (objectness x class probability where the model has objectness),
drops classes outside ``classes``, runs class-aware NMS and maps boxes back to each image's pixels.

Preprocessing follows how each family was trained: darknet RGB/255 with a plain resize ("stretch", as
AlexeyAB darknet trains and OpenCV DNN's blobFromImage runs it; on shared/data/coco_subset YOLOv3-tiny
scored mAP 0.147 stretched vs 0.137 letterboxed on 128 gray, person+vehicle 0.107 vs 0.080 - see
benchmarks/bench_detectors.py); Ultralytics v5/v8 RGB/255 letterboxed on 114, centred; YOLOX BGR 0-255
letterboxed on 114 at the top-left. ``detector.resize`` overrides the mode.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from engines.base import InferenceEngine
from pipeline.core.types import Detections
from pipeline.detect.detectors.base import Detector
from pipeline.detect.detectors.letterbox import ResizeMode, resize_to_input, to_blob
from pipeline.detect.detectors.yolo_decode import (
    COCO_CLASSES,
    LAYOUTS,
    Layout,
    canonical_label,
    select,
    to_rows,
)
from pipeline.models.errors import ModelError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preprocess:
    resize: ResizeMode = "letterbox"
    pad_value: int = 128
    center: bool = True
    rgb: bool = True
    scale: float = 1.0 / 255.0


#: how each family was trained
PREPROCESS: dict[str, Preprocess] = {
    "darknet": Preprocess("stretch", 128, True, True, 1 / 255),  # pad value used with resize=letterbox
    "v5": Preprocess("letterbox", 114, True, True, 1 / 255),
    "v8": Preprocess("letterbox", 114, True, True, 1 / 255),
    "yolox": Preprocess("letterbox", 114, False, False, 1.0),
}


#: ONNX metadata key naming the PREPROCESS entry a model was trained with; written when a Darknet model is
#: exported, read back when the .onnx file is loaded by path
PREPROCESS_KEY = "vidpipe.preprocess"


def preprocess_for(resize: str, family: str, model: str, source: str | None = None) -> Preprocess:
    """The preprocessing ``model`` runs with, logged: the family's training default, or ``detector.resize``.

    Which default applies follows the family (darknet, the ONNX file's own metadata, or its output layout),
    never the file name, and the log line says which it was so a changed AP can be traced to it.
    """
    pre = PREPROCESS[family]
    source = source or f"default of family {family}"
    if resize != "auto":
        pre = replace(pre, resize=resize)  # type: ignore[arg-type]
        source = "detector.resize"
    log.info(
        "detector %s: preprocessing %s (pad %d, %s, %s, scale %.6g) from %s",
        model,
        pre.resize,
        pre.pad_value,
        "centred" if pre.center else "top-left",
        "RGB" if pre.rgb else "BGR",
        pre.scale,
        source,
    )
    if resize == "auto" and family == "v5" and "metadata" not in source:
        log.info(
            "detector %s: a Darknet-trained YOLO exported to ONNX was trained with stretch; set "
            "detector.resize: stretch for it (see docs/detectors.md)",
            model,
        )
    return pre


def read_names(path: str | Path) -> list[str]:
    """Class names, one per line (darknet .names format), normalised to COCO 2017 spellings."""
    return [canonical_label(line) for line in Path(path).read_text().splitlines() if line.strip()]


def class_mask(labels: list[str], classes: list[str] | None, model: str) -> np.ndarray | None:
    """Boolean mask over ``labels`` for the configured class filter; unknown names are an error."""
    if classes is None:
        return None
    wanted = {canonical_label(c) for c in classes}
    unknown = sorted(wanted - set(labels))
    if unknown:
        raise ModelError(
            f"detector.classes: {', '.join(map(repr, unknown))} not among the classes of model {model} "
            f"({', '.join(labels[:12])}{', ...' if len(labels) > 12 else ''})"
        )
    return np.array([lab in wanted for lab in labels], bool)


class YoloDetector(Detector):
    def __init__(
        self,
        engine: InferenceEngine,
        layout: Layout,
        input_size: int | tuple[int, int],
        labels: list[str],
        preprocess: Preprocess,
        score_threshold: float = 0.25,
        nms_iou: float = 0.45,
        classes: list[str] | None = None,
        name: str = "yolo",
        max_detections: int = 300,
        batch_limit: int | None = None,
    ) -> None:
        if layout not in LAYOUTS:
            raise ModelError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
        self.engine = engine
        self.layout = layout
        self.input_hw: tuple[int, int] = (
            (input_size, input_size)
            if isinstance(input_size, int)
            else (int(input_size[0]), int(input_size[1]))
        )
        self.labels = list(labels)
        self.preprocess = preprocess
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou
        self.allowed = class_mask(self.labels, classes, name)
        self.name = name
        self.max_detections = max_detections
        self._input = engine.input_names[0]
        #: largest batch the engine accepts (ONNX files exported with a fixed batch of 1); None = any
        self.batch_limit = batch_limit

    def preprocessing(self) -> str:
        p = self.preprocess
        pad = (
            f", pad {p.pad_value} {'centred' if p.center else 'top-left'}" if p.resize == "letterbox" else ""
        )
        return f"{p.resize} to {self.input_hw[1]}x{self.input_hw[0]}{pad}, {'RGB' if p.rgb else 'BGR'} x {p.scale:.6g}"

    def prepare(self, images: list[np.ndarray]) -> tuple[np.ndarray, list]:
        p = self.preprocess
        resized, transforms = [], []
        for img in images:
            r, t = resize_to_input(img, self.input_hw, p.resize, p.pad_value, p.center)
            resized.append(r)
            transforms.append(t)
        return to_blob(resized, p.rgb, p.scale), transforms

    def raw(self, images: list[np.ndarray]) -> np.ndarray:
        """The network's output for a batch (for checks against other backends)."""
        blob, _ = self.prepare(images)
        return self.engine.run({self._input: blob})[self.engine.output_names[0]]

    def detect(self, images: list[np.ndarray]) -> list[Detections]:
        if not images:
            return []
        if self.batch_limit and len(images) > self.batch_limit:
            n = self.batch_limit
            return [d for i in range(0, len(images), n) for d in self.detect(images[i : i + n])]
        blob, transforms = self.prepare(images)
        out = self.engine.run({self._input: blob})[self.engine.output_names[0]]
        if out.shape[0] != len(images):
            raise ModelError(f"model {self.name}: batch of {len(images)} gave {out.shape[0]} outputs")
        results = []
        for i, t in enumerate(transforms):
            boxes, class_scores = to_rows(out[i], self.layout, self.input_hw)
            xyxy, scores, cls = select(
                boxes, class_scores, self.score_threshold, self.nms_iou, self.allowed, self.max_detections
            )
            if len(cls) and int(cls.max()) >= len(self.labels):
                raise ModelError(
                    f"model {self.name}: class id {int(cls.max())} but only {len(self.labels)} labels"
                )
            results.append(
                Detections(
                    boxes=t.to_image(xyxy),
                    scores=scores,
                    class_ids=cls,
                    labels=[self.labels[c] for c in cls.tolist()],
                )
            )
        return results

    def close(self) -> None:
        self.engine.close()


def default_labels(num_classes: int) -> list[str]:
    return list(COCO_CLASSES) if num_classes == 80 else [f"class_{i}" for i in range(num_classes)]
