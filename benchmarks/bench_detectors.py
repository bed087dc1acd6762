"""Detector speed per backend and COCO mAP on /work/shared/data/coco_subset; prints markdown tables.

Speed: YOLOv3-tiny at 416x416, batch 1, on real video frames (videos/vtest.mp4): our torch and
ONNX Runtime engines (network only, and the full detect() call: resize + decode + NMS) beside
OpenCV DNN's Darknet reader running the same cfg/weights, and YOLOX-Nano through ONNX Runtime.
mAP: pycocotools COCOeval, all 80 classes and person+vehicle classes only.
int8 (engines/quantize.py, static ONNX Runtime quantization) rows beside fp32: speed, and mAP per
quantization setting. The int8 models are calibrated on frames of shared/data/videos/*.mp4 plus
scikit-image's photos, never on the COCO images they are scored on.

    .venv/bin/python benchmarks/bench_detectors.py [--frames 40] [--threads 2] [--no-map]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import statistics
import time
from pathlib import Path

import cv2
import numpy as np

from engines.export import export_onnx
from engines.model_store import get_model_files
from engines.onnx_engine import OnnxRuntimeEngine
from engines.quantize import QuantSettings, load_calibration_images, quantize_onnx
from engines.torch_engine import TorchEngine
from pipeline.config.schema import DetectorConfig
from pipeline.detect.detectors.factory import build_detector
from pipeline.detect.detectors.yolo import PREPROCESS, YoloDetector, default_labels
from pipeline.ingest.demo_media import builtin_calibration_images
from pipeline.models.darknet import load_darknet

DATA = Path("/work/shared/data")
VEHICLES = ["person", "bicycle", "car", "motorcycle", "bus", "truck"]


def video_frames(n: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(DATA / "videos" / "vtest.mp4"))
    frames = []
    while len(frames) < n:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    if not frames:
        raise SystemExit(f"no frames from {DATA / 'videos/vtest.mp4'}")
    return frames


def bench_calibration_images(per_video: int = 6) -> list[np.ndarray]:
    """skimage's photos (the built-in set without its demo frames) + frames of every shared .mp4 clip."""
    photos = [im for im in builtin_calibration_images(64) if im.shape[:2] != (360, 640)]
    frames = [
        f for v in sorted((DATA / "videos").glob("*.mp4")) for f in load_calibration_images(v, per_video)
    ]
    return photos + frames


def int8_model(fp32_onnx: Path, prepare, settings: QuantSettings | None = None) -> Path:
    """The int8 model for ``settings``, calibrated on bench_calibration_images through ``prepare``."""
    blobs = [prepare([img])[0] for img in bench_calibration_images()]
    return quantize_onnx(fp32_onnx, blobs, settings or QuantSettings())


def time_rounds(contenders: dict, rounds: int = 3, warmup: int = 3) -> dict[str, tuple[float, float, float]]:
    """contenders: label -> (fn, items). Each round runs every contender over all its items in turn
    (a block per contender, so one runtime's spinning thread pool does not slow the next call of
    another), and the rounds spread load changes on a shared machine over all contenders.
    Returns label -> (min, median, p90 ms) over all timed calls; on a loaded machine the minimum is
    the best estimate of the uncontended speed."""
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(rounds):
        for label, (fn, items) in contenders.items():
            for x in items[:warmup]:
                fn(x)
            for x in items:
                t = time.perf_counter()
                fn(x)
                times[label].append((time.perf_counter() - t) * 1000)
    return {k: (min(v), statistics.median(v), float(np.percentile(v, 90))) for k, v in times.items()}


class OpenCVDarknet:
    """OpenCV DNN on the same cfg/weights: blobFromImage (plain resize), forward, argmax + NMSBoxesBatched."""

    def __init__(self, cfg: Path, weights: Path, size: int = 416) -> None:
        self.net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
        self.names = self.net.getUnconnectedOutLayersNames()
        self.size = size

    def forward(self, blob: np.ndarray) -> np.ndarray:
        self.net.setInput(blob)
        return np.concatenate(self.net.forward(self.names), 0)

    def detect(self, img: np.ndarray, thr: float, nms_iou: float = 0.45):
        h, w = img.shape[:2]
        rows = self.forward(cv2.dnn.blobFromImage(img, 1 / 255.0, (self.size,) * 2, swapRB=True, crop=False))
        cls = rows[:, 5:].argmax(1)
        score = rows[np.arange(len(rows)), 5 + cls]
        keep = score >= thr
        rows, cls, score = rows[keep], cls[keep], score[keep]
        boxes = [[(x - bw / 2) * w, (y - bh / 2) * h, bw * w, bh * h] for x, y, bw, bh in rows[:, :4]]
        idx = np.asarray(cv2.dnn.NMSBoxesBatched(boxes, score.tolist(), cls.tolist(), thr, nms_iou), int)
        idx = idx.reshape(-1)
        return [(boxes[i], float(score[i]), int(cls[i])) for i in idx]


