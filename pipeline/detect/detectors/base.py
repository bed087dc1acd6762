"""What the detection stage needs from a detector: a batch of BGR frames in, one Detections per frame out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import numpy as np

from pipeline.core.types import Detections

if TYPE_CHECKING:
    from pipeline.config.schema import DetectorConfig


class Detector(ABC):
    #: model name used in events and metrics, e.g. "yolov3-tiny"
    name: str = "?"
    #: class names indexed by class id
    labels: list[str] = []

    @abstractmethod
    def detect(self, images: list[np.ndarray]) -> list[Detections]:
        """Detect objects in each HxWx3 uint8 BGR image; boxes come back in that image's pixels."""

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    def preprocessing(self) -> str:
        """How frames are resized and scaled for the network, in words (printed by ``evaluate``)."""
        return "none"


class NullDetector(Detector):
    """Finds nothing. Used to measure the spine's own overhead and to run the pipeline without a model."""

    name = "none"

    def detect(self, images: list[np.ndarray]) -> list[Detections]:
        return [Detections.empty() for _ in images]


def build_null(cfg: DetectorConfig) -> Detector:
    """Family ``none``: no model, no settings."""
    return NullDetector()
