"""Turn YOLO network outputs of several toolchains into boxes, scores and class ids.

Layouts (``N`` = batch, ``R`` = candidate rows, ``C`` = classes):

- ``v5``    (N, R, 5+C): cx, cy, w, h in input pixels, objectness, class probabilities. Ultralytics
  YOLOv5 exports and this project's darknet importer (and its ONNX exports) produce it.
- ``v8``    (N, 4+C, R): cx, cy, w, h in input pixels, class probabilities, no objectness
  (Ultralytics YOLOv8 / YOLO11 exports).
- ``yolox`` (N, R, 5+C): raw box regressions per grid cell of strides 8, 16, 32 (one anchor per cell,
  rows ordered stride, y, x): cx = (tx + gx) * stride, w = exp(tw) * stride; objectness and class
  scores already sigmoid (Megvii YOLOX export with decode_in_inference=False).

``detect_layout`` tells them apart from the output shape where that is unambiguous.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from pipeline.core.nms import batched_nms

Layout = Literal["v5", "v8", "yolox"]
LAYOUTS: tuple[str, ...] = ("v5", "v8", "yolox")

#: the 80 COCO class names (COCO 2017 spelling) in darknet / YOLOX / Ultralytics index order
COCO_CLASSES: list[str] = [
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
]

#: darknet's coco.names spellings -> COCO 2017 names (both are accepted in ``detector.classes``)
CLASS_ALIASES: dict[str, str] = {
    "motorbike": "motorcycle",
    "aeroplane": "airplane",
    "sofa": "couch",
    "pottedplant": "potted plant",
    "diningtable": "dining table",
    "tvmonitor": "tv",
}


def canonical_label(name: str) -> str:
    name = name.strip()
    return CLASS_ALIASES.get(name, name)


class LayoutError(ValueError):
    """An output tensor does not fit the expected (or any recognisable) YOLO layout."""


def _cells(h: int, w: int, strides: tuple[int, ...]) -> int:
    return sum((h // s) * (w // s) for s in strides)


def detect_layout(shape: tuple[int, ...], input_hw: tuple[int, int]) -> Layout:
    """Guess the layout of an output of ``shape`` for a network input of ``input_hw``.

    v8 is channels-first (fewer channels than rows). For rows-first outputs the row count decides:
    one row per cell of strides 8/16/32 is YOLOX, three per cell (anchors) is v5/darknet.
    """
    if len(shape) != 3:
        raise LayoutError(f"expected a 3-d detection output (N, rows, values), got shape {tuple(shape)}")
    h, w = input_hw
    _, a, b = shape
    if a < b:
        if a < 5:
            raise LayoutError(f"output shape {tuple(shape)}: too few values per box for the v8 layout")
        return "v8"
    if b < 6:
        raise LayoutError(f"output shape {tuple(shape)}: too few values per box")
    if a == _cells(h, w, (8, 16, 32)):
        return "yolox"
    for strides in ((8, 16, 32), (16, 32), (8, 16, 32, 64), (32,)):
        if a == 3 * _cells(h, w, strides):
            return "v5"
    raise LayoutError(
        f"cannot tell the layout of output shape {tuple(shape)} for input {h}x{w}; "
        f"set detector.layout to one of {', '.join(LAYOUTS)}"
    )


def yolox_grid(
    input_hw: tuple[int, int], strides: tuple[int, ...] = (8, 16, 32)
) -> tuple[np.ndarray, np.ndarray]:
    """(R, 2) cell offsets (x, y) and (R, 1) strides in YOLOX's row order."""
    h, w = input_hw
    grids, strs = [], []
    for s in strides:
        gh, gw = h // s, w // s
        ys, xs = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
        grids.append(np.stack([xs.ravel(), ys.ravel()], 1))
        strs.append(np.full((gh * gw, 1), s))
    return np.concatenate(grids).astype(np.float32), np.concatenate(strs).astype(np.float32)


def to_rows(output: np.ndarray, layout: Layout, input_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One image's output -> (R, 4) cx cy w h in input pixels and (R, C) class scores (obj folded in)."""
    if layout == "v8":
        if output.ndim != 2 or output.shape[0] < 5:
            raise LayoutError(f"v8 layout expects (4+C, R) per image, got {output.shape}")
        rows = output.T
        return rows[:, :4], rows[:, 4:]
    if output.ndim != 2 or output.shape[1] < 6:
        raise LayoutError(f"{layout} layout expects (R, 5+C) per image, got {output.shape}")
    if layout == "v5":
        return output[:, :4], output[:, 5:] * output[:, 4:5]
    if layout == "yolox":
        grid, strides = yolox_grid(input_hw)
        if grid.shape[0] != output.shape[0]:
            raise LayoutError(
                f"yolox layout: input {input_hw[0]}x{input_hw[1]} has {grid.shape[0]} cells at strides "
                f"8/16/32, output has {output.shape[0]} rows"
            )
        xy = (output[:, :2] + grid) * strides
        wh = np.exp(np.minimum(output[:, 2:4], 20.0)) * strides
        return np.concatenate([xy, wh], 1), output[:, 5:] * output[:, 4:5]
    raise LayoutError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")


def select(
    boxes_cxcywh: np.ndarray,
    class_scores: np.ndarray,
    score_threshold: float,
    nms_iou: float,
    allowed: np.ndarray | None = None,
    max_detections: int = 300,
    max_candidates: int = 5000,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best class per row, score threshold, class filter, class-aware NMS.

    Returns (K, 4) x1y1x2y2 in input pixels, (K,) scores, (K,) class ids, best score first.
    ``allowed`` is a boolean mask over classes (None keeps all).
    """
    class_ids = class_scores.argmax(1)
    scores = class_scores[np.arange(class_scores.shape[0]), class_ids]
    keep = scores >= score_threshold
    if allowed is not None:
        keep &= allowed[class_ids]
    idx = np.flatnonzero(keep)
    if idx.size > max_candidates:
        idx = idx[np.argsort(-scores[idx], kind="stable")[:max_candidates]]
    b = boxes_cxcywh[idx].astype(np.float32)
    xyxy = np.concatenate([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], 1)
    s = scores[idx].astype(np.float32)
    c = class_ids[idx].astype(np.int32)
    kept = batched_nms(xyxy, s, c, nms_iou)[:max_detections]
    return xyxy[kept], s[kept], c[kept]
