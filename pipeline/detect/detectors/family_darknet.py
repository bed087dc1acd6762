"""Family ``darknet``: YOLO from a Darknet ``.cfg`` + ``.weights`` (a path, or a model-store name).

Config keys used: model, backend, device, input_size, threads, resize, score_threshold, nms_iou, classes.
"""

from __future__ import annotations

from pathlib import Path

from engines import create_engine
from engines.model_store import ModelStoreError, get_model_files
from pipeline.config.schema import DetectorConfig
from pipeline.detect.detectors.yolo import (
    PREPROCESS_KEY,
    YoloDetector,
    default_labels,
    preprocess_for,
    read_names,
)
from pipeline.models.errors import ModelError


def build(cfg: DetectorConfig) -> YoloDetector:
    model = cfg.model
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
        files = get_model_files(model)
    except ModelStoreError as exc:
        raise ModelError(f"detector.model: {exc}") from None
    if "cfg" not in files or "weights" not in files:
        raise ModelError(f"detector.model: {model!r} has no Darknet cfg + weights (detector.family darknet)")
    return build_darknet_detector(files["cfg"], files["weights"], files.get("names"), cfg, model)


def build_darknet_detector(
    cfg_path: Path, weights_path: Path, names_path: Path | None, cfg: DetectorConfig, name: str
) -> YoloDetector:
    from pipeline.models.darknet import load_darknet  # torch: imported only when a Darknet model is built

    module = load_darknet(cfg_path, weights_path)
    if module.num_classes is None:
        raise ModelError(f"{cfg_path}: no [yolo] layer, so not a detector")
    labels = read_names(names_path) if names_path else default_labels(module.num_classes)
    if len(labels) != module.num_classes:
        raise ModelError(f"{names_path}: {len(labels)} names for a model with {module.num_classes} classes")
    size = cfg.input_size
    engine = create_engine(
        module,
        backend=cfg.backend,
        device=cfg.device,
        input_shape=(1, 3, size, size),
        threads=cfg.threads,
        fp16=cfg.fp16,
        name=name,
        metadata={PREPROCESS_KEY: "darknet"},  # the exported .onnx keeps its stretch preprocessing
    )
    return YoloDetector(
        engine,
        layout="v5",
        input_size=size,
        labels=labels,
        preprocess=preprocess_for(cfg.resize, "darknet", name),
        score_threshold=cfg.score_threshold,
        nms_iou=cfg.nms_iou,
        classes=cfg.classes,
        name=name,
    )