def speed(args) -> list[tuple[str, str, float, float, float]]:
    frames = video_frames(args.frames)
    files = get_model_files("yolov3-tiny")
    model = load_darknet(files["cfg"], files["weights"])
    onnx_path = export_onnx(model, (1, 3, 416, 416), name="yolov3-tiny")
    labels = default_labels(80)
    n = args.threads
    engines = {
        f"ours: torch NCHW, {n} thr": TorchEngine(copy.deepcopy(model), threads=n, channels_last=False),
        f"ours: torch channels_last (default), {n} thr": TorchEngine(copy.deepcopy(model), threads=n),
        "ours: torch channels_last, 1 thr": TorchEngine(copy.deepcopy(model), threads=1),
        f"ours: onnxruntime, {n} thr": OnnxRuntimeEngine(onnx_path, threads=n),
        "ours: onnxruntime, 1 thr": OnnxRuntimeEngine(onnx_path, threads=1),
    }
    probe = YoloDetector(engines["ours: onnxruntime, 1 thr"], "v5", 416, labels, PREPROCESS["darknet"])
    q8 = int8_model(onnx_path, probe.prepare)
    engines[f"ours: onnxruntime int8, {n} thr"] = OnnxRuntimeEngine(q8, threads=n)
    engines["ours: onnxruntime int8, 1 thr"] = OnnxRuntimeEngine(q8, threads=1)
    blobs = [probe.prepare([f])[0] for f in frames]
    net_c: dict = {}
    e2e_c: dict = {}
    for label, eng in engines.items():
        net_c[("YOLOv3-tiny 416", label)] = (lambda b, e=eng: e.run({"images": b}), blobs)
        det = YoloDetector(eng, "v5", 416, labels, PREPROCESS["darknet"], classes=VEHICLES)
        e2e_c[("YOLOv3-tiny 416", label)] = (lambda f, d=det: d.detect([f]), frames)
    cv2.setNumThreads(args.threads)
    ocv = OpenCVDarknet(files["cfg"], files["weights"])
    cv_blobs = [cv2.dnn.blobFromImage(f, 1 / 255.0, (416, 416), swapRB=True, crop=False) for f in frames]
    net_c[("YOLOv3-tiny 416", f"OpenCV DNN (Darknet reader), {n} thr")] = (ocv.forward, cv_blobs)
    e2e_c[("YOLOv3-tiny 416", f"OpenCV DNN (Darknet reader), {n} thr")] = (
        lambda f: ocv.detect(f, 0.25),
        frames,
    )
    yolox = DATA / "weights" / "yolox_nano.onnx"
    if yolox.is_file():
        det = build_detector(DetectorConfig(model=str(yolox), threads=args.threads, classes=VEHICLES))
        xb = [det.prepare([f])[0] for f in frames]
        net_c[("YOLOX-Nano 416", f"onnxruntime, {n} thr")] = (lambda b: det.engine.run({"images": b}), xb)
        e2e_c[("YOLOX-Nano 416", f"onnxruntime, {n} thr")] = (lambda f: det.detect([f]), frames)
    contenders = {}
    for key in net_c:  # network then end-to-end per backend, so no stage always runs at a busier time
        contenders[(*key, "network")] = net_c[key]
        contenders[(*key, "detect() end to end")] = e2e_c[key]
    timed = time_rounds(contenders, args.rounds)
    return [(m, f"{label} - {stage}", *stats) for (m, label, stage), stats in timed.items()]


