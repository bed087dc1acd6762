"""Detection profiles x models on labelled 1080p street frames: recall, false positives, CPU cost.

For each model (``--models``) and profile (``--profiles``, pipeline/config/profiles.py), every frame of
the labelled MOT17 sequences in ../shared/data/tracks runs through a ``RegionPlanner`` with that profile's
``cameras[].detect``, exactly as the detect stage runs it (plan, detector on the crops, merge). Frames are
interleaved (for each frame, every model x profile in turn) so load on this shared machine hits all
settings alike; cost is the median time per frame over the frames of a sequence, as a ratio to the whole
frame with YOLOX-Nano on the same frames (``x nano``) and to the same model's whole frame (``x own``).

Scoring, person class only, at ``--score`` (the configured threshold, 0.3 in configs/default.yaml):
ground-truth boxes are clipped to the frame; detections are matched greedily (best score first) to an
unmatched ground-truth person at IoU >= 0.5. ``recall all``: matched / every labelled person; ``recall
half``: among people at least half visible (MOT ``visibility`` >= 0.5). A detection matching no one is
*ignored* when it lies >= 50 % inside a person less than half visible (it found the visible part) or
inside a box MOT labels as not to be scored (person on a vehicle, static person, distractor, reflection:
classes 2, 7, 8, 12 of gt.txt); otherwise it is a false positive (``FP/frame``).

``--merge-compare`` also scores each tiling profile with the merge vidpipe used before issue 19 (a cut
box dropped only when >= 50 % inside one whole box, then NMS), on the same crop detections.

Tuned on MOT17-04 (the ``street`` profile was chosen there); MOT17-13 and MOT17-10 were not used to choose.

Rotating tiles (``tiling.tiles_per_frame``, issue 24): ``--profiles`` also takes the candidates in
``CANDIDATES`` below. Every frame is scored, carried boxes included (a carried box counts only where it
still matches a person at IoU >= 0.5; one that matches no one is a false positive). ``half, steady``
scores only the frames after the first full turn of the grid (the first frames of a sequence run before
some tiles have been seen at all). The sequences are consecutive frames (25-30 fps), so a carried box
here is one source frame old per detected frame it was carried; ``--carry-drift`` prints, from the
ground-truth tracks, how many people's boxes still match their box d frames earlier (what a carried box
keeps at a slower detection rate: d = 5-6 at ``detect_fps: 5``). ``--stride S`` emulates that rate on
the real frames: each sequence is split into S cameras, frames i, i+S, i+2S, ... (a carried box is then
S source frames old per detected frame); every frame is still scored once.

Run: .venv/bin/python benchmarks/eval_profiles.py [--models yolox-nano,yolov3-tiny,nanodet-m-416]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config.profiles import PROFILES, deep_merge  # noqa: E402
from pipeline.config.regions import CameraDetectConfig  # noqa: E402
from pipeline.config.schema import DetectorConfig  # noqa: E402
from pipeline.core.nms import batched_nms, box_area, intersection_matrix, iou_matrix  # noqa: E402
from pipeline.core.types import Detections  # noqa: E402
from pipeline.detect.detectors.factory import build_detector  # noqa: E402
from pipeline.detect.regions.merge import _cut_mask, concat_detections  # noqa: E402
from pipeline.detect.regions.planner import RegionPlanner, detector_input_size, tile_grid  # noqa: E402

#: rotating-tile candidates (issue 24) scored beside the named profiles; ``tiles_per_frame`` tiles a frame
CANDIDATES: dict[str, dict] = {
    "street-rot1-velocity": deep_merge(PROFILES["street-rotate"], {"tiling": {"carry_velocity": True}}),
    "street+motion": deep_merge(PROFILES["street"], {"regions": {"enabled": True}}),
    "street+gate": deep_merge(PROFILES["street"], {"tiling": {"motion_gate": True}}),
    "street-rotate+gate": deep_merge(PROFILES["street-rotate"], {"tiling": {"motion_gate": True}}),
    "t640-rot2+gate": {"tiling": {"enabled": True, "size": 640, "overlap": 0.25, "full_frame": False,
                                  "tiles_per_frame": 2, "motion_gate": True}},
    "t640+gate": {"tiling": {"enabled": True, "size": 640, "overlap": 0.25, "full_frame": False,
                             "motion_gate": True}},
    "t720-rot2": {"tiling": {"enabled": True, "size": 720, "overlap": 0.1, "full_frame": False,
                             "tiles_per_frame": 2}},
    "t720-rot1": {"tiling": {"enabled": True, "size": 720, "overlap": 0.1, "full_frame": False,
                             "tiles_per_frame": 1}},
    "far-rot2": deep_merge(PROFILES["street-far"], {"tiling": {"tiles_per_frame": 2}}),
    "far-rot1": deep_merge(PROFILES["street-far"], {"tiling": {"tiles_per_frame": 1}}),
    "t640-rot2": {"tiling": {"enabled": True, "size": 640, "overlap": 0.25, "full_frame": False,
                             "tiles_per_frame": 2}},
    "t720-rot2-velocity": {"tiling": {"enabled": True, "size": 720, "overlap": 0.1, "full_frame": False,
                                   "tiles_per_frame": 2, "carry_velocity": True}},
    "t640-rot2-velocity": {"tiling": {"enabled": True, "size": 640, "overlap": 0.25, "full_frame": False,
                                   "tiles_per_frame": 2, "carry_velocity": True}},
    "t512-rot3": {"tiling": {"enabled": True, "size": 512, "overlap": 0.25, "full_frame": False,
                             "tiles_per_frame": 3}},
}  # fmt: skip

SEQS = ["MOT17-04-FRCNN", "MOT17-13-FRCNN", "MOT17-10-FRCNN"]
IGNORE_CLASSES = [2, 7, 8, 12]


def _shared_data() -> Path:
    for parent in Path(__file__).resolve().parents:
        if (parent / "shared" / "data" / "MANIFEST.md").is_file():
            return parent / "shared" / "data"
    return Path("/work/shared/data")


@dataclass
class Frame:
    seq: str
    image: np.ndarray
    people: np.ndarray  # (N, 4) clipped
    visibility: np.ndarray
    ignore: np.ndarray  # (M, 4) clipped: not-to-be-scored MOT boxes


def load_frames(data: Path) -> list[Frame]:
    frames = []
    for seq in SEQS:
        root = data / "tracks" / seq
        gt = json.loads((root / "instances.json").read_text())
        rows = np.loadtxt(root / "gt" / "gt.txt", delimiter=",").reshape(-1, 9)
        for im in sorted(gt["images"], key=lambda i: i["frame"]):
            w, h = im["width"], im["height"]
            anns = [a for a in gt["annotations"] if a["image_id"] == im["id"] and a["category_id"] == 1]
            b = np.array([[x, y, x + bw, y + bh] for a in anns for x, y, bw, bh in [a["bbox"]]], np.float32)
            r = rows[(rows[:, 0] == im["frame"]) & np.isin(rows[:, 7], IGNORE_CLASSES)]
            ign = np.c_[r[:, 2], r[:, 3], r[:, 2] + r[:, 4], r[:, 3] + r[:, 5]].astype(np.float32)
            for arr in (b.reshape(-1, 4), ign):
                arr[:, 0::2] = arr[:, 0::2].clip(0, w)
                arr[:, 1::2] = arr[:, 1::2].clip(0, h)
            frames.append(
                Frame(seq, cv2.imread(str(root / im["file_name"])), b.reshape(-1, 4),
                      np.array([float(a.get("visibility", 1.0)) for a in anns]), ign)
            )  # fmt: skip
    return frames


def score(det: Detections, f: Frame) -> tuple[np.ndarray, int]:
    """(matched mask over f.people, false positives) for person detections."""
    person = det.select(np.array([lab == "person" for lab in det.labels], bool))
    matched = np.zeros(len(f.people), bool)
    iou = iou_matrix(person.boxes, f.people)
    regions = np.concatenate([f.people[f.visibility < 0.5], f.ignore])
    inside = intersection_matrix(person.boxes, regions) / np.maximum(box_area(person.boxes), 1e-6)[:, None]
    fp = 0
    for i in np.argsort(-person.scores, kind="stable"):
        cand = np.where(matched, -1.0, iou[i]) if len(f.people) else np.zeros(0)
        j = int(np.argmax(cand)) if len(cand) else -1
        if j >= 0 and cand[j] >= 0.5:
            matched[j] = True
        elif not (inside.shape[1] and inside[i].max() >= 0.5):
            fp += 1
    return matched, fp


def previous_merge(crops, results, width, height, nms_iou) -> Detections:
    """vidpipe's merge before issue 19: cut boxes >= 50 % inside one whole box dropped, then NMS."""
    shifted, cuts = [], []
    for crop, det in zip(crops, results, strict=True):
        if len(det):
            o = np.array([crop[0], crop[1], crop[0], crop[1]], np.float32)
            shifted.append(Detections(det.boxes + o, det.scores, det.class_ids, list(det.labels)))
            cuts.append(_cut_mask(det.boxes, crop, width, height))
    merged = concat_detections(shifted)
    if not len(merged):
        return merged
    cut = np.concatenate(cuts)
    if len(shifted) > 1 and cut.any() and (~cut).any():
        ci, wi = np.flatnonzero(cut), np.flatnonzero(~cut)
        ios = intersection_matrix(merged.boxes[ci], merged.boxes[wi]) / box_area(merged.boxes[ci])[:, None]
        same = merged.class_ids[ci][:, None] == merged.class_ids[wi][None, :]
        keep = np.ones(len(merged), bool)
        keep[ci[((ios >= 0.5) & same).any(axis=1)]] = False
        merged = merged.select(keep)
    return merged.select(batched_nms(merged.boxes, merged.scores, merged.class_ids, nms_iou))


