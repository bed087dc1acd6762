"""Labelled video at native resolution: recall, AP@0.5 and CPU cost per frame of full-frame detection,
motion-gated regions and tiles, per model and preprocessing (pipeline/detect/regions/).

Data (../shared/data/tracks, see its MANIFEST.md):
- MOT17-04-FRCNN: 8 consecutive 1920x1080 frames of a square seen from high up. Counted: people at least
  half visible (MOT ``visibility`` >= 0.5; 201 boxes). People less visible are *ignored* (turned into
  crowd regions: a detection on them counts neither way), so AP does not punish finding them.
- UA-DETRAC MVI_20011: 9 frames 960x540, boxes on frames 1-2 only (5 cars); its ignored regions are crowd
  regions of every class. Frames 3-9 still run (in order) so motion state is as on a camera, unscored.

Frames run in order through one RegionPlanner per setting, as the detect stage runs them (the first frame
is a full scan; motion needs a background). The detector runs at ``--low-score`` so AP sees the whole
precision/recall curve; recall is counted at ``--score`` (the configured threshold, default 0.25), and the
planner only remembers objects at that score, as it would at run time. CPU cost is wall time per frame of
plan + detector + merge, single-threaded ONNX Runtime, median of ``--repeat`` passes.

Run: .venv/bin/python benchmarks/eval_regions.py [--models yolov3-tiny,yolox-nano] [--repeat 1]
Prints markdown for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config.regions import CameraDetectConfig  # noqa: E402
from pipeline.config.schema import DetectorConfig  # noqa: E402
from pipeline.detect.detectors.factory import build_detector  # noqa: E402
from pipeline.detect.evaluation import evaluate_coco, label_to_category_id  # noqa: E402
from pipeline.detect.regions.planner import RegionPlanner, detector_input_size  # noqa: E402


def _shared_data() -> Path:
    """../shared/data beside the clone (or beside a parent folder: git worktrees), else /work/shared/data."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "shared" / "data" / "MANIFEST.md").is_file():
            return parent / "shared" / "data"
    return Path("/work/shared/data")


DATA = _shared_data()
MODELS = {
    "yolov3-tiny": "yolov3-tiny",
    "yolox-nano": str(DATA / "weights" / "yolox_nano.onnx"),
    "ssdlite": "ssdlite-mobilenetv2-coco",
}

#: name -> cameras[].detect settings (sizes None = the detector input, i.e. native-resolution crops)
SETTINGS: dict[str, dict] = {
    "full": {},
    "regions": {"regions": {"enabled": True}},
    "tiles": {"tiling": {"enabled": True}},
    "tiles640": {"tiling": {"enabled": True, "size": 640}},
    "regions+tiles": {"regions": {"enabled": True, "max_regions": 24}, "tiling": {"enabled": True}},
    "regions+tiles640": {"regions": {"enabled": True}, "tiling": {"enabled": True, "size": 640}},
}


@dataclass
class Sequence:
    name: str
    gt: dict  # COCO dict with hard cases turned into crowd (ignored) regions
    frames: list[tuple[int, Path, bool]]  # image id, file, scored


def load_mot17(root: Path) -> Sequence:
    gt = json.loads((root / "instances.json").read_text())
    for ann in gt["annotations"]:
        if float(ann.get("visibility", 1.0)) < 0.5:
            ann["iscrowd"] = 1
    frames = [
        (int(im["id"]), root / im["file_name"], True) for im in sorted(gt["images"], key=lambda i: i["frame"])
    ]
    return Sequence("MOT17-04 (1920x1080, 8 frames)", gt, frames)


def load_detrac(root: Path) -> Sequence:
    gt = json.loads((root / "instances.json").read_text())
    next_id = max(a["id"] for a in gt["annotations"]) + 1
    scored = [im for im in gt["images"] if im.get("annotated")]
    for im in scored:
        for cat in gt["categories"]:
            for x, y, w, h in gt.get("ignored_regions", []):
                gt["annotations"].append(
                    {"id": next_id, "image_id": im["id"], "category_id": cat["id"], "bbox": [x, y, w, h],
                     "area": w * h, "iscrowd": 1}
                )  # fmt: skip
                next_id += 1
    frames = [
        (int(im["id"]), root / im["file_name"], bool(im.get("annotated")))
        for im in sorted(gt["images"], key=lambda i: i["frame"])
    ]
    return Sequence("UA-DETRAC MVI_20011 (960x540, 2 scored frames)", gt, frames)


