"""int8 YOLOv3-tiny on ONNX Runtime (engines/quantize.py): boxes close to fp32, cache reuse, config errors.

The int8 detector is calibrated on 16 images of the built-in set (scikit-image photos + demo clip frames)
and compared with the fp32 detector on skimage's camera() photo (a person) and on demo clip frames (the
astronaut photo, a person, and chelsea the cat): every confident fp32 box (score >= 0.5) must have an int8
box of the same label with IoU > 0.8.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data
from pydantic import ValidationError

from engines.base import EngineError
from engines.onnx_engine import OnnxRuntimeEngine
from engines.quantize import (
    QuantSettings,
    decode_tail,
    load_calibration_images,
    pad_inf_to_edge,
    quantize_onnx,
)
from pipeline.config.schema import DetectorConfig
from pipeline.core.nms import iou_matrix
from pipeline.detect.detectors.factory import build_detector
from pipeline.ingest.demo_media import render_frames, write_demo_video
from pipeline.models.darknet import ModelError

CALIB = 16
CONFIDENT = 0.5
IOU_MIN = 0.8


def _test_images() -> list[np.ndarray]:
    camera = np.repeat(skimage.data.camera()[..., None], 3, axis=2)
    frames = list(render_frames(width=640, height=360, fps=25, n_frames=250))
    return [camera, *frames[17::40]]


@pytest.fixture(scope="module")
def detectors():
    fp32 = build_detector(DetectorConfig(model="yolov3-tiny", classes=None, threads=2))
    int8 = build_detector(
        DetectorConfig(
            model="yolov3-tiny", classes=None, threads=2, precision="int8", calibration_limit=CALIB
        )
    )
    yield fp32, int8
    fp32.close()
    int8.close()


def test_int8_engine_is_a_quantized_model(detectors):
    fp32, int8 = detectors
    assert int8.engine.model_path != fp32.engine.model_path
    assert "-int8-" in int8.engine.model_path.name
    import onnx

    ops = {n.op_type for n in onnx.load(str(int8.engine.model_path)).graph.node}
    assert "QLinearConv" in ops and "Conv" not in ops
    assert "Sigmoid" in ops and "Exp" in ops  # the box decode stays fp32


def test_int8_boxes_match_fp32(detectors):
    fp32, int8 = detectors
    checked = 0
    for img in _test_images():
        a = fp32.detect([img])[0]
        b = int8.detect([img])[0]
        for box, score, label in zip(a.boxes, a.scores, a.labels, strict=True):
            if score < CONFIDENT:
                continue
            same = [i for i, lab in enumerate(b.labels) if lab == label]
            assert same, f"int8 lost the {label} ({score:.2f}) that fp32 found"
            best = float(iou_matrix(box[None], b.boxes[same]).max())
            assert best > IOU_MIN, f"{label} ({score:.2f}): best int8 IoU {best:.3f}"
            checked += 1
    assert checked >= 3  # the photos hold people and a cat that fp32 finds confidently


def test_int8_model_is_cached_and_reused(detectors):
    _, int8 = detectors
    path = int8.engine.model_path
    mtime = path.stat().st_mtime_ns
    again = build_detector(
        DetectorConfig(model="yolov3-tiny", classes=None, precision="int8", calibration_limit=CALIB)
    )
    try:
        assert again.engine.model_path == path
        assert path.stat().st_mtime_ns == mtime  # not rewritten
    finally:
        again.close()


def test_cache_key_follows_calibration_set_and_settings(detectors):
    fp32, _ = detectors
    imgs = _test_images()[:2]
    blobs = [fp32.prepare([i])[0] for i in imgs]
    src = fp32.engine.model_path
    from engines.quantize import cached_path

    base = cached_path(src, blobs, QuantSettings())
    assert cached_path(src, blobs, QuantSettings()) == base
    assert cached_path(src, blobs[:1], QuantSettings()) != base
    assert cached_path(src, blobs, QuantSettings(format="qdq")) != base


def test_explicit_output_path_and_qdq_format(detectors, tmp_path):
    fp32, _ = detectors
    blobs = [fp32.prepare([i])[0] for i in _test_images()[:2]]
    out = quantize_onnx(fp32.engine.model_path, blobs, QuantSettings(format="qdq"), tmp_path / "m.onnx")
    assert out == tmp_path / "m.onnx"
    eng = OnnxRuntimeEngine(out, threads=1)
    y = eng.run({"images": blobs[0]})["output"]
    assert y.shape == (1, 2535, 85) and np.isfinite(y).all()


def test_decode_tail_is_only_after_the_convolutions(detectors):
    import onnx

    path = detectors[0].engine.model_path
    ops = {n.name: n.op_type for n in onnx.load(str(path)).graph.node}
    tail = {ops[n] for n in decode_tail(path)}
    assert "Conv" not in tail and "LeakyRelu" not in tail and "MaxPool" not in tail
    assert {"Exp", "Sigmoid"} <= tail


def test_edge_pad_rewrite_keeps_fp32_output(detectors, tmp_path):
    """Darknet's -inf pad before the stride-1 maxpool becomes an edge pad: same output, int8-friendly."""
    import onnx

    fp32 = detectors[0]
    model = onnx.load(str(fp32.engine.model_path))
    assert pad_inf_to_edge(model) == 1
    onnx.save(model, str(tmp_path / "edge.onnx"))
    edge = OnnxRuntimeEngine(tmp_path / "edge.onnx", threads=2)
    for img in _test_images()[:3]:
        blob = fp32.prepare([img])[0]
        want = fp32.engine.run({"images": blob})["output"]
        got = edge.run({"images": blob})["output"]
        assert np.abs(got - want).max() < 1e-3


