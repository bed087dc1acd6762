"""ID switches and fragmentation of the tracker on hand-checked segments of real clips.

Detector: YOLOX-Nano (``/work/shared/data/weights/yolox_nano.onnx``) through onnxruntime, decoded here so the
evaluation does not depend on the detector stage. The tracker is the pipeline's ``TrackingAnalyzer``.

Ground truth (``benchmarks/data/tracking_gt.json``) was built by hand: annotated key frames (every 10th
frame of the segment) were saved with ``--dump`` and looked at; for every real person/vehicle a point on
its body (the box centre) was written down per key frame where it is visible. At each key frame a GT point
is assigned one-to-one (Hungarian, nearest box centre) to a confirmed track box seen that frame that
contains it. Per object we report:
  * id switches: consecutive assigned key frames whose track ids differ;
  * fragments: times the object's coverage was interrupted (an unassigned key frame between assigned ones);
  * coverage: assigned key frames / key frames where the object is in the ground truth.

Usage:  python benchmarks/eval_tracking.py                 (markdown table)
        python benchmarks/eval_tracking.py --dump OUTDIR   (annotated key frames + track boxes, to check GT)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
from scipy.optimize import linear_sum_assignment

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.analyze.tracking.analyzer import TrackingAnalyzer  # noqa: E402
from pipeline.config.tracking import CameraZonesConfig, TrackingConfig  # noqa: E402
from pipeline.core.nms import batched_nms  # noqa: E402
from pipeline.core.types import Detections, Frame, FrameResult  # noqa: E402

DATA = Path("/work/shared/data")
GT_PATH = Path(__file__).with_name("data") / "tracking_gt.json"
KEEP = {"person", "bicycle", "car", "motorcycle", "bus", "truck"}


class YoloxNano:
    def __init__(self, path: Path, size: int = 416, score: float = 0.1, iou: float = 0.45):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        self.sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.names = (DATA / "weights/coco.names").read_text().split("\n")
        self.size, self.score, self.iou = size, score, iou
        grids, strides = [], []
        for s in (8, 16, 32):
            n = size // s
            yy, xx = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
            grids.append(np.stack([xx.ravel(), yy.ravel()], 1))
            strides.append(np.full(n * n, s))
        self.grid = np.concatenate(grids).astype(np.float32)
        self.stride = np.concatenate(strides).astype(np.float32)[:, None]

    def __call__(self, img: np.ndarray) -> Detections:
        h, w = img.shape[:2]
        r = min(self.size / h, self.size / w)
        canvas = np.full((self.size, self.size, 3), 114, np.uint8)
        canvas[: round(h * r), : round(w * r)] = cv2.resize(img, (round(w * r), round(h * r)))
        blob = canvas.transpose(2, 0, 1)[None].astype(np.float32)
        out = self.sess.run(None, {"images": blob})[0][0]
        xy = (out[:, :2] + self.grid) * self.stride
        wh = np.exp(out[:, 2:4]) * self.stride
        cls = out[:, 5:].argmax(1)
        scores = out[:, 4] * out[np.arange(len(out)), 5 + cls]
        labels = np.array([self.names[c] for c in cls])
        keep = (scores >= self.score) & np.isin(labels, list(KEEP))
        boxes = np.concatenate([xy - wh / 2, xy + wh / 2], 1)[keep] / r
        scores, cls, labels = scores[keep], cls[keep], labels[keep]
        idx = batched_nms(boxes, scores, cls, self.iou)
        return Detections(boxes[idx].astype(np.float32), scores[idx].astype(np.float32),
                          cls[idx].astype(np.int32), labels[idx].tolist())  # fmt: skip


def frames(path: Path, start: int, end: int):
    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    i = 0
    while i <= end:
        ok, img = cap.read()
        if not ok:
            break
        if i >= start:
            yield i, i / fps, img
        i += 1
    cap.release()


def track_clip(clip: dict, detector: YoloxNano, dump: Path | None = None):
    """{key frame: [(track_id, label, box)]} of confirmed tracks seen on that frame, plus timings."""
    analyzer = TrackingAnalyzer("eval", TrackingConfig(enabled=True, max_lost_frames=clip.get("max_lost", 30)),
                                CameraZonesConfig(), Path(tempfile.mkdtemp()))  # fmt: skip
    analyzer.cfg.snapshots.enabled = False
    analyzer.snapshots = None
    step, start = clip["key_every"], clip["start"]
    out, det_ms, trk_ms = {}, [], []
    for i, t, img in frames(DATA / "videos" / clip["video"], start, clip["end"]):
        t0 = time.perf_counter()
        det = detector(img)
        t1 = time.perf_counter()
        analyzer.process(FrameResult(Frame("eval", i, t, 1e9 + t, img), det, "yolox_nano"))
        t2 = time.perf_counter()
        det_ms.append((t1 - t0) * 1e3)
        trk_ms.append((t2 - t1) * 1e3)
        if (i - start) % step:
            continue
        rows = []
        for tr in analyzer.tracker.tracks:
            obj = analyzer.objects.get(tr.track_id)
            if tr.det_index >= 0 and obj is not None and obj.confirmed:
                rows.append((tr.track_id, tr.label, [round(float(v)) for v in tr.box]))
        out[i] = rows
        if dump is not None:
            _draw(img, rows, i, dump / f"{Path(clip['video']).stem}_{i:04d}.png")
            print(i, rows)
    return out, det_ms, trk_ms


def _draw(img: np.ndarray, rows, i: int, path: Path) -> None:
    """Key frame with a 50 px coordinate grid and big track ids, for building the ground truth by eye."""
    vis = img.copy()
    h, w = vis.shape[:2]
    for x in range(0, w, 50):
        cv2.line(vis, (x, 0), (x, h), (90, 90, 90), 1)
        cv2.putText(vis, str(x), (x + 2, h - 4), cv2.FONT_HERSHEY_PLAIN, 0.8, (255, 255, 255), 1)
    for y in range(0, h, 50):
        cv2.line(vis, (0, y), (w, y), (90, 90, 90), 1)
        cv2.putText(vis, str(y), (2, y - 2), cv2.FONT_HERSHEY_PLAIN, 0.8, (255, 255, 255), 1)
    for tid, _, (x1, y1, x2, y2) in rows:
        color = tuple(int(c) for c in np.random.default_rng(tid).integers(80, 256, 3))
        cv2.rectangle(vis, (x1, y1), (x2, y2), color, 2)
        cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
        cv2.putText(vis, str(tid), (cx - 8, cy), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (0, 0, 0), 4)
        cv2.putText(vis, str(tid), (cx - 8, cy), cv2.FONT_HERSHEY_SIMPLEX, 0.9, color, 2)
    cv2.putText(vis, f"frame {i}", (5, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2)
    cv2.imwrite(str(path), vis)


def assign(points: dict[str, tuple[float, float]], rows) -> dict[str, int]:
    """One-to-one GT point -> track id for one key frame: a point may only go to a box containing it;
    among those, the Hungarian solver minimises the distance to box centres (relative to box size)."""
    names = list(points)
    if not names or not rows:
        return {}
    big = 1e6
    cost = np.full((len(names), len(rows)), big)
    for i, n in enumerate(names):
        px, py = points[n]
        for j, (_, _, b) in enumerate(rows):
            if b[0] <= px <= b[2] and b[1] <= py <= b[3]:
                cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
                cost[i, j] = np.hypot((px - cx) / (b[2] - b[0]), (py - cy) / (b[3] - b[1]))
    r, c = linear_sum_assignment(cost)
    return {names[i]: rows[j][0] for i, j in zip(r, c, strict=True) if cost[i, j] < big}


def score_clip(clip: dict, tracks: dict, verbose: bool = False) -> dict:
    keys = sorted({int(k) for pts in clip["objects"].values() for k in pts})
    per_key = {}
    for k in keys:
        pts = {n: tuple(p[str(k)]) for n, p in clip["objects"].items() if str(k) in p}
        per_key[k] = assign(pts, tracks.get(k, []))
    switches = fragments = covered = visible = 0
    for name, points in clip["objects"].items():
        ids = [per_key[int(k)].get(name) for k in sorted(points, key=int)]
        seen = [i for i in ids if i is not None]
        if verbose:
            print(f"  {name}: track ids per key frame {ids}")
        visible += len(ids)
        covered += len(seen)
        switches += sum(a != b for a, b in zip(seen, seen[1:], strict=False))
        runs = sum(1 for k, i in enumerate(ids) if i is not None and (k == 0 or ids[k - 1] is None))
        fragments += max(0, runs - 1)
    return {"objects": len(clip["objects"]), "switches": switches, "fragments": fragments,
            "coverage": covered / max(visible, 1), "keyframes": visible}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dump", type=Path, help="write annotated key frames here and print track boxes")
    ap.add_argument("--clip", help="only this clip (name in the GT file)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print each object's track ids")
    args = ap.parse_args()
    gt = json.loads(GT_PATH.read_text())
    detector = YoloxNano(DATA / "weights/yolox_nano.onnx")
    if args.dump:
        args.dump.mkdir(parents=True, exist_ok=True)
    print("| clip (frames) | GT objects | key frames | ID switches | fragmentations | coverage | "
          "detector ms/frame | tracker ms/frame |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for name, clip in gt.items():
        if args.clip and name != args.clip:
            continue
        tracks, det_ms, trk_ms = track_clip(clip, detector, args.dump)
        if not clip["objects"]:
            continue
        s = score_clip(clip, tracks, args.verbose)
        print(
            f"| {name} ({clip['start']}-{clip['end']}) | {s['objects']} | {s['keyframes']} | {s['switches']} | "
            f"{s['fragments']} | {s['coverage']:.0%} | {np.mean(det_ms):.1f} | {np.mean(trk_ms):.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
