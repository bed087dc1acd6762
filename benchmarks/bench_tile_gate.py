"""Motion-gated and rotating tiles on real unlabelled clips: detector inputs, cost and what they keep.

For each clip, every ``--step``-th frame (6 = ``detect_fps: 5`` on a 30 fps camera) runs through the full tile
grid (the peer: ``tiling`` with every tile on every detected frame) and through each variant
(``tiling.motion_gate``, ``tiling.tiles_per_frame``), in the same loop, each with its own planner as one
camera. Reported per variant: detector inputs per frame, ms per frame and its ratio to the peer (same frames,
same run), the share of frames with no inference, and *agreement*: of the peer's detections, the share the
variant also reports (same class, IoU >= 0.5; carried boxes count where they still match). Agreement is not
accuracy: it shows what skipping tiles loses against running them all.

Run: .venv/bin/python benchmarks/bench_tile_gate.py [--frames 360] [--step 6] [--size 640]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config.regions import CameraDetectConfig  # noqa: E402
from pipeline.config.schema import DetectorConfig  # noqa: E402
from pipeline.detect.detectors.factory import build_detector  # noqa: E402
from pipeline.detect.regions.planner import RegionPlanner, detector_input_size  # noqa: E402
from tests.support.walk_in import SHARED, YOLOX_NANO, read_frames  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_regions_clips import kept  # noqa: E402

CLIPS = [
    "videos/traffic_motorway.mp4",
    "videos/crowd_topdown.avi",
    "tracks/UA-DETRAC_MVI_20011/video/ua_detrac.mp4",
]

VARIANTS = {
    "all tiles (peer)": {},
    "motion_gate": {"motion_gate": True},
    "tiles_per_frame 2": {"tiles_per_frame": 2},
    "tiles_per_frame 2 + motion_gate": {"tiles_per_frame": 2, "motion_gate": True},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=360, help="decoded frames read from each clip")
    ap.add_argument("--step", type=int, default=6, help="detect every this many decoded frames")
    ap.add_argument("--size", type=int, default=640, help="tile side (frame pixels)")
    ap.add_argument("--score", type=float, default=0.3)
    ap.add_argument("--clips", default=",".join(CLIPS), help="comma-separated paths under ../shared/data")
    args = ap.parse_args()
    if SHARED is None:
        print("needs ../shared/data")
        return 1
    det = build_detector(DetectorConfig(model=str(YOLOX_NANO), threads=1, score_threshold=args.score))
    size = detector_input_size(det)
    print(f"YOLOX-Nano, 1 ORT thread, score {args.score}; {args.size} px tiles, 25 % overlap, no whole frame; "
          f"every {args.step}th of the first {args.frames} frames of each clip")  # fmt: skip
    print()
    print("| clip | detected frames | variant | inputs/frame | ms/frame | × all tiles | frames without inference | "
          "peer detections kept |")  # fmt: skip
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for rel in args.clips.split(","):
        path = SHARED / rel
        if not path.is_file():
            continue
        frames = read_frames(path, args.frames)[:: args.step]
        planners = {
            name: RegionPlanner(
                CameraDetectConfig.model_validate(
                    {
                        "tiling": {
                            "enabled": True,
                            "size": args.size,
                            "overlap": 0.25,
                            "full_frame": False,
                            **v,
                        }
                    }
                ),
                size,
                det.nms_iou,
            )
            for name, v in VARIANTS.items()
        }
        ms = dict.fromkeys(VARIANTS, 0.0)
        inputs = dict.fromkeys(VARIANTS, 0)
        idle = dict.fromkeys(VARIANTS, 0)
        ref_n = dict.fromkeys(VARIANTS, 0)
        ref_kept = dict.fromkeys(VARIANTS, 0)
        for img in frames:
            outs = {}
            for name, planner in planners.items():  # interleaved: load hits every variant alike
                t0 = time.perf_counter()
                outs[name], info = planner.detect(det, img)
                ms[name] += (time.perf_counter() - t0) * 1000.0
                inputs[name] += info.crops
                idle[name] += info.crops == 0
            peer = outs["all tiles (peer)"]
            for name in VARIANTS:
                a, b, _ = kept(peer, outs[name], args.score)
                ref_n[name] += a
                ref_kept[name] += b
        n = len(frames)
        h, w = frames[0].shape[:2]
        for name in VARIANTS:
            print(f"| {Path(rel).name} ({w}x{h}) | {n} | {name} | {inputs[name] / n:.2f} | {ms[name] / n:.1f} | "
                  f"{ms[name] / ms['all tiles (peer)']:.2f} | {100 * idle[name] / n:.0f} % | "
                  f"{ref_kept[name]}/{ref_n[name]} ({100 * ref_kept[name] / max(1, ref_n[name]):.0f} %) |",
                  flush=True)  # fmt: skip
    det.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
