"""Family ``mtcnn``: the MTCNN face cascade (faces only; detector.classes does not apply).

Config keys used: device, threads. MTCNN keeps its own three stage thresholds.
"""

from __future__ import annotations

from pipeline.config import DetectorConfig
from pipeline.detectors.base import Detector


def build(cfg: DetectorConfig) -> Detector:
    from pipeline.detectors.mtcnn import build_mtcnn

    return build_mtcnn(device=cfg.device, threads=cfg.threads)
