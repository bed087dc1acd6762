"""int8 that keeps its detections (pipeline/detect/detectors/int8.py): ``models quantize`` and
``precision: int8`` measure the int8 model against fp32 on frames held apart from calibration and refuse it,
naming the loss, when it loses more than the bound.

Real models and real frames: YOLOX-Nano (its SiLU pre-activations do not survive per-tensor uint8 on ONNX
Runtime: it loses 10-30 % of its detections) is refused; YOLOv3-tiny (leaky ReLU) is accepted. Calibration
and held-apart frames come from ../shared/data/videos/pedestrians_street.mp4 (a street crossing).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import models
from pipeline.config.schema import DetectorConfig
from pipeline.detect.detectors.factory import build_detector
from pipeline.detect.detectors.int8 import (
    MAX_LOSS,
    MIN_DETECTIONS,
    Int8Refused,
    Int8Verdict,
    split_calibration,
)
from pipeline.models.darknet import ModelError

VIDEO = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos" / "pedestrians_street.mp4"
LIMIT = 24

pytestmark = pytest.mark.skipif(not VIDEO.is_file(), reason=f"shared data missing: {VIDEO}")


def _quantize(capsys, model: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    models.add_arguments(parser)
    args = parser.parse_args(["quantize", "--model", model, "--images", str(VIDEO), "--limit", str(LIMIT)])
    rc = models.main(args)
    return rc, capsys.readouterr().out


def test_models_quantize_refuses_yolox_nano_naming_the_loss(capsys):
    rc, out = _quantize(capsys, "yolox-nano")
    assert rc == 1, out
    line = next(ln for ln in out.splitlines() if ln.startswith("REFUSED"))
    assert "yolox-nano" in line and "held-apart frames" in line and f"bound {100 * MAX_LOSS:.0f} %" in line
    assert "int8 lost" in line
    lost = float(line.split("int8 lost ")[1].split(" %")[0])
    assert lost > 100 * MAX_LOSS
    assert "-int8-" not in out.strip().splitlines()[-1]  # no model path is printed for a refused model


def test_models_quantize_accepts_yolov3_tiny_and_prints_its_path(capsys):
    rc, out = _quantize(capsys, "yolov3-tiny")
    assert rc == 0, out
    assert "held-apart frames" in out and "int8 speed:" in out
    path = out.strip().splitlines()[-1]
    assert path.endswith(".onnx") and "-int8-" in path and Path(path).is_file()
    assert Path(path).with_suffix(".verdict.json").is_file()  # the verdict is cached beside the model


def test_precision_int8_in_a_config_fails_naming_detector_precision():
    cfg = DetectorConfig(
        model="yolox-nano",
        classes=None,
        precision="int8",
        calibration_images=str(VIDEO),
        calibration_limit=LIMIT,
    )
    with pytest.raises(Int8Refused) as err:
        build_detector(cfg)
    msg = str(err.value)
    assert msg.startswith("detector.precision:") and "yolox-nano" in msg and "int8 lost" in msg
    assert err.value.verdict.fp32_detections >= MIN_DETECTIONS


def test_too_few_images_to_hold_any_apart_is_an_error_naming_the_key():
    with pytest.raises(ModelError, match="detector.calibration_images"):
        split_calibration([np.zeros((8, 8, 3), np.uint8)] * 2)
    calib, held = split_calibration([np.full((1,), i) for i in range(48)], held=16)
    assert [int(h[0]) for h in held] == list(range(32, 48))  # the last frames are held apart
    assert len(calib) == 32
    calib, held = split_calibration([np.full((1,), i) for i in range(12)], held=16)
    assert len(held) == 4 and len(calib) == 8  # a short source holds a third apart


def test_verdict_bounds():
    v = Int8Verdict(frames=16, fp32_detections=100, int8_detections=97, matched=90, bound=0.03)
    assert v.accepted
    assert not Int8Verdict(16, 100, 96, 90, 0.03).accepted
    assert "lost 4 %" in Int8Verdict(16, 100, 96, 90, 0.03).describe()
    assert Int8Verdict(16, 100, 105, 90, 0.03).accepted  # a few extra borderline boxes are noise
    assert not Int8Verdict(16, 100, 120, 90, 0.03).accepted
    assert not Int8Verdict(16, MIN_DETECTIONS - 1, MIN_DETECTIONS - 1, 5, 0.03).accepted  # unmeasured
