"""Tracker cost per frame on this CPU, for N simultaneously visible objects (default 10, 50, 100).

Objects move at constant velocity with Gaussian box noise, a few detections are missed or come back with
a low score (so both ByteTrack passes run), and objects leave and are replaced. Reported:
  * tracker: ``ByteTracker.update`` alone (Kalman predict/update, two IoU + Hungarian passes);
  * analyzer: the whole ``TrackingAnalyzer.process`` (filters, dedupe, tracker, 2 zones, 1 counting line,
    lifecycle events; snapshots off since JPEG writes happen per event, not per frame).
Prints a markdown table (median / p95 milliseconds per frame).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.analyze.tracking.analyzer import TrackingAnalyzer  # noqa: E402
from pipeline.analyze.tracking.tracker import ByteTracker  # noqa: E402
from pipeline.config.tracking import CameraZonesConfig, TrackingConfig  # noqa: E402
from pipeline.core.types import Detections, Frame, FrameResult  # noqa: E402

W, H = 1280, 720


def synth(n: int, frames: int, seed: int = 0) -> list[Detections]:
    rng = np.random.default_rng(seed)

    def spawn(k: int):
        wh = rng.uniform([20, 40], [90, 180], (k, 2))
        xy = rng.uniform([0, 0], [W, H], (k, 2))
        v = rng.normal(0, 3, (k, 2))
        return xy, wh, v

    xy, wh, v = spawn(n)
    out = []
    labels_pool = np.array(["person", "car"])
    lab = labels_pool[rng.integers(0, 2, n)]
    for _ in range(frames):
        xy += v
        gone = (xy[:, 0] < -50) | (xy[:, 0] > W + 50) | (xy[:, 1] < -50) | (xy[:, 1] > H + 50)
        if gone.any():
            xy[gone], wh[gone], v[gone] = spawn(int(gone.sum()))
        noise = rng.normal(0, 2, (n, 4))
        boxes = np.concatenate([xy - wh / 2, xy + wh / 2], 1) + noise
        scores = rng.uniform(0.55, 0.95, n)
        scores[rng.random(n) < 0.1] = rng.uniform(0.15, 0.45)  # partly occluded: low-score pass
        seen = rng.random(n) > 0.05  # 5 % missed
        out.append(Detections(boxes[seen].astype(np.float32), scores[seen].astype(np.float32),
                              np.zeros(int(seen.sum()), np.int32), lab[seen].tolist()))  # fmt: skip
    return out


def stats(ms: list[float]) -> tuple[float, float]:
    """Median and p95: the median is the honest per-frame cost on a shared CPU, p95 shows the jitter."""
    return float(np.median(ms)), float(np.percentile(ms, 95))


def bench(n: int, frames: int) -> tuple[tuple[float, float], tuple[float, float]]:
    dets = synth(n, frames)
    tracker = ByteTracker(TrackingConfig(enabled=True, objects=None))
    t_ms = []
    for d in dets:
        t0 = time.perf_counter()
        tracker.update(d.boxes, d.scores, d.labels, d.class_ids)
        t_ms.append((time.perf_counter() - t0) * 1e3)

    zones = CameraZonesConfig.model_validate({
        "zones": {"left": {"points": [[0, 0], [640, 0], [640, 720], [0, 720]], "loiter_time_s": 5},
                  "top": {"points": [[0, 0], [1280, 0], [1280, 200], [0, 200]]}},
        "lines": {"mid": {"points": [[0, 360], [1280, 360]]}},
    })  # fmt: skip
    cfg = TrackingConfig(enabled=True, objects=None, snapshots={"enabled": False})
    analyzer = TrackingAnalyzer("bench", cfg, zones, Path(tempfile.mkdtemp()))
    img = np.zeros((H, W, 3), np.uint8)
    a_ms = []
    for i, d in enumerate(dets):
        res = FrameResult(Frame("bench", i, i / 25, 1e9 + i / 25, img), d, "synthetic")
        t0 = time.perf_counter()
        analyzer.process(res)
        a_ms.append((time.perf_counter() - t0) * 1e3)
    skip = 10  # warm-up
    return stats(t_ms[skip:]), stats(a_ms[skip:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=int, nargs="+", default=[10, 50, 100])
    ap.add_argument("--frames", type=int, default=300)
    args = ap.parse_args()
    print("| objects | tracker median ms | tracker p95 ms | analyzer median ms | analyzer p95 ms |")
    print("|---|---|---|---|---|")
    for n in args.objects:
        (tm, tp), (am, ap95) = bench(n, args.frames)
        print(f"| {n} | {tm:.2f} | {tp:.2f} | {am:.2f} | {ap95:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
