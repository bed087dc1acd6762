"""Build the configured detector through its family (registry.py), then apply ``detector.precision``."""

from __future__ import annotations

import logging

from pipeline.config.schema import DetectorConfig
from pipeline.detect.detectors.base import Detector
from pipeline.detect.detectors.yolo import YoloDetector
from pipeline.models.errors import ModelError

log = logging.getLogger(__name__)


def build_detector(cfg: DetectorConfig) -> Detector:
    """A ready detector for ``cfg``; errors name the model, file or config key that is wrong.

    The family (pipeline/detect/detectors/registry.py) builds it; ``precision: int8`` then swaps its engine.
    """
    from pipeline.detect.detectors import registry

    family = registry.resolve_family(cfg)
    if cfg.precision == "int8" and family in ("none", "mtcnn", "ssd"):
        raise ModelError(
            f"detector.precision: int8 applies to YOLO detectors, not detector.model {cfg.model!r} "
            f"(family {family})"
        )
    det = registry.BUILDERS[family](cfg)
    return to_int8(det, cfg) if cfg.precision == "int8" else det


def to_int8(det: Detector, cfg: DetectorConfig) -> YoloDetector:
    """Swap ``det``'s fp32 ONNX Runtime engine for a static int8 one (built once, then cached), refused
    (:class:`~pipeline.detect.detectors.int8.Int8Refused`, naming ``detector.precision``) when it loses
    more detections than the bound on frames held apart from calibration (detectors/int8.py)."""
    from pipeline.detect.detectors.int8 import build_int8

    try:
        return build_int8(det, cfg).detector
    except BaseException:
        det.close()
        raise
