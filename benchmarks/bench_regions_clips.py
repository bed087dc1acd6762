"""Motion regions on real unlabelled clips: what they cost and what they keep, against full-frame detection.

For each clip (../shared/data/videos and the UA-DETRAC video), every frame runs through full-frame detection
(the peer) and through a motion-region planner, in the same loop. Reported: ms per frame of each, their
ratio, the share of frames skipped / scanned in regions / fully scanned, and *agreement*: of the full-frame
detections scoring >= 0.25, the share that the regions run also reports (same class, IoU >= 0.5). Agreement
is not accuracy (the full frame misses small objects that regions may find), it shows what gating loses.

Run: .venv/bin/python benchmarks/bench_regions_clips.py [--frames 300] [--model yolox-nano]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config.regions import CameraDetectConfig  # noqa: E402
from pipeline.config.schema import DetectorConfig  # noqa: E402
from pipeline.core.nms import iou_matrix  # noqa: E402
from pipeline.core.types import Detections  # noqa: E402
from pipeline.detect.detectors.factory import build_detector  # noqa: E402
from pipeline.detect.regions.planner import RegionPlanner, detector_input_size  # noqa: E402
from tests.support.walk_in import SHARED, YOLOX_NANO, read_frames  # noqa: E402

CLIPS = [
    "videos/vtest.mp4",
    "videos/traffic_bridge.mp4",
    "videos/traffic_motorway.mp4",
    "tracks/UA-DETRAC_MVI_20011/video/ua_detrac.mp4",
]


def kept(ref: Detections, got: Detections, score: float) -> tuple[int, int, int]:
    """(reference boxes >= score, of those matched by a box in ``got`` at IoU >= 0.5 of the same class,
    of any class)."""
    r = ref.select(ref.scores >= score)
    if len(r) == 0:
        return 0, 0, 0
    if len(got) == 0:
        return len(r), 0, 0
    iou = iou_matrix(r.boxes, got.boxes)
    any_class = int((iou.max(axis=1) >= 0.5).sum())
    iou[r.class_ids[:, None] != got.class_ids[None, :]] = 0
    return len(r), int((iou.max(axis=1) >= 0.5).sum()), any_class


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="yolox-nano")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--score", type=float, default=0.25)
    ap.add_argument("--clips", default=",".join(CLIPS), help="comma-separated paths under ../shared/data")
    args = ap.parse_args()
    if SHARED is None:
        print("needs ../shared/data")
        return 1
    model = str(YOLOX_NANO) if args.model == "yolox-nano" else args.model
    det = build_detector(DetectorConfig(model=model, threads=1, score_threshold=args.score))
    size = detector_input_size(det)
    print(f"machine: {platform.node()} {platform.machine()}, shared 2-core CPU, 1 ORT thread; model {det.name}; "
          f"default regions settings; first {args.frames} frames of each clip, every frame detected")  # fmt: skip
    print()
    print("| clip | frames | full ms/frame | regions ms/frame | × full | skip / regions / full scans | "
          "full-frame detections kept | kept, any class |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---|---:|---:|")
    for rel in args.clips.split(","):
        path = SHARED / rel
        if not path.is_file():
            continue
        frames = read_frames(path, args.frames)
        planner = RegionPlanner(
            CameraDetectConfig.model_validate({"regions": {"enabled": True}}), size, det.nms_iou
        )
        full_ms = reg_ms = 0.0
        kinds: Counter[str] = Counter()
        n_ref = n_kept = n_any = 0
        for img in frames:
            t0 = time.perf_counter()
            ref = det.detect([img])[0]
            t1 = time.perf_counter()
            got, info = planner.detect(det, img)
            t2 = time.perf_counter()
            full_ms += (t1 - t0) * 1000.0
            reg_ms += (t2 - t1) * 1000.0
            kinds[info.kind] += 1
            a, b, c = kept(ref, got, args.score)
            n_ref += a
            n_kept += b
            n_any += c
        n = len(frames)
        h, w = frames[0].shape[:2]
        share = " / ".join(f"{100 * kinds[k] / n:.0f} %" for k in ("skip", "regions", "full"))
        print(f"| {Path(rel).name} ({w}x{h}) | {n} | {full_ms / n:.1f} | {reg_ms / n:.1f} | {reg_ms / full_ms:.2f} | "
              f"{share} | {n_kept}/{n_ref} ({100 * n_kept / max(1, n_ref):.1f} %) | "
              f"{n_any}/{n_ref} ({100 * n_any / max(1, n_ref):.1f} %) |", flush=True)  # fmt: skip
    det.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
