"""Detector families: inferred and logged, chosen explicitly, errors naming the key; evaluate's new options."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from pipeline.config.schema import DetectorConfig
from pipeline.detect.detectors import registry
from pipeline.detect.detectors.base import NullDetector
from pipeline.detect.detectors.factory import build_detector
from pipeline.detect.detectors.ssd import SsdDetector
from pipeline.detect.detectors.yolo import YoloDetector
from pipeline.models.darknet import ModelError

SHARED = Path(os.environ.get("VIDPIPE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
COCO = SHARED / "coco_subset"


@pytest.mark.parametrize(
    "model, family",
    [
        ("none", "none"),
        ("mtcnn", "mtcnn"),
        ("yolov3-tiny", "darknet"),
        ("ssdlite-mobilenetv2-coco", "ssd"),
        ("/x/model.onnx", "onnx-yolo"),
        ("/x/yolov4.CFG", "darknet"),
        ("/x/frozen.pb", "ssd"),
    ],
)
def test_family_is_inferred_from_the_model(model, family):
    assert registry.infer_family(model) == family


def test_inferred_family_and_preprocessing_are_logged(caplog):
    with caplog.at_level(logging.INFO):
        det = build_detector(DetectorConfig(model="yolov3-tiny", backend="torch", classes=None))
    assert isinstance(det, YoloDetector)
    text = caplog.text
    assert "family darknet (inferred" in text
    assert "preprocessing stretch" in text and "from default of family darknet" in text
    assert det.preprocessing().startswith("stretch to 416x416")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        det = build_detector(
            DetectorConfig(model="yolov3-tiny", backend="torch", classes=None, resize="letterbox")
        )
    assert "preprocessing letterbox" in caplog.text and "from detector.resize" in caplog.text
    assert det.preprocessing().startswith("letterbox")


def test_explicit_family_and_errors_name_the_key(tmp_path):
    assert isinstance(build_detector(DetectorConfig(model="none", family="none")), NullDetector)
    with pytest.raises(ModelError, match=r"detector.family: unknown family 'retinanet'.*darknet"):
        build_detector(DetectorConfig(model="yolov3-tiny", family="retinanet"))
    with pytest.raises(ModelError, match=r"detector.model: 'dlib-face-resnet' is not a detector.*ssdlite"):
        build_detector(DetectorConfig(model="dlib-face-resnet"))
    with pytest.raises(ModelError, match="detector.model: unknown model 'nosuch'"):
        build_detector(DetectorConfig(model="nosuch"))
    with pytest.raises(ModelError, match="has no TensorFlow graph"):
        build_detector(DetectorConfig(model="yolov3-tiny", family="ssd"))
    with pytest.raises(ModelError, match="detector.precision: int8 applies to YOLO.*family ssd"):
        build_detector(DetectorConfig(model="ssdlite-mobilenetv2-coco", precision="int8"))
    with pytest.raises(
        ModelError, match="detector.classes: model ssdlite-mobilenetv2-coco detects only person"
    ):
        build_detector(DetectorConfig(model="ssdlite-mobilenetv2-coco", classes=["car"]))
    with pytest.raises(ModelError, match="detector.classes: 'unicorn' not among the classes"):
        build_detector(DetectorConfig(model="ssdlite-mobilenetv2-coco", classes=["person", "unicorn"]))


def test_person_detector_with_the_default_class_list_warns_and_keeps_person(caplog):
    with caplog.at_level(logging.WARNING):
        det = build_detector(DetectorConfig(model="ssdlite-mobilenetv2-coco"))  # default: person + vehicles
    assert "detects only person: detector.classes bicycle, car, motorcycle, bus, truck ignored" in caplog.text
    assert isinstance(det, SsdDetector) and det.allowed is not None and det.allowed.tolist() == [True]


def test_ssd_runs_on_the_torch_backend_too():
    det = build_detector(
        DetectorConfig(model="ssdlite-mobilenetv2-coco", backend="torch", classes=["person"])
    )
    assert isinstance(det, SsdDetector)
    res = det.detect([np.zeros((240, 320, 3), np.uint8), np.full((100, 50, 3), 255, np.uint8)])
    assert len(res) == 2 and all(len(r) == 0 or r.labels[0] == "person" for r in res)


def test_every_registered_family_has_a_builder():
    from engines.model_store import REGISTRY

    for name, spec in REGISTRY.items():
        if "family" in spec.extra:
            assert spec.extra["family"] in registry.BUILDERS, name


def test_evaluate_help_shows_defaults(capsys):
    import run_pipeline

    with pytest.raises(SystemExit):
        run_pipeline.main(["evaluate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    out = out[out.index("options:") :]  # past the usage line
    for option, default in [
        ("--precision", "fp32"),
        ("--preprocess", "auto"),
        ("--family", "auto"),
        ("--model", "yolox-nano"),  # the default detector since issue 19
        ("--score-threshold", "0.001"),
        ("--input-size", "416"),
        ("--backend", "onnxruntime"),
    ]:
        block = out[out.index(f"{option} ") :]
        first = block.index("(default:")
        assert block[first:].startswith(f"(default: {default})"), option


@pytest.mark.skipif(not (COCO / "instances.json").is_file(), reason="needs ../shared/data/coco_subset")
def test_evaluate_ssd_and_preprocess_on_coco(tmp_path, capsys):
    import run_pipeline

    meta = json.loads((COCO / "instances.json").read_text())
    with_people = sorted({a["image_id"] for a in meta["annotations"] if a["category_id"] == 1})[:6]
    meta["images"] = [im for im in meta["images"] if im["id"] in with_people]
    meta["annotations"] = [a for a in meta["annotations"] if a["image_id"] in with_people]
    (tmp_path / "gt.json").write_text(json.dumps(meta))
    aps = {}
    for pre in ("auto", "letterbox"):
        argv = ["evaluate", "--annotations", str(tmp_path / "gt.json"), "--images", str(COCO / "images")]
        argv += ["--model", "ssdlite-mobilenetv2-coco", "--classes", "person", "--preprocess", pre]
        assert run_pipeline.main(argv) == 0
        out = capsys.readouterr().out
        header = out.splitlines()[0]
        assert "ssdlite-mobilenetv2-coco (fp32, preprocessing: " in header
        assert ("stretch" if pre == "auto" else "letterbox") in header
        row = next(line for line in out.splitlines() if line.startswith("| person |"))
        aps[pre] = float(row.split("|")[4])
    assert aps["auto"] > 0.3, aps  # AP50 of a working person detector on images with people
    assert aps["auto"] != aps["letterbox"]


def test_exported_darknet_onnx_keeps_stretch_by_its_metadata_not_its_name(tmp_path, caplog):
    """The .onnx vidpipe exports from yolov3-tiny says how it was trained; copied under any name, loading it
    by path keeps stretch (before: the v5 layout's letterbox, silently)."""
    import shutil

    darknet = build_detector(DetectorConfig(model="yolov3-tiny", classes=None))
    assert isinstance(darknet, YoloDetector)
    copy = tmp_path / "some_model.onnx"
    shutil.copy(darknet.engine.model_path, copy)  # type: ignore[attr-defined]
    with caplog.at_level(logging.INFO):
        det = build_detector(DetectorConfig(model=str(copy), classes=None))
    assert isinstance(det, YoloDetector) and det.layout == "v5"
    assert det.preprocess == darknet.preprocess and det.preprocess.resize == "stretch"
    assert "from the file's metadata (vidpipe.preprocess=darknet)" in caplog.text
    img = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    np.testing.assert_allclose(det.raw([img]), darknet.raw([img]), atol=1e-4)
    # detector.resize still wins over the metadata
    again = build_detector(DetectorConfig(model=str(copy), classes=None, resize="letterbox"))
    assert isinstance(again, YoloDetector) and again.preprocess.resize == "letterbox"


def test_onnx_file_that_is_not_a_yolo_closes_its_engine(tmp_path, monkeypatch):
    """A rejected .onnx (its output is no YOLO layout) is an error naming the file, and the engine opened
    to probe it is closed, not left holding its session."""
    from torch import nn

    from engines.export import export_onnx
    from engines.onnx_engine import OnnxRuntimeEngine

    path = export_onnx(nn.Conv2d(3, 2, 1), (1, 3, 32, 32), tmp_path / "not_yolo.onnx")
    closed: list[bool] = []
    real_close = OnnxRuntimeEngine.close

    def recording_close(self: OnnxRuntimeEngine) -> None:
        closed.append(True)
        real_close(self)

    monkeypatch.setattr(OnnxRuntimeEngine, "close", recording_close)
    with pytest.raises(ModelError, match="not_yolo.onnx"):
        build_detector(DetectorConfig(model=str(path), input_size=32, classes=None))
    assert closed == [True]
