"""Build the configured detector: ``none``, a darknet model (store name or .cfg path) or an .onnx file."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from engines import create_engine
from engines.base import EngineError
from engines.model_store import ModelStoreError, get_model_files, get_spec
from pipeline.config import DetectorConfig
from pipeline.detectors.base import Detector, NullDetector
from pipeline.detectors.yolo import PREPROCESS, Preprocess, YoloDetector, default_labels, read_names
from pipeline.detectors.yolo_decode import Layout, detect_layout
from pipeline.models.darknet import ModelError, load_darknet

log = logging.getLogger(__name__)


def build_detector(cfg: DetectorConfig) -> Detector:
    """A ready detector for ``cfg``; errors name the model, file or config key that is wrong."""
    model = cfg.model
    if cfg.precision == "int8" and model in ("none", "mtcnn"):
        raise ModelError(f"detector.precision: int8 applies to YOLO detectors, not detector.model {model!r}")
    det = _build(cfg)
    return to_int8(det, cfg) if cfg.precision == "int8" else det


def _build(cfg: DetectorConfig) -> Detector:
    model = cfg.model
    if model == "none":
        return NullDetector()
    if model == "mtcnn":
        # Faces only: MTCNN keeps its own three stage thresholds; detector.classes does not apply.
        from pipeline.detectors.mtcnn import build_mtcnn

        return build_mtcnn(device=cfg.device, threads=cfg.threads)
    if model.lower().endswith(".onnx"):
        return build_onnx_detector(Path(model), cfg)
    if model.lower().endswith(".cfg"):
        cfg_path = Path(model).expanduser()
        weights = cfg_path.with_suffix(".weights")
        names = cfg_path.with_suffix(".names")
        for p in (cfg_path, weights):
            if not p.is_file():
                raise ModelError(
                    f"detector.model: {p} not found (a darknet .cfg needs its .weights beside it)"
                )
        return build_darknet_detector(
            cfg_path, weights, names if names.is_file() else None, cfg, cfg_path.stem
        )
    try:
        spec = get_spec(model)
    except ModelStoreError as exc:
        raise ModelError(f"detector.model: {exc}") from None
    if "cfg" not in spec.files or "weights" not in spec.files:
        raise ModelError(f"detector.model: {model!r} is not a YOLO detector ({spec.description})")
    files = get_model_files(model)
    return build_darknet_detector(files["cfg"], files["weights"], files.get("names"), cfg, model)


def to_int8(det: Detector, cfg: DetectorConfig) -> YoloDetector:
    """Swap ``det``'s fp32 ONNX Runtime engine for a static int8 one (built once, then cached).

    Calibration images go through the detector's own ``prepare`` (resize + blob), so the activation
    ranges are those it sees at run time.
    """
    from engines.onnx_engine import OnnxRuntimeEngine
    from engines.quantize import builtin_calibration_images, load_calibration_images, quantize_onnx

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


def _resize(cfg: DetectorConfig, family: str) -> Preprocess:
    """The family's preprocessing, with ``detector.resize`` applied when it is not "auto"."""
    pre = PREPROCESS[family]
    return pre if cfg.resize == "auto" else replace(pre, resize=cfg.resize)


def build_darknet_detector(
    cfg_path: Path, weights_path: Path, names_path: Path | None, cfg: DetectorConfig, name: str
) -> YoloDetector:
    module = load_darknet(cfg_path, weights_path)
    labels = read_names(names_path) if names_path else default_labels(module.num_classes or 0)
    if len(labels) != module.num_classes:
        raise ModelError(f"{names_path}: {len(labels)} names for a model with {module.num_classes} classes")
    size = cfg.input_size
    engine = create_engine(
        module,
        backend=cfg.backend,
        device=cfg.device,
        input_shape=(1, 3, size, size),
        threads=cfg.threads,
        fp16=cfg.device.startswith("cuda") and cfg.backend != "onnxruntime",
        name=name,
    )
    return YoloDetector(
        engine,
        "v5",
        size,
        labels,
        _resize(cfg, "darknet"),
        cfg.score_threshold,
        cfg.nms_iou,
        cfg.classes,
        name,
    )


def build_onnx_detector(path: Path, cfg: DetectorConfig) -> YoloDetector:
    path = path.expanduser()
    if not path.is_file():
        raise ModelError(f"detector.model: ONNX file {path} not found")
    if cfg.backend == "torch":
        raise ModelError(
            f"detector.backend: 'torch' cannot run ONNX file {path}; use onnxruntime or tensorrt"
        )
    engine = create_engine(path, backend=cfg.backend, device=cfg.device, threads=cfg.threads)
    size = cfg.input_size
    shape = engine.input_shape() if hasattr(engine, "input_shape") else None
    if shape and len(shape) == 4 and all(isinstance(d, int) for d in shape[2:]):
        if shape[2] != shape[3]:
            raise ModelError(f"{path}: non-square input {shape[2]}x{shape[3]} is not supported")
        if shape[2] != size:
            log.info(
                "%s: using the model's fixed input size %d (detector.input_size=%d)", path, shape[2], size
            )
            size = int(shape[2])
    probe = engine.run({engine.input_names[0]: np.zeros((1, 3, size, size), np.float32)})
    out_shape = probe[engine.output_names[0]].shape
    try:
        layout: Layout = detect_layout(out_shape, (size, size)) if cfg.layout == "auto" else cfg.layout
    except ValueError as exc:
        raise ModelError(f"{path}: {exc}") from None
    num_classes = out_shape[1] - 4 if layout == "v8" else out_shape[2] - 5
    batch_limit = shape[0] if shape and isinstance(shape[0], int) and shape[0] > 0 else None
    return YoloDetector(
        engine,
        layout,
        size,
        default_labels(num_classes),
        _resize(cfg, layout),
        cfg.score_threshold,
        cfg.nms_iou,
        cfg.classes,
        path.stem,
        batch_limit=batch_limit,
    )