def coco_map(args) -> list[tuple[str, str, float, float, float, float]]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    root = DATA / "coco_subset"
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(root / "instances.json"))
    name_to_cat = {c["name"]: c["id"] for c in gt.loadCats(gt.getCatIds())}
    labels = default_labels(80)
    cat_of = [name_to_cat[n] for n in labels]
    img_ids = sorted(gt.getImgIds())
    images = {i: cv2.imread(str(root / "images" / gt.loadImgs(i)[0]["file_name"])) for i in img_ids}
    veh_cats = [name_to_cat[n] for n in VEHICLES]

    def evaluate(dets: list[dict], cats: list[int] | None) -> tuple[float, float]:
        if not dets:
            return 0.0, 0.0
        with contextlib.redirect_stdout(io.StringIO()):
            dt = gt.loadRes(dets)
            ev = COCOeval(gt, dt, "bbox")
            ev.params.imgIds = img_ids
            if cats:
                ev.params.catIds = cats
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        return float(ev.stats[0]), float(ev.stats[1])

    def ours(cfg: DetectorConfig, int8: QuantSettings | None = None) -> list[dict]:
        det = build_detector(cfg)
        if int8 is not None:
            det.engine = OnnxRuntimeEngine(
                int8_model(det.engine.model_path, det.prepare, int8), threads=args.threads
            )
        out = []
        for i, img in images.items():
            r = det.detect([img])[0]
            for b, s, c in zip(r.boxes, r.scores, r.class_ids, strict=True):
                x1, y1, x2, y2 = (float(v) for v in b)
                out.append(
                    {
                        "image_id": i,
                        "category_id": cat_of[c],
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "score": float(s),
                    }
                )
        return out

    results = []
    runs = {
        "yolov3-tiny ours (letterbox 128, thr 0.001)": lambda: ours(
            DetectorConfig(classes=None, score_threshold=0.001, resize="letterbox", threads=args.threads)
        ),
        "yolov3-tiny ours (stretch, thr 0.001)": lambda: ours(
            DetectorConfig(classes=None, score_threshold=0.001, resize="stretch", threads=args.threads)
        ),
        "yolov3-tiny ours (stretch, thr 0.25)": lambda: ours(
            DetectorConfig(classes=None, score_threshold=0.25, resize="stretch", threads=args.threads)
        ),
    }
    stretch = DetectorConfig(classes=None, score_threshold=0.001, resize="stretch", threads=args.threads)
    int8_settings = {
        "default: qoperator, minmax, per-channel, reduce_range": QuantSettings(),
        "qdq, minmax, per-channel, reduce_range": QuantSettings(format="qdq"),
        "qoperator, percentile, per-channel, reduce_range": QuantSettings(calibration="percentile"),
        "qoperator, entropy, per-channel, reduce_range": QuantSettings(calibration="entropy"),
        "qoperator, minmax, per-channel, full 8-bit range": QuantSettings(reduce_range=False),
        "qoperator, minmax, per-tensor, reduce_range": QuantSettings(per_channel=False),
    }
    for name, st in int8_settings.items():
        runs[f"yolov3-tiny int8 {name} (stretch, thr 0.001)"] = lambda st=st: ours(stretch, st)
    files = get_model_files("yolov3-tiny")
    ocv = OpenCVDarknet(files["cfg"], files["weights"])

    def opencv_dets() -> list[dict]:
        return [
            {"image_id": i, "category_id": cat_of[c], "bbox": [float(v) for v in b], "score": s}
            for i, img in images.items()
            for b, s, c in ocv.detect(img, 0.25)
        ]

    runs["yolov3-tiny OpenCV DNN (stretch, thr 0.25)"] = opencv_dets
    yolox = DATA / "weights" / "yolox_nano.onnx"
    if yolox.is_file():
        runs["yolox-nano onnxruntime (letterbox, thr 0.001)"] = lambda: ours(
            DetectorConfig(model=str(yolox), classes=None, score_threshold=0.001, threads=args.threads)
        )
    for label, fn in runs.items():
        dets = fn()
        a_all, a50_all = evaluate(dets, None)
        a_veh, a50_veh = evaluate([d for d in dets if d["category_id"] in veh_cats], veh_cats)
        results.append((label, f"{len(dets)}", a_all, a50_all, a_veh, a50_veh))
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-map", action="store_true")
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args()
    out: dict = {}
    rows = [] if args.no_speed else speed(args)
    out["speed"] = rows
    if rows:
        print(
            f"### Detector speed (batch 1, {args.frames} vtest.mp4 frames 480x360 x {args.rounds} rounds, "
            f"{args.threads} threads)\n"
        )
        print("| model | backend / stage | min ms | median ms | p90 ms |\n|---|---|---:|---:|---:|")
        for m, b, lo, med, p90 in rows:
            print(f"| {m} | {b} | {lo:.1f} | {med:.1f} | {p90:.1f} |")
    if not args.no_map:
        res = coco_map(args)
        out["map"] = res
        print("\n### COCO mAP on shared/data/coco_subset (80 val2017 images, pycocotools)\n")
        print(
            "| model / setting | detections | mAP@[.5:.95] all | AP50 all | mAP person+vehicle | AP50 person+vehicle |"
        )
        print("|---|---:|---:|---:|---:|---:|")
        for label, n, a, a50, v, v50 in res:
            print(f"| {label} | {n} | {a:.3f} | {a50:.3f} | {v:.3f} | {v50:.3f} |")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
