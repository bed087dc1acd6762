"""SSDlite-MobileNetV2 read from its TensorFlow graph without TensorFlow, against TensorFlow itself.

The parity test runs the frozen graph in TensorFlow (a dev-only dependency) on real COCO images and asserts
every detection above 0.1 has a partner from our ONNX Runtime port with IoU > 0.99 and a score within 1e-3.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.model_store import get_model_path
from pipeline.config.schema import DetectorConfig
from pipeline.core.nms import iou_matrix
from pipeline.detect.detectors.factory import build_detector
from pipeline.detect.detectors.ssd import SsdDetector, resize_bilinear_tf1
from pipeline.models.darknet import ModelError
from pipeline.models.ssdlite import ssd_anchors
from pipeline.models.tf_graph import load_graph

SHARED = Path(os.environ.get("VIDPIPE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
COCO = SHARED / "coco_subset"
needs_coco = pytest.mark.skipif(
    not (COCO / "instances.json").is_file(), reason="needs ../shared/data/coco_subset"
)
MODEL = "ssdlite-mobilenetv2-coco"


@pytest.fixture(scope="module")
def ssd() -> SsdDetector:
    det = build_detector(DetectorConfig(model=MODEL, classes=None, score_threshold=0.1, threads=2))
    assert isinstance(det, SsdDetector)
    return det


def coco_images(n: int) -> list[Path]:
    return sorted((COCO / "images").glob("*.jpg"))[:n]


def test_anchors_follow_the_ssd_layout():
    a = ssd_anchors([19, 10, 5, 3, 2, 1])
    assert a.shape == (19 * 19 * 3 + (100 + 25 + 9 + 4 + 1) * 6, 4) == (1917, 4)
    # first cell of the lowest layer: centre (0.5/19, 0.5/19), scale 0.1 square, then 0.2 at 2:1 and 1:2
    np.testing.assert_allclose(a[0], [0.5 / 19, 0.5 / 19, 0.1, 0.1], rtol=1e-6)
    np.testing.assert_allclose(a[1, 2:], [0.2 / np.sqrt(2), 0.2 * np.sqrt(2)], rtol=1e-6)
    # the last anchor: 1x1 layer, interpolated scale sqrt(0.95 * 1.0), square
    np.testing.assert_allclose(a[-1], [0.5, 0.5, np.sqrt(0.95), np.sqrt(0.95)], rtol=1e-6)


def test_tf1_bilinear_resize_samples_without_half_pixel_shift():
    img = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    out = resize_bilinear_tf1(img, 2, 2)  # scale 2: output (i, j) = input (2i, 2j) exactly
    np.testing.assert_array_equal(out, img[::2, ::2].astype(np.float32))
    up = resize_bilinear_tf1(img, 8, 8)  # last output rows clamp to the last input row
    np.testing.assert_array_equal(up[-1, 0], img[-1, 0].astype(np.float32))


def test_graph_reader_errors_name_the_file(tmp_path):
    bad = tmp_path / "not_a_graph.pb"
    bad.write_bytes(b"\xff\xff\xff\xff garbage")
    with pytest.raises(ModelError, match="not_a_graph.pb"):
        load_graph(bad)
    with pytest.raises(ModelError, match="not found"):
        build_detector(DetectorConfig(model=str(tmp_path / "missing.pb")))


def test_graph_constants_are_read():
    g = load_graph(get_model_path(MODEL))
    w = g["FeatureExtractor/MobilenetV2/Conv/weights"].const()
    assert w.shape == (3, 3, 3, 32) and w.dtype == np.float32 and np.isfinite(w).all()
    assert g["Preprocessor/mul/x"].const() == pytest.approx(2 / 255, rel=1e-6)


@needs_coco
def test_ssd_finds_people_on_coco(ssd):
    """A person detector (the packaged graph has one class): most images with people get a person box."""
    import json

    meta = json.loads((COCO / "instances.json").read_text())
    people = {a["image_id"] for a in meta["annotations"] if a["category_id"] == 1 and a["area"] > 96 * 96}
    files = {im["id"]: im["file_name"] for im in meta["images"]}
    hits = 0
    for image_id in sorted(people)[:12]:
        res = ssd.detect([cv2.imread(str(COCO / "images" / files[image_id]))])[0]
        hits += int(any(lab == "person" and s >= 0.5 for lab, s in zip(res.labels, res.scores, strict=True)))
    assert ssd.labels == ["person"]
    assert hits >= 10, f"only {hits} of 12 images with a large person got a person box >= 0.5"


# TensorFlow runs in a child process: imported after torch it works, imported first it crashes the process
# (both bundle their own native libraries), and it should not change the test process for later tests.
_TF_REFERENCE = """
import sys, numpy as np, cv2, tensorflow as tf
graph_path, out_path, *images = sys.argv[1:]
gd = tf.compat.v1.GraphDef()
gd.ParseFromString(open(graph_path, "rb").read())
graph = tf.Graph()
with graph.as_default():
    tf.import_graph_def(gd, name="")
results = {}
with tf.compat.v1.Session(graph=graph) as sess:
    for i, path in enumerate(images):
        img = cv2.imread(path)
        boxes, scores = sess.run(["detection_boxes:0", "detection_scores:0"], {"image_tensor:0": img[None, :, :, ::-1]})
        results[f"boxes{i}"], results[f"scores{i}"] = boxes[0], scores[0]
np.savez(out_path, **results)
"""


@needs_coco
def test_parity_with_tensorflow_on_real_images(ssd, tmp_path):
    import subprocess
    import sys

    pytest.importorskip("tensorflow")
    images = coco_images(30)
    out = tmp_path / "tf.npz"
    proc = subprocess.run(
        [sys.executable, "-c", _TF_REFERENCE, str(get_model_path(MODEL)), str(out), *map(str, images)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    ref = np.load(out)
    matched = 0
    for i, path in enumerate(images):
        img = cv2.imread(str(path))
        h, w = img.shape[:2]
        boxes, scores = ref[f"boxes{i}"], ref[f"scores{i}"]
        keep = scores >= 0.1 + 1e-3  # away from the threshold so a 1e-6 difference cannot flip one
        ref_boxes = boxes[keep][:, [1, 0, 3, 2]] * np.array([w, h, w, h], np.float32)
        ref_scores = scores[keep]
        ours = ssd.detect([img])[0]
        for b, s in zip(ref_boxes, ref_scores, strict=True):
            ious = iou_matrix(b[None], ours.boxes)[0] if len(ours) else np.zeros(0)
            assert ious.size and ious.max() > 0.99, f"{path.name}: TF box {b} (score {s:.3f}) has no partner"
            assert abs(float(ours.scores[int(ious.argmax())]) - float(s)) < 1e-3, path.name
            matched += 1
        assert len(ours) <= len(ref_boxes) + int(np.sum((scores >= 0.1) & ~keep)), path.name
    logging.getLogger(__name__).info("SSD parity: %d detections on %d images", matched, len(images))
    assert matched >= 50, f"only {matched} detections compared; too few to mean anything"
