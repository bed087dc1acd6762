"""evaluate subcommand: run a detector over COCO-annotated images and print COCO mAP and VOC AP.

    python run_pipeline.py evaluate --annotations instances.json --images DIR [--model yolov3-tiny]
        [--backend onnxruntime|torch|tensorrt] [--precision fp32|int8] [--preprocess auto|letterbox|stretch]
        [--tiles PX] [--classes person,vehicle] [--limit N] [--output dets.json]
    python run_pipeline.py evaluate --annotations instances.json --detections dets.json   (score a results file)

The numbers are pycocotools' (same algorithm, checked to agree); ``--classes`` evaluates only those
categories (names as in the annotations or darknet spellings; ``vehicle`` = bicycle, car, motorcycle, bus,
truck). Detections are kept down to ``--score-threshold`` (default 0.001, as mAP is meant to be measured).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from pipeline.detect.evaluation import (
    EvaluationError,
    category_ids_for,
    evaluate_coco,
    evaluate_voc,
    format_coco_table,
    label_to_category_id,
    load_coco,
)

if TYPE_CHECKING:
    from pipeline.detect.detectors.base import Detector
    from pipeline.detect.regions.planner import RegionPlanner


class _ShowDefaults(argparse.HelpFormatter):
    """Append "(default: X)" to every option that has a default other than None."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.option_strings and action.default not in (None, argparse.SUPPRESS, False):
            text += " (default: %(default)s)"
        return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = _ShowDefaults  # --help shows every default
    parser.add_argument("--annotations", required=True, help="COCO instances JSON")
    parser.add_argument("--images", help="folder with the images named in the annotations")
    parser.add_argument("--detections", help="score this COCO results JSON instead of running a detector")
    parser.add_argument(
        "--model",
        default="yolox-nano",
        help="model-store name, .cfg, .onnx or .pb path",
    )
    parser.add_argument(
        "--family",
        default="auto",
        help="detector family (darknet, onnx-yolo, ssd, mtcnn, none); auto = inferred from --model",
    )
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "int8"],
        help="int8 = static int8 quantization on ONNX Runtime (YOLO families)",
    )
    parser.add_argument(
        "--calibration-images",
        default=None,
        help="int8: folder or video to calibrate on; unset = a built-in set",
    )
    parser.add_argument(
        "--preprocess",
        default="auto",
        choices=["auto", "letterbox", "stretch"],
        help="resize mode; auto = what the model family was trained with (printed with the results)",
    )
    parser.add_argument(
        "--backend",
        default="onnxruntime",
        choices=["onnxruntime", "torch", "tensorrt"],
        help="inference backend",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument(
        "--input-size",
        type=int,
        default=416,
        help="network input (YOLO; a fixed-size ONNX or SSD uses its own)",
    )
    parser.add_argument(
        "--score-threshold", type=float, default=0.001, help="keep detections down to this score"
    )
    parser.add_argument("--nms-iou", type=float, default=0.45, help="YOLO NMS IoU (SSD uses its graph's)")
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads; unset = the backend's default"
    )
    parser.add_argument(
        "--tiles",
        type=int,
        default=0,
        help="run overlapping tiles of this many pixels plus the whole image, as cameras[].detect.tiling "
        "does (0 = the whole image only)",
    )
    parser.add_argument(
        "--tile-overlap", type=float, default=0.25, help="with --tiles: overlap of neighbours"
    )
    parser.add_argument("--classes", help="comma-separated class names to evaluate; unset = all")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images (by image id)")
    parser.add_argument("--output", help="write the detections here (COCO results JSON)")


def _fail(msg: str) -> int:
    print(f"evaluate: {msg}", file=sys.stderr)
    return 2