def run_setting(detector, setting: dict, seq: Sequence, images: list[np.ndarray], score: float):
    """Detections (COCO result rows), per-frame ms, crops per frame, for one ordered pass."""
    size = detector_input_size(detector)
    planner = RegionPlanner(
        CameraDetectConfig.model_validate(setting), size, detector.nms_iou, object_score=score
    )
    cat_of = label_to_category_id(seq.gt, detector.labels)
    rows: list[dict] = []
    ms: list[float] = []
    crops: list[int] = []
    for (img_id, _, scored), image in zip(seq.frames, images, strict=True):
        t0 = time.perf_counter()
        dets, info = planner.detect(detector, image)
        ms.append((time.perf_counter() - t0) * 1000.0)
        crops.append(info.crops)
        if not scored:
            continue
        for box, s, c in zip(dets.boxes, dets.scores, dets.class_ids, strict=True):
            cid = cat_of[int(c)]
            if cid is None:
                continue
            x1, y1, x2, y2 = (float(v) for v in box)
            rows.append(
                {
                    "image_id": img_id,
                    "category_id": cid,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(s),
                }
            )
    return rows, ms, crops


def scores_for(seq: Sequence, rows: list[dict], score: float) -> dict[str, tuple[float, float, int, int]]:
    """class -> (recall at IoU .5 for detections >= score, AP@.5, GT count, found)."""
    ids = [i for i, _, s in seq.frames if s]
    present = {
        a["category_id"] for a in seq.gt["annotations"] if not a.get("iscrowd") and a["image_id"] in ids
    }
    full = evaluate_coco(seq.gt, rows, category_ids=sorted(present), image_ids=ids)
    sure = evaluate_coco(
        seq.gt, [r for r in rows if r["score"] >= score], category_ids=sorted(present), image_ids=ids
    )
    out = {}
    names = {c["id"]: c["name"] for c in seq.gt["categories"]}
    for k, cat in enumerate(sure.category_ids):
        name = names[cat]
        n_gt = int(full.per_class[name]["gt"])
        rec = float(sure.recall[0, k, 0, -1]) if sure.recall is not None else 0.0
        out[name] = (max(rec, 0.0), full.per_class[name]["AP50"], n_gt, round(max(rec, 0.0) * n_gt))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="yolov3-tiny,yolox-nano")
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--resize", default="letterbox,stretch", help="preprocessing modes to compare")
    ap.add_argument("--score", type=float, default=0.25, help="the configured score threshold (recall)")
    ap.add_argument("--low-score", type=float, default=0.01, help="detector threshold for AP")
    ap.add_argument("--repeat", type=int, default=1, help="timed passes per setting (median)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    seqs = [
        load_mot17(DATA / "tracks" / "MOT17-04-FRCNN"),
        load_detrac(DATA / "tracks" / "UA-DETRAC_MVI_20011"),
    ]
    images = {s.name: [cv2.imread(str(p)) for _, p, _ in s.frames] for s in seqs}
    print(f"machine: {platform.node()} {platform.machine()}, shared 2-core CPU, ONNX Runtime {args.threads} thread(s); "
          f"recall at score >= {args.score}, AP@.5 from detections >= {args.low_score}")  # fmt: skip
    print()
    print(
        "| sequence | model | resize | setting | class | GT | recall@.5 | found | AP@.5 | ms/frame | x full | crops/frame |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        for resize in args.resize.split(","):
            cfg = DetectorConfig(model=MODELS.get(model, model), score_threshold=args.low_score, classes=None,
                                 threads=args.threads, resize=resize)  # fmt: skip
            detector = build_detector(cfg)
            for seq in seqs:
                base_ms: float | None = None
                for name in args.settings.split(","):
                    runs = [run_setting(detector, SETTINGS[name], seq, images[seq.name], args.score)
                            for _ in range(args.repeat)]  # fmt: skip
                    rows, _, crops = runs[0]
                    ms = statistics.median(statistics.mean(r[1]) for r in runs)
                    if name == "full":
                        base_ms = ms
                    ratio = f"{ms / base_ms:.2f}" if base_ms else "-"
                    for cls, (rec, ap50, n_gt, found) in scores_for(seq, rows, args.score).items():
                        print(f"| {seq.name} | {model} | {resize} | {name} | {cls} | {n_gt} | {rec:.3f} | {found} | "
                              f"{ap50:.3f} | {ms:.0f} | {ratio} | {statistics.mean(crops):.1f} |", flush=True)  # fmt: skip
            detector.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
