"""Family ``ssd``: SSDlite-MobileNetV2 from a TensorFlow Object Detection API frozen graph (.pb).

Config keys used: model (a model-store name or a .pb path), backend, device, threads, resize (auto =
stretch, as the graph itself resizes), score_threshold, classes. The input is 300x300 whatever
detector.input_size says, and per-class NMS uses the graph's own IoU (detector.nms_iou is for YOLO).
"""

from __future__ import annotations

import logging
from pathlib import Path

from engines import create_engine
from engines.model_store import ModelStoreError, get_model_files
from pipeline.config.schema import DetectorConfig
from pipeline.detect.detectors.ssd import SsdDetector
from pipeline.detect.detectors.yolo_decode import COCO_CLASSES, canonical_label
from pipeline.models.errors import ModelError

log = logging.getLogger(__name__)


def _graph_path(model: str) -> tuple[Path, str]:
    if model.lower().endswith(".pb"):
        path = Path(model).expanduser()
        if not path.is_file():
            raise ModelError(f"detector.model: TensorFlow graph {path} not found")
        return path, path.stem
    try:
        files = get_model_files(model)
    except ModelStoreError as exc:
        raise ModelError(f"detector.model: {exc}") from None
    if "graph" not in files:
        raise ModelError(f"detector.model: {model!r} has no TensorFlow graph (detector.family ssd)")
    return files["graph"], model


def labels_for(num_classes: int) -> list[str]:
    """Class names of a TF OD API model: one class is the person detector; 90 are the COCO category ids
    1..90 (ids COCO never used get ``coco_id_N``)."""
    if num_classes == 1:
        return ["person"]
    if num_classes == 90:
        used = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
        names = {cid: COCO_CLASSES[k] for k, cid in enumerate(used)}
        return [names.get(i, f"coco_id_{i}") for i in range(1, 91)]
    return [f"class_{i}" for i in range(num_classes)]


def build(cfg: DetectorConfig) -> SsdDetector:
    from pipeline.models.ssdlite import INPUT_SIZE, SSDLite

    path, name = _graph_path(cfg.model)
    module = SSDLite(path)
    if cfg.input_size != 416 and cfg.input_size != INPUT_SIZE:  # 416 is the config default
        log.info(
            "detector %s: SSDlite runs at %d; detector.input_size %d does not apply",
            name,
            INPUT_SIZE,
            cfg.input_size,
        )
    resize = "stretch" if cfg.resize == "auto" else cfg.resize
    log.info(
        "detector %s: preprocessing %s to %dx%d (TF1 bilinear), RGB, x*2/255-1 from %s",
        name,
        resize,
        INPUT_SIZE,
        INPUT_SIZE,
        "the graph's own preprocessor" if cfg.resize == "auto" else "detector.resize",
    )
    engine = create_engine(
        module,
        backend=cfg.backend,
        device=cfg.device,
        input_shape=(1, 3, INPUT_SIZE, INPUT_SIZE),
        threads=cfg.threads,
        fp16=cfg.fp16,
        name=name,
        output_names=("boxes", "scores"),
    )
    labels = labels_for(module.num_classes)
    return SsdDetector(
        engine,
        labels=labels,
        input_size=INPUT_SIZE,
        resize=resize,
        score_threshold=cfg.score_threshold,
        nms_iou=module.nms_iou,
        classes=_classes_for(cfg.classes, labels, name),
        name=name,
    )


def _classes_for(classes: list[str] | None, labels: list[str], name: str) -> list[str] | None:
    """``detector.classes`` for a model that detects fewer classes than COCO (the packaged SSDlite: person).

    COCO names this model does not detect (the default list's vehicles) are dropped with a warning, so
    ``--model ssdlite-mobilenetv2-coco`` runs with the default config; names that are not COCO classes at
    all are left in, and the detector reports them as an error naming detector.classes.
    """
    if classes is None:
        return None
    coco = set(COCO_CLASSES)
    absent = [c for c in classes if canonical_label(c) in coco and canonical_label(c) not in labels]
    if not absent:
        return classes
    kept = [c for c in classes if c not in absent]
    if not kept:
        raise ModelError(
            f"detector.classes: model {name} detects only {', '.join(labels)}, none of {', '.join(classes)}"
        )
    log.warning(
        "detector %s detects only %s: detector.classes %s ignored", name, ", ".join(labels), ", ".join(absent)
    )
    return kept