def main(args: argparse.Namespace) -> int:
    try:
        gt = load_coco(args.annotations)
        cat_ids = (
            category_ids_for(gt, [c for c in args.classes.split(",") if c.strip()]) if args.classes else None
        )
    except EvaluationError as exc:
        return _fail(str(exc))
    images = sorted(gt["images"], key=lambda im: int(im["id"]))
    if args.limit is not None:
        if args.limit < 1:
            return _fail(f"--limit must be >= 1, got {args.limit}")
        images = images[: args.limit]
    image_ids = [int(im["id"]) for im in images]

    t_model = 0.0
    covered: set[int] | None = None  # categories the model can output (None: unknown, --detections)
    if args.detections:
        try:
            detections = json.loads(Path(args.detections).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            return _fail(f"--detections {args.detections}: {exc}")
        if not isinstance(detections, list):
            return _fail(f"--detections {args.detections}: expected a JSON list of results")
        wanted = set(image_ids)
        detections = [d for d in detections if isinstance(d, dict) and int(d.get("image_id", -1)) in wanted]
        model_name = Path(args.detections).name
    else:
        if not args.images:
            return _fail("--images DIR is required unless --detections is given")
        folder = Path(args.images)
        if not folder.is_dir():
            return _fail(f"--images {folder} is not a folder")
        missing = [im["file_name"] for im in images if not (folder / im["file_name"]).is_file()]
        if missing:
            return _fail(
                f"{len(missing)} image(s) named in {args.annotations} are not in {folder}: {missing[:5]}"
            )
        try:
            detections, t_model, preprocessing, covered = _run_detector(args, gt, images, folder)
        except EvaluationError as exc:
            return _fail(str(exc))
        model_name = f"{args.model} ({args.precision}, preprocessing: {preprocessing})"
        if args.tiles:
            model_name += f", tiles {args.tiles} px (overlap {args.tile_overlap}) + whole image"

    if args.output:
        Path(args.output).write_text(json.dumps(detections))
    try:
        result = evaluate_coco(gt, detections, category_ids=cat_ids, image_ids=image_ids)
        voc = evaluate_voc(
            {**gt, "annotations": [a for a in gt["annotations"] if int(a["image_id"]) in set(image_ids)]},
            detections,
            category_ids=result.category_ids,
        )
    except EvaluationError as exc:
        return _fail(str(exc))
    print(f"## {model_name} on {len(images)} images of {Path(args.annotations).name}")
    note = _coverage_note(args.model, gt, result.category_ids, image_ids, covered)
    if note:
        print(note)
        print(f"evaluate: {note}", file=sys.stderr)
    if t_model:
        print(
            f"detector time: {1000 * t_model / max(1, len(images)):.1f} ms/image ({len(detections)} detections)"
        )
    print()
    print(format_coco_table(result, voc))
    return 0


def _coverage_note(
    model: str, gt: dict, scored: list[int], image_ids: list[int], covered: set[int] | None
) -> str | None:
    """A warning when categories being scored have ground truth but no class of the model (e.g. the
    person-only SSDlite scored on all 80 COCO categories): they score AP 0 and pull the mean down."""
    if covered is None:
        return None
    ids = set(image_ids)
    boxes: dict[int, int] = {}
    for a in gt["annotations"]:
        if int(a["image_id"]) in ids and not a.get("iscrowd"):
            boxes[int(a["category_id"])] = boxes.get(int(a["category_id"]), 0) + 1
    missing = [c for c in scored if c not in covered and boxes.get(c)]
    if not missing:
        return None
    names = {int(c["id"]): c["name"] for c in gt["categories"]}
    known = sorted(names[c] for c in scored if c in covered)
    with_gt = sum(1 for c in scored if boxes.get(c))
    listed = ", ".join(names[c] for c in missing[:8]) + (", ..." if len(missing) > 8 else "")
    hint = f"--classes {','.join(known)}" if known else "a model with these classes"
    return (
        f"note: model {model} has no class for {len(missing)} of the {with_gt} categories scored here "
        f"({listed}; {sum(boxes[c] for c in missing)} ground-truth boxes): they score AP 0 and pull the "
        f"mean down; use {hint} to score only what it detects"
    )


def _tile_planner(args: argparse.Namespace, detector: Detector) -> RegionPlanner | None:
    """With ``--tiles``: the tiling planner the pipeline would use for a camera (pipeline/detect/regions/)."""
    if not args.tiles:
        return None
    from pipeline.config.regions import CameraDetectConfig
    from pipeline.detect.regions.planner import RegionPlanner, detector_input_size

    try:
        cfg = CameraDetectConfig.model_validate(
            {"tiling": {"enabled": True, "size": args.tiles, "overlap": args.tile_overlap}}
        )
    except ValueError as exc:
        raise EvaluationError(f"--tiles/--tile-overlap: {exc}") from None
    return RegionPlanner(cfg, detector_input_size(detector), getattr(detector, "nms_iou", args.nms_iou))


def _run_detector(
    args: argparse.Namespace, gt: dict, images: list[dict], folder: Path
) -> tuple[list[dict], float, str, set[int]]:
    """(COCO results, seconds in ``detect``, the detector's preprocessing as it describes it, the
    annotation categories the model's classes map to)."""
    from pipeline.config.schema import DetectorConfig
    from pipeline.detect.detectors.factory import build_detector

    try:
        cfg = DetectorConfig(
            model=args.model,
            backend=args.backend,
            device=args.device,
            input_size=args.input_size,
            score_threshold=args.score_threshold,
            nms_iou=args.nms_iou,
            classes=None,  # keep every class; the category filter applies at scoring time
            threads=args.threads,
            family=args.family,
            precision=args.precision,
            calibration_images=args.calibration_images,
            resize=args.preprocess,
        )
    except ValueError as exc:
        raise EvaluationError(f"detector options: {exc}") from None
    try:
        detector = build_detector(cfg)
    except Exception as exc:  # noqa: BLE001 - any build failure is reported with the model named
        raise EvaluationError(f"cannot build detector {args.model!r}: {exc}") from None
    detections: list[dict] = []
    elapsed = 0.0
    try:
        planner = _tile_planner(args, detector)
        cat_of = label_to_category_id(gt, list(detector.labels))
        for im in images:
            path = folder / im["file_name"]
            img = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if img is None:
                raise EvaluationError(f"cannot decode image {path}")
            t0 = time.perf_counter()
            det = detector.detect([img])[0] if planner is None else planner.detect(detector, img)[0]
            elapsed += time.perf_counter() - t0
            for box, score, cls in zip(det.boxes, det.scores, det.class_ids.tolist(), strict=True):
                cat = cat_of[cls] if 0 <= cls < len(cat_of) else None
                if cat is None:
                    continue
                x1, y1, x2, y2 = (float(v) for v in np.asarray(box, float))
                detections.append(
                    {
                        "image_id": int(im["id"]),
                        "category_id": int(cat),
                        "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                        "score": round(float(score), 5),
                    }
                )
    finally:
        detector.close()
    return detections, elapsed, detector.preprocessing(), {int(c) for c in cat_of if c is not None}
