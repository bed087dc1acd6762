"""Detection cost per frame on a static scene with motion-gated regions, against full-frame detection
(same clip, same run, interleaved), and how soon a person walking in is found.

Clip: tests/support/walk_in.py (real vtest.mp4 pixels: its median background with sensor noise, then one real
walker stepping in). Cost = wall time of plan + detector + merge per frame, single-threaded ONNX Runtime;
the full-frame peer runs the detector on every frame. Needs ../shared/data.

Run: .venv/bin/python benchmarks/bench_regions_static.py [--model yolox-nano] [--rounds 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config.regions import CameraDetectConfig  # noqa: E402
from pipeline.config.schema import DetectorConfig  # noqa: E402
from pipeline.core.nms import iou_matrix  # noqa: E402
from pipeline.detect.detectors.factory import build_detector  # noqa: E402
from pipeline.detect.regions.planner import RegionPlanner, detector_input_size  # noqa: E402
from tests.support.walk_in import YOLOX_NANO, walk_in_clip  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="yolox-nano")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--static", type=int, default=100, help="static frames before the person steps in")
    ap.add_argument("--full-scan-every", type=int, default=25)
    ap.add_argument("--scale", type=float, default=1.0, help="enlarge the 480x360 clip (2 = 960x720)")
    args = ap.parse_args()
    model = str(YOLOX_NANO) if args.model == "yolox-nano" else args.model
    det = build_detector(DetectorConfig(model=model, threads=1))
    frames, truth = walk_in_clip(det, static_frames=args.static, walk_frames=12, scale=args.scale)
    size = detector_input_size(det)
    cfg = CameraDetectConfig.model_validate(
        {"regions": {"enabled": True, "full_scan_every": args.full_scan_every}}
    )
    region_ms: list[list[float]] = []
    full_ms: list[list[float]] = []
    found_after: int | None = None
    walk_crops: list[int] = []
    for _ in range(args.rounds):
        planner = RegionPlanner(cfg, size, det.nms_iou)
        rm, fm = [], []
        for i, img in enumerate(frames):
            t0 = time.perf_counter()
            dets, info = planner.detect(det, img)
            if truth[i] is not None and len(region_ms) == 0:
                walk_crops.append(info.crops)
            rm.append((time.perf_counter() - t0) * 1000.0)
            t0 = time.perf_counter()
            det.detect([img])
            fm.append((time.perf_counter() - t0) * 1000.0)
            if found_after is None and truth[i] is not None:
                person = np.array([lab == "person" for lab in dets.labels], bool)
                if person.any() and iou_matrix(truth[i][None], dets.boxes[person]).max() >= 0.5:
                    found_after = i - args.static
        region_ms.append(rm)
        full_ms.append(fm)
    s = args.static
    reg = statistics.median(statistics.mean(r[:s]) for r in region_ms)
    full = statistics.median(statistics.mean(f[:s]) for f in full_ms)
    h, w = frames[0].shape[:2]
    print(f"machine: {platform.node()} {platform.machine()}, shared 2-core CPU, 1 ORT thread; model {det.name}; "
          f"{s} static frames ({w}x{h}) x {args.rounds} rounds, full scan every {args.full_scan_every}; "
          f"while walking: {statistics.mean(walk_crops):.2f} detector inputs per frame")  # fmt: skip
    print()
    print(
        "| setting | ms/frame on the static scene | x full frame | person found (detected frames after entry) |"
    )
    print("|---|---|---|---|")
    print(f"| full frame (peer) | {full:.2f} | 1.00 | - |")
    print(f"| motion regions | {reg:.2f} | {reg / full:.3f} | {found_after} |")
    det.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