@dataclass
class Tally:
    found: int = 0
    found_half: int = 0
    people: int = 0
    half: int = 0
    fp: int = 0
    frames: int = 0
    inputs: int = 0
    carried: int = 0
    steady_found_half: int = 0
    steady_half: int = 0
    steady_frames: int = 0
    ms: list[float] = field(default_factory=list)

    def add(
        self, matched: np.ndarray, fp: int, f: Frame, inputs: int, ms: float | None, carried: int = 0,
        steady: bool = True,
    ) -> None:  # fmt: skip
        if steady:
            self.steady_found_half += int((matched & (f.visibility >= 0.5)).sum())
            self.steady_half += int((f.visibility >= 0.5).sum())
            self.steady_frames += 1
        self.carried += carried
        self.found += int(matched.sum())
        self.found_half += int((matched & (f.visibility >= 0.5)).sum())
        self.people += len(f.people)
        self.half += int((f.visibility >= 0.5).sum())
        self.fp += fp
        self.frames += 1
        self.inputs += inputs
        if ms is not None:
            self.ms.append(ms)


def detect_config(name: str) -> dict:
    return CANDIDATES[name] if name in CANDIDATES else PROFILES[name]


def turn_frames(cfg: CameraDetectConfig, size: int, width: int, height: int) -> int:
    """Detected frames a rotating schedule takes to run every tile once (1 when it runs them all)."""
    t = cfg.tiling
    if not t.enabled or t.tiles_per_frame is None:
        return 1
    n = len(tile_grid(width, height, cfg.tiling.size or size, t.overlap))
    return -(-n // t.tiles_per_frame)


def carry_drift(data: Path, max_d: int = 7) -> None:
    """How well a box carried d frames still matches its person: from the ground-truth tracks."""
    print()
    print("Carry drift (ground truth): people at least half visible whose box d frames earlier (same track) "
          "still overlaps their box at IoU >= 0.5")  # fmt: skip
    print()
    print("| sequence | " + " | ".join(f"d = {d}" for d in range(1, max_d + 1)) + " |")
    print("|---|" + "---:|" * max_d)
    for seq in SEQS:
        rows = np.loadtxt(data / "tracks" / seq / "gt" / "gt.txt", delimiter=",").reshape(-1, 9)
        rows = rows[(rows[:, 6] == 1) & (rows[:, 7] == 1)]
        by_frame = {int(fr): rows[rows[:, 0] == fr] for fr in np.unique(rows[:, 0])}
        cells = []
        for d in range(1, max_d + 1):
            kept = total = 0
            for fr, now in by_frame.items():
                before = by_frame.get(fr - d)
                if before is None:
                    continue
                for r in now[now[:, 8] >= 0.5]:
                    old = before[before[:, 1] == r[1]]
                    if not len(old):
                        continue
                    a = np.array([[r[2], r[3], r[2] + r[4], r[3] + r[5]]], np.float32)
                    b = np.array(
                        [[old[0, 2], old[0, 3], old[0, 2] + old[0, 4], old[0, 3] + old[0, 5]]], np.float32
                    )
                    total += 1
                    kept += int(iou_matrix(a, b)[0, 0] >= 0.5)
            cells.append(f"{kept}/{total} = {kept / total:.2f}" if total else "-")
        print(f"| {seq[:8]} | " + " | ".join(cells) + " |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="yolox-nano,yolov3-tiny,nanodet-m-416")
    ap.add_argument("--profiles", default="whole,street,street-far")
    ap.add_argument("--score", type=float, default=0.3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--merge-compare", action="store_true")
    ap.add_argument("--carry-drift", action="store_true", help="print the ground-truth carry drift table")
    ap.add_argument("--stride", type=int, default=1, help="split each sequence into this many cameras")
    args = ap.parse_args()
    if args.carry_drift:
        carry_drift(_shared_data())
        return 0
    frames = load_frames(_shared_data())
    models = args.models.split(",")
    profiles = args.profiles.split(",")
    detectors = {
        m: build_detector(
            DetectorConfig(model=m, score_threshold=args.score, classes=["person"], threads=args.threads)
        )  # fmt: skip
        for m in models
    }
    tallies: dict[tuple[str, str, str, str], Tally] = {}
    planners: dict[tuple[str, int, str, str], RegionPlanner] = {}
    seen: dict[tuple[str, int, str, str], int] = {}
    index_in_seq: dict[str, int] = {}
    for f in frames:
        sub = index_in_seq.get(f.seq, 0) % args.stride  # which of the sequence's S cameras sees this frame
        index_in_seq[f.seq] = index_in_seq.get(f.seq, 0) + 1
        for m, det in detectors.items():
            for p in profiles:
                key = (f.seq, sub, m, p)
                if key not in planners:  # one planner per sequence, as one camera
                    cfg = CameraDetectConfig.model_validate(detect_config(p))
                    planners[key] = RegionPlanner(cfg, detector_input_size(det), det.nms_iou)  # type: ignore[attr-defined]
                planner = planners[key]
                h, w = f.image.shape[:2]
                seen[key] = seen.get(key, 0) + 1
                steady = seen[key] > turn_frames(planner.cfg, detector_input_size(det), w, h) - 1
                t0 = time.perf_counter()
                plan = planner.plan(f.image)
                crops = [f.image[y1:y2, x1:x2] for x1, y1, x2, y2 in plan.crops]
                results = det.detect(crops)
                merged, info = planner.finish(plan, results)
                ms = (time.perf_counter() - t0) * 1000.0
                matched, fp = score(merged, f)
                tallies.setdefault((f.seq, m, p, "new"), Tally()).add(
                    matched, fp, f, info.crops, ms, info.carried, steady
                )
                if args.merge_compare and plan.kind == "tiles":
                    h, w = f.image.shape[:2]
                    old = previous_merge(plan.crops, results, w, h, det.nms_iou)  # type: ignore[attr-defined]
                    matched, fp = score(old, f)
                    tallies.setdefault((f.seq, m, p, "previous"), Tally()).add(
                        matched, fp, f, info.crops, None
                    )
        print(f"{f.seq}: frame done", file=sys.stderr, flush=True)
    print(
        f"stride {args.stride}: each sequence run as {args.stride} camera(s), every {args.stride}th frame each"
    )
    print(f"score >= {args.score}, ONNX Runtime {args.threads} thread(s); cost = median ms/frame of plan + "
          "detect + merge; x nano = / YOLOX-Nano whole frame, x own = / the same model's whole frame")  # fmt: skip
    print()
    print("| sequence | model | profile | merge | recall all | recall half-visible | half, steady | FP/frame | "
          "carried/frame | inputs/frame | ms/frame | x nano | x own |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for seq in SEQS:
        nano = tallies.get((seq, "yolox-nano", "whole", "new"))
        for m in models:
            own = tallies.get((seq, m, "whole", "new"))
            for p in profiles:
                for merge in ("new", "previous"):
                    t = tallies.get((seq, m, p, merge))
                    if t is None:
                        continue
                    med = statistics.median(t.ms) if t.ms else None
                    ms = f"{med:.0f}" if med else "same"
                    xn = f"{med / statistics.median(nano.ms):.2f}" if med and nano else "-"
                    xo = f"{med / statistics.median(own.ms):.2f}" if med and own else "-"
                    steady = (f"{t.steady_found_half}/{t.steady_half} = {t.steady_found_half / t.steady_half:.3f}"
                              f" ({t.steady_frames} fr)" if t.steady_half else "-")  # fmt: skip
                    print(f"| {seq[:8]} ({t.frames} fr) | {m} | {p} | {merge} | {t.found}/{t.people} = "
                          f"{t.found / t.people:.3f} | {t.found_half}/{t.half} = {t.found_half / t.half:.3f} | "
                          f"{steady} | {t.fp / t.frames:.2f} | {t.carried / t.frames:.1f} | "
                          f"{t.inputs / t.frames:.1f} | {ms} | {xn} | {xo} |")  # fmt: skip
    for det in detectors.values():
        det.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