def test_int8_with_torch_backend_is_a_config_error():
    with pytest.raises(ValidationError, match=r"detector\.precision.*onnxruntime.*'torch'"):
        DetectorConfig(model="yolov3-tiny", precision="int8", backend="torch")


def test_int8_with_mtcnn_is_an_error():
    with pytest.raises(ModelError, match=r"detector\.precision"):
        build_detector(DetectorConfig(model="mtcnn", precision="int8"))


def test_calibration_source_errors_name_the_path(tmp_path):
    with pytest.raises(ModelError, match=rf"detector\.calibration_images: .*{tmp_path / 'nope'}"):
        build_detector(
            DetectorConfig(model="yolov3-tiny", precision="int8", calibration_images=str(tmp_path / "nope"))
        )
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(EngineError, match=f"no image files .* in {empty}"):
        load_calibration_images(empty)
    (empty / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(EngineError, match="cannot read image .*bad.jpg"):
        load_calibration_images(empty)
    with pytest.raises(EngineError, match="not found"):
        quantize_onnx(tmp_path / "missing.onnx", [np.zeros((1, 3, 32, 32), np.float32)])


def test_calibration_from_folder_and_video(tmp_path):
    frames = list(render_frames(width=160, height=120, fps=25, n_frames=10))
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:02d}.png"), f)
    got = load_calibration_images(folder, limit=4)
    assert len(got) == 4 and all(g.shape == (120, 160, 3) for g in got)
    assert np.array_equal(got[0], frames[0])
    video = write_demo_video(tmp_path / "clip.mp4", width=160, height=120, fps=25, seconds=1.0)
    got = load_calibration_images(video, limit=5)
    assert len(got) == 5 and got[0].shape == (120, 160, 3)


def test_cli_quantize_prints_the_int8_model_path(tmp_path, capsys):
    """Real frames (a street clip): calibrated on the earlier ones, measured on the held-apart last ones."""
    import argparse
    from pathlib import Path

    from pipeline.cli import models

    video = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos" / "pedestrians_street.mp4"
    if not video.is_file():
        pytest.skip(f"shared data missing: {video}")
    parser = argparse.ArgumentParser()
    models.add_arguments(parser)
    args = parser.parse_args(["quantize", "--model", "yolov3-tiny", "--images", str(video), "--limit", "24"])
    assert models.main(args) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert out.endswith(".onnx") and "-int8-" in out
    eng = OnnxRuntimeEngine(out, threads=1)
    assert "QLinearConv" in {n.op_type for n in __import__("onnx").load(out).graph.node}
    assert eng.run({"images": np.zeros((1, 3, 416, 416), np.float32)})["output"].shape == (1, 2535, 85)
    args = parser.parse_args(["quantize", "--images", str(tmp_path / "missing")])
    assert models.main(args) == 1
    assert "detector.calibration_images" in capsys.readouterr().out
