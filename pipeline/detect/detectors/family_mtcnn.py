"""Family ``mtcnn``: the MTCNN face cascade (faces only; detector.classes does not apply).

Config keys used: device, threads. MTCNN keeps its own three stage thresholds.
"""

from __future__ import annotations

from pipeline.config.schema import DetectorConfig
from pipeline.detect.detectors.base import Detector


def build(cfg: DetectorConfig) -> Detector:
    from pipeline.detect.detectors.mtcnn import build_mtcnn

    return build_mtcnn(device=cfg.device, threads=cfg.threads)
