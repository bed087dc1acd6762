"""Build the configured detector through its family (registry.py), then apply ``detector.precision``."""

from __future__ import annotations

import logging

from engines.base import EngineError
from pipeline.config.schema import DetectorConfig
from pipeline.detect.detectors.base import Detector
from pipeline.detect.detectors.yolo import YoloDetector
from pipeline.models.darknet import ModelError

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
    """Swap ``det``'s fp32 ONNX Runtime engine for a static int8 one (built once, then cached).

    Calibration images go through the detector's own ``prepare`` (resize + blob), so the activation
    ranges are those it sees at run time.
    """
    from engines.onnx_engine import OnnxRuntimeEngine
    from engines.quantize import load_calibration_images, quantize_onnx
    from pipeline.ingest.demo_media import builtin_calibration_images

    fp32_path = getattr(getattr(det, "engine", None), "model_path", None)
    if (
        not isinstance(det, YoloDetector)
        or not isinstance(det.engine, OnnxRuntimeEngine)
        or fp32_path is None
    ):
        raise ModelError(
            f"detector.precision: int8 needs a YOLO model on backend onnxruntime (model {cfg.model!r})"
        )
    if cfg.calibration_images:
        try:
            images = load_calibration_images(cfg.calibration_images, cfg.calibration_limit)
        except EngineError as exc:
            raise ModelError(f"detector.calibration_images: {exc}") from None
    else:
        log.info(
            "detector.precision int8: calibrating on the built-in image set; for the best accuracy set "
            "detector.calibration_images to a folder or video of this camera's own frames"
        )
        images = builtin_calibration_images(cfg.calibration_limit)
    blobs = [det.prepare([img])[0] for img in images]
    int8_path = quantize_onnx(fp32_path, blobs)
    engine = OnnxRuntimeEngine(int8_path, threads=cfg.threads)
    det.engine.close()
    det.engine = engine
    log.info("detector %s: int8 model %s", det.name, int8_path)
    return det
