"""NanoDet-m (family ``nanodet``) against OpenCV DNN running the same .onnx file.

The reference is written here from NanoDet's published decoding, independently of the product module:
OpenCV letterboxes with ``copyMakeBorder``, runs ``cv2.dnn.readNet`` on the model-store file, decodes
the GFL distributions itself and suppresses with ``cv2.dnn.NMSBoxesBatched``. The detector under test
runs the same file on ONNX Runtime. Images: 12 real COCO val2017 photos and 2 real 1080p MOT17 frames.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.model_store import get_model_path
from pipeline.config.schema import DetectorConfig
from pipeline.core.nms import iou_matrix
from pipeline.detect.detectors.factory import build_detector

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
COCO = DATA / "coco_subset" / "images"
needs_data = pytest.mark.skipif(not COCO.is_dir(), reason="needs ../shared/data/coco_subset")
THR, NMS_IOU = 0.25, 0.45


def _images() -> list[tuple[str, np.ndarray]]:
    files = sorted(COCO.glob("*.jpg"))[:12] + [
        DATA / "tracks" / "MOT17-13-FRCNN" / "img1" / "000001.jpg",
        DATA / "tracks" / "MOT17-10-FRCNN" / "img1" / "000001.jpg",
    ]
    return [(f.name, cv2.imread(str(f))) for f in files]


def _opencv_nanodet(net: cv2.dnn.Net, img: np.ndarray, size: int = 416):
    h, w = img.shape[:2]
    r = min(size / w, size / h)
    nw, nh = max(1, round(w * r)), max(1, round(h * r))
    left, top = (size - nw) // 2, (size - nh) // 2
    canvas = cv2.copyMakeBorder(
        cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR),
        top, size - nh - top, left, size - nw - left, cv2.BORDER_CONSTANT, value=(0, 0, 0),
    )  # fmt: skip
    mean = np.array([103.53, 116.28, 123.675], np.float32)
    std = np.array([57.375, 57.12, 58.395], np.float32)
    net.setInput(((canvas.astype(np.float32) - mean) / std).transpose(2, 0, 1)[None].copy())
    names = net.getUnconnectedOutLayersNames()
    outs = {}
    for a in net.forward(names):
        a = a.reshape(a.shape[-2], a.shape[-1])
        outs.setdefault(a.shape[0], {})[a.shape[1]] = a
    boxes, scores, classes = [], [], []
    for stride in (8, 16, 32):
        n = -(-size // stride)
        cls, reg = outs[n * n][80], outs[n * n][32]
        for cell in np.flatnonzero(cls.max(axis=1) >= THR):
            cx, cy = (cell % n + 0.5) * stride, (cell // n + 0.5) * stride
            bins = reg[cell].reshape(4, 8).astype(np.float64)
            p = np.exp(bins - bins.max(axis=1, keepdims=True))
            dist = (p / p.sum(axis=1, keepdims=True)) @ np.arange(8) * stride
            x1, y1 = max(cx - dist[0], 0), max(cy - dist[1], 0)
            x2, y2 = min(cx + dist[2], size), min(cy + dist[3], size)
            c = int(cls[cell].argmax())
            boxes.append([x1, y1, x2 - x1, y2 - y1])
            scores.append(float(cls[cell, c]))
            classes.append(c)
    if not boxes:
        return np.zeros((0, 4)), np.zeros(0), np.zeros(0, int)
    keep = np.asarray(cv2.dnn.NMSBoxesBatched(boxes, scores, classes, THR, NMS_IOU), int).reshape(-1)
    b = np.asarray(boxes)[keep]
    xyxy = np.c_[b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]]
    xyxy[:, 0::2] = np.clip((xyxy[:, 0::2] - left) / (nw / w), 0, w)
    xyxy[:, 1::2] = np.clip((xyxy[:, 1::2] - top) / (nh / h), 0, h)
    return xyxy, np.asarray(scores)[keep], np.asarray(classes)[keep]


@needs_data
def test_nanodet_detections_equal_opencv_dnn_on_the_same_file():
    net = cv2.dnn.readNet(str(get_model_path("nanodet-m-416", "onnx")))
    det = build_detector(
        DetectorConfig(model="nanodet-m-416", classes=None, score_threshold=THR, nms_iou=NMS_IOU, threads=1)
    )
    assert det.name == "nanodet-m-416" and len(det.labels) == 80
    total = 0
    for name, img in _images():
        ours = det.detect([img])[0]
        ref_boxes, ref_scores, ref_cls = _opencv_nanodet(net, img)
        assert len(ours) == len(ref_boxes), name
        total += len(ours)
        if not len(ours):
            continue
        iou = iou_matrix(ours.boxes, ref_boxes.astype(np.float32))
        match = iou.argmax(axis=1)
        assert len(set(match.tolist())) == len(ours), name  # one to one
        assert iou[np.arange(len(ours)), match].min() > 0.99, name
        np.testing.assert_allclose(ours.scores, ref_scores[match], atol=1e-4, err_msg=name)
        assert (ours.class_ids == ref_cls[match]).all(), name
    assert total >= 50  # the comparison rests on real detections, not on empty lists


@needs_data
def test_nanodet_finds_people_and_filters_classes():
    img = cv2.imread(str(DATA / "tracks" / "MOT17-10-FRCNN" / "img1" / "000001.jpg"))
    det = build_detector(DetectorConfig(model="nanodet-m-416", classes=["person"], threads=1))
    out = det.detect([img, img[:540, :960]])
    assert len(out) == 2 and all(set(d.labels) == {"person"} for d in out)
    assert len(out[0]) >= 3
    assert (out[1].boxes[:, 2] <= 960).all() and (out[1].boxes[:, 3] <= 540).all()  # in the crop's pixels
