"""SSDlite-MobileNetV2 (300x300) beside YOLOv3-tiny (416x416) on the CPU, same run: network and detect().

Frames: the first ``--frames`` of ../shared/data/videos/vtest.mp4 (480x360 pedestrians; or
$VIDPIPE_SHARED_DATA/videos/vtest.mp4), or the built-in demo scene when the shared data is absent. Calls alternate model by model per round so machine load hits
both alike. Reports min / median ms per frame (batch 1, ONNX Runtime, ``--threads`` intra-op threads).

    .venv/bin/python benchmarks/bench_ssd.py [--frames 30] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config.schema import DetectorConfig  # noqa: E402
from pipeline.detect.detectors.factory import build_detector  # noqa: E402

SHARED = Path(os.environ.get("VIDPIPE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
VIDEO = SHARED / "videos" / "vtest.mp4"


def _frames(n: int) -> list[np.ndarray]:
    if VIDEO.is_file():
        cap = cv2.VideoCapture(str(VIDEO))
        out = []
        while len(out) < n:
            ok, frame = cap.read()
            if not ok:
                break
            out.append(frame)
        cap.release()
        return out
    from pipeline.ingest.demo_media import render_frames

    return list(render_frames(480, 360, n_frames=n))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    frames = _frames(args.frames)
    models = {
        "ssdlite-mobilenetv2-coco": build_detector(
            DetectorConfig(model="ssdlite-mobilenetv2-coco", classes=None, threads=args.threads)
        ),
        "yolov3-tiny": build_detector(
            DetectorConfig(model="yolov3-tiny", classes=None, threads=args.threads)
        ),
    }
    times: dict[str, dict[str, list[float]]] = {m: {"network": [], "detect": []} for m in models}
    for _ in range(args.rounds):
        for name, det in models.items():
            for f in frames:
                blob, _ = det.prepare([f])  # type: ignore[attr-defined]
                engine = det.engine  # type: ignore[attr-defined]
                t0 = time.perf_counter()
                engine.run({engine.input_names[0]: blob})
                t1 = time.perf_counter()
                det.detect([f])
                t2 = time.perf_counter()
                times[name]["network"].append(1000 * (t1 - t0))
                times[name]["detect"].append(1000 * (t2 - t1))
    print(f"{len(frames)} frames x {args.rounds} rounds, ONNX Runtime {args.threads} threads, batch 1")
    print()
    print("| model | stage | min ms | median ms |")
    print("|---|---|---:|---:|")
    for name, t in times.items():
        for stage, v in t.items():
            print(f"| {name} | {stage} | {min(v):.1f} | {statistics.median(v):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
