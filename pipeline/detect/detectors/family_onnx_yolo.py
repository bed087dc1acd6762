"""Family ``onnx-yolo``: a YOLO exported to ONNX (Ultralytics v5 / v8 or YOLOX output layouts).

Config keys used: model (an .onnx path, or a model-store name such as ``yolox-nano``), backend (onnxruntime or tensorrt), device, input_size (unless the
file fixes it), threads, layout, resize, score_threshold, nms_iou, classes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from engines import create_engine
from engines.base import InferenceEngine
from engines.model_store import ModelStoreError, get_model_path
from pipeline.config.schema import DetectorConfig
from pipeline.detect.detectors.yolo import (
    PREPROCESS,
    PREPROCESS_KEY,
    YoloDetector,
    default_labels,
    preprocess_for,
)
from pipeline.detect.detectors.yolo_decode import Layout, detect_layout
from pipeline.models.errors import ModelError

log = logging.getLogger(__name__)


def model_file(model: str) -> tuple[Path, str]:
    """The .onnx file of ``detector.model`` and the detector's name: a path (name = its stem) or a
    model-store entry (name = the entry, file fetched and sha256-checked on first use)."""
    path = Path(model).expanduser()
    if path.suffix.lower() == ".onnx" or path.is_file():
        if not path.is_file():
            raise ModelError(f"detector.model: ONNX file {path} not found")
        return path, path.stem
    try:
        return get_model_path(model, "onnx"), model
    except ModelStoreError as exc:
        raise ModelError(f"detector.model: {exc}") from None


def build(cfg: DetectorConfig) -> YoloDetector:
    path, name = model_file(cfg.model)
    if cfg.backend == "torch":
        raise ModelError(
            f"detector.backend: 'torch' cannot run ONNX file {path}; use onnxruntime or tensorrt"
        )
    engine = create_engine(path, backend=cfg.backend, device=cfg.device, threads=cfg.threads)
    try:
        return _detector(engine, path, cfg, name)
    except BaseException:
        engine.close()  # a file rejected here does not keep its session (or GPU memory)
        raise


def _detector(engine: InferenceEngine, path: Path, cfg: DetectorConfig, name: str) -> YoloDetector:
    size = cfg.input_size
    shape = engine.input_shape()
    if shape and len(shape) == 4 and all(isinstance(d, int) for d in shape[2:]):
        if shape[2] != shape[3]:
            raise ModelError(f"{path}: non-square input {shape[2]}x{shape[3]} is not supported")
        if shape[2] != size:
            log.info(
                "%s: using the model's fixed input size %d (detector.input_size=%d)", path, shape[2], size
            )
            size = int(shape[2])  # type: ignore[arg-type]
    probe = engine.run({engine.input_names[0]: np.zeros((1, 3, size, size), np.float32)})
    out_shape = probe[engine.output_names[0]].shape
    try:
        layout: Layout = detect_layout(out_shape, (size, size)) if cfg.layout == "auto" else cfg.layout
    except ValueError as exc:
        raise ModelError(f"{path}: {exc}") from None
    num_classes = out_shape[1] - 4 if layout == "v8" else out_shape[2] - 5
    batch_limit = shape[0] if shape and isinstance(shape[0], int) and shape[0] > 0 else None
    trained: str = layout  # the PREPROCESS entry: the layout's default unless the file names its own
    source: str | None = None
    declared = _declared_preprocess(path, engine)
    if declared is not None:
        if declared not in PREPROCESS:
            raise ModelError(
                f"{path}: metadata {PREPROCESS_KEY}={declared!r} is not one of {', '.join(PREPROCESS)}"
            )
        trained, source = declared, f"the file's metadata ({PREPROCESS_KEY}={declared})"
    return YoloDetector(
        engine,
        layout=layout,
        input_size=size,
        labels=default_labels(num_classes),
        preprocess=preprocess_for(cfg.resize, trained, name, source),
        score_threshold=cfg.score_threshold,
        nms_iou=cfg.nms_iou,
        classes=cfg.classes,
        name=name,
        batch_limit=batch_limit,
    )


def _declared_preprocess(path: Path, engine: InferenceEngine | None = None) -> str | None:
    """The PREPROCESS entry named in the file's metadata (vidpipe writes it when exporting a Darknet model).

    Read from the ONNX Runtime session when there is one: importing ``onnx`` costs a second of start-up."""
    session = getattr(engine, "session", None)
    if session is not None and hasattr(session, "get_modelmeta"):
        return session.get_modelmeta().custom_metadata_map.get(PREPROCESS_KEY)
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - the engine already loaded the file; no metadata then
        return None
    return next((p.value for p in model.metadata_props if p.key == PREPROCESS_KEY), None)
