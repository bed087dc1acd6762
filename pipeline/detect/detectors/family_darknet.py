"""Family ``darknet``: YOLO from a Darknet ``.cfg`` + ``.weights`` (a path, or a model-store name).

Config keys used: model, backend, device, input_size, threads, resize, score_threshold, nms_iou, classes.

On ``backend: onnxruntime`` the network runs from its ONNX export, cached by the sha256 of the cfg and
weights bytes and the export settings (engines/onnx_cache.py). A start that finds a verified export loads it
straight into ONNX Runtime and never imports torch (1.5-2 s of a 2-core machine's start-up); only a miss
(first run, a changed cfg or weights file, another input size, a new torch or importer, a damaged file)
reads the Darknet files into PyTorch (pipeline/models/darknet.py) and exports again. The torch and TensorRT
backends build the PyTorch module as before.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from engines import create_engine, onnx_cache
from engines.base import InferenceEngine
from engines.model_store import ModelStoreError, get_model_files
from engines.onnx_engine import OnnxRuntimeEngine
from pipeline.config.schema import DetectorConfig
from pipeline.detect.detectors.yolo import (
    PREPROCESS_KEY,
    YoloDetector,
    default_labels,
    preprocess_for,
    read_names,
)
from pipeline.models.darknet_cfg import yolo_classes
from pipeline.models.errors import ModelError

log = logging.getLogger(__name__)

#: the graph's tensor names (engines/__init__.py create_engine's defaults)
INPUT_NAMES = ("images",)
OUTPUT_NAMES = ("output",)
#: the modules that turn cfg + weights into the exported graph: their source is part of the cache key
IMPORTER_MODULES = ("pipeline.models.darknet_cfg", "pipeline.models.darknet")


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
    size = cfg.input_size
    input_shape = (1, 3, size, size)
    metadata = {PREPROCESS_KEY: "darknet"}  # the exported .onnx keeps its stretch preprocessing
    engine: InferenceEngine
    if cfg.backend == "onnxruntime":
        engine, num_classes = _onnxruntime_engine(cfg_path, weights_path, cfg, name, input_shape, metadata)
    else:
        from pipeline.models.darknet import load_darknet  # torch: imported only when a module is needed

        module = load_darknet(cfg_path, weights_path)
        if module.num_classes is None:
            raise ModelError(f"{cfg_path}: no [yolo] layer, so not a detector")
        num_classes = module.num_classes
        engine = create_engine(
            module,
            backend=cfg.backend,
            device=cfg.device,
            input_shape=input_shape,
            threads=cfg.threads,
            fp16=cfg.fp16,
            name=name,
            metadata=metadata,
        )
    labels = read_names(names_path) if names_path else default_labels(num_classes)
    if len(labels) != num_classes:
        engine.close()
        raise ModelError(f"{names_path}: {len(labels)} names for a model with {num_classes} classes")
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


def export_key(
    cfg_path: Path, weights_path: Path, input_shape: tuple[int, ...], metadata: dict[str, str]
) -> str:
    """The cache key of a Darknet model's ONNX export: cfg and weights bytes, export settings, exporter."""
    settings = {
        "format": "darknet",
        "input_shape": list(input_shape),
        "opset": onnx_cache.DEFAULT_OPSET,
        "input_names": list(INPUT_NAMES),
        "output_names": list(OUTPUT_NAMES),
        "dynamic_axes": "batch",
        "metadata": metadata,
        "exporter": onnx_cache.exporter_fingerprint(IMPORTER_MODULES),
    }
    return onnx_cache.source_key([cfg_path, weights_path], settings)


def _onnxruntime_engine(
    cfg_path: Path,
    weights_path: Path,
    cfg: DetectorConfig,
    name: str,
    input_shape: tuple[int, ...],
    metadata: dict[str, str],
) -> tuple[InferenceEngine, int]:
    """The ONNX Runtime engine of the cached export (exported first on a miss) and the class count (read
    from the cfg without torch: pipeline/models/darknet_cfg.py)."""

    def export(path: Path) -> None:
        from engines.export import export_onnx
        from pipeline.models.darknet import load_darknet  # torch: only on a cache miss

        t0 = time.perf_counter()
        module = load_darknet(cfg_path, weights_path)
        if module.num_classes is None:
            raise ModelError(f"{cfg_path}: no [yolo] layer, so not a detector")
        export_onnx(
            module,
            input_shape,
            path=path,
            name=name,
            input_names=INPUT_NAMES,
            output_names=OUTPUT_NAMES,
            metadata=metadata,
        )
        log.info(
            "detector %s: exported %s + %s to %s in %.1f s",
            name,
            cfg_path.name,
            weights_path.name,
            path,
            time.perf_counter() - t0,
        )

    onnx_path = onnx_cache.cached_export(
        name, export_key(cfg_path, weights_path, input_shape, metadata), export
    )
    classes = yolo_classes(cfg_path)  # the export succeeded, so the cfg's [yolo] layers agree
    if classes is None:
        raise ModelError(f"{cfg_path}: no [yolo] layer, so not a detector")
    return OnnxRuntimeEngine(onnx_path, threads=cfg.threads, device=cfg.device), classes
