"""Detector families: one module each, one line each in :data:`BUILDERS`.

A family knows how to build a :class:`~pipeline.detect.detectors.base.Detector` from ``DetectorConfig``: which files
it reads, how it preprocesses, how it decodes. ``detector.family`` names it; left at ``auto`` it is inferred
from ``detector.model`` (:func:`infer_family`) and the choice is logged, so nothing about a model's
treatment hides in a file name. Adding a family = one module with a ``build(cfg)`` + one line here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from engines.model_store import ModelStoreError, get_spec
from pipeline.config.schema import DetectorConfig
from pipeline.detect.detectors import (
    family_darknet,
    family_mtcnn,
    family_nanodet,
    family_onnx_yolo,
    family_ssd,
)
from pipeline.detect.detectors.base import Detector, build_null
from pipeline.models.errors import ModelError

log = logging.getLogger(__name__)

BUILDERS: dict[str, Callable[[DetectorConfig], Detector]] = {
    "none": build_null,
    "darknet": family_darknet.build,
    "onnx-yolo": family_onnx_yolo.build,
    "ssd": family_ssd.build,
    "mtcnn": family_mtcnn.build,
    "nanodet": family_nanodet.build,
}

#: file suffix of ``detector.model`` -> family, for models given by path
SUFFIXES = {".cfg": "darknet", ".onnx": "onnx-yolo", ".pb": "ssd"}


def infer_family(model: str) -> str:
    """The family of ``detector.model``: a reserved name, a model-store entry's family, or a file suffix."""
    if model in ("none", "mtcnn"):
        return model
    suffix = Path(model).suffix.lower()
    if suffix in SUFFIXES:
        return SUFFIXES[suffix]
    try:
        spec = get_spec(model)
    except ModelStoreError as exc:
        raise ModelError(f"detector.model: {exc}") from None
    family = spec.extra.get("family")
    if family is None:
        raise ModelError(
            f"detector.model: {model!r} is not a detector ({spec.description}); "
            f"detectors: {', '.join(detector_models())}"
        )
    return family


def detector_models() -> list[str]:
    """Model-store names that are detectors (those declaring a family)."""
    from engines.model_store import REGISTRY

    return sorted(name for name, spec in REGISTRY.items() if "family" in spec.extra)


def resolve_family(cfg: DetectorConfig) -> str:
    """``detector.family`` if set, else the inferred one; unknown names are an error naming the key."""
    if cfg.family != "auto":
        if cfg.family not in BUILDERS:
            raise ModelError(
                f"detector.family: unknown family {cfg.family!r}; use auto or one of {', '.join(BUILDERS)}"
            )
        return cfg.family
    family = infer_family(cfg.model)
    log.info("detector.model %s: family %s (inferred; set detector.family to choose)", cfg.model, family)
    return family
