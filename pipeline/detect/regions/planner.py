"""Per camera: which crops of this frame go to the detector (Frigate's region logic, our own code).

- **Full scan**: the whole frame downscaled to the detector input, or with tiling on, overlapping tiles at
  native resolution plus (``tiling.full_frame``) the whole frame for objects larger than a tile.
- **Regions** (``regions.enabled``): motion boxes and the boxes of objects found before are padded,
  grouped greedily into clusters that fit one detector-sized square, and each cluster becomes a square
  region centred on it (larger than the detector input only when one box is). An object keeps a region
  while it moves; once its box has stood still for ``stationary_frames`` detected frames with no motion on
  it, it is *carried* (its last box is reported again) until the next full scan re-checks it.
- **Skip**: no motion and no moving object: no inference at all; carried objects are reported as they were.
- **Rotating tiles** (``tiling.tiles_per_frame``, without regions): each detected frame runs only the next
  N tiles of the grid, round robin (plus the whole frame with ``tiling.full_frame``), so a frame costs N
  (+1) detector inputs instead of the whole grid. An object found earlier that no tile run this frame
  holds is *carried* as above until one of its tiles runs again; then it is kept only if found again. A
  carried box that a crop run this frame found again (a whole box of the same class overlapping it at IoU
  >= ``CARRY_REFOUND_IOU``, e.g. the downscaled whole frame seeing a large person who moved) gives way to
  the fresh box, so a moving object is not reported twice.
- **Motion-gated tiles** (``tiling.motion_gate``, without regions): of the tiles due in turn, only those with
  motion or a moving object in them run, and any tile that has not run for ``regions.full_scan_every``
  detected frames; the people of the others are carried as above. No tile due: no inference (``skip``).
- A full scan happens on the first frame, every ``full_scan_every`` detected frames, when the motion
  detector recalibrates, and when regions would cost more than the frame (too many, more pixels, or a
  frame under ``MIN_REGION_GAIN`` times the region size, where a region is about the whole frame anyway).

``plan`` runs before the detector and ``finish`` after it, so the detect stage can put the crops of
every camera's frames into one batch (one forward pass).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from pipeline.config.regions import CameraDetectConfig
from pipeline.core.nms import iou_matrix
from pipeline.core.types import Detections, ScanInfo
from pipeline.detect.detectors.base import Detector
from pipeline.detect.regions.merge import Crop, concat_detections, merge_crops, whole_boxes_on_frame
from pipeline.detect.regions.motion import MotionDetector

ScanKind = Literal["full", "tiles", "regions", "skip"]

#: an object whose box moved less than this (IoU with its previous box >= this) counts as standing still
STILL_IOU = 0.9

#: regions are cut only from frames at least this many times the region size (without tiling): below it,
#: one region costs a whole detector input yet sees barely more pixels than the downscaled frame, so a
#: frame with motion is scanned whole instead (static frames are still skipped)
MIN_REGION_GAIN = 2.0

#: a carried box overlapping a box found whole this frame (same class) at least this much is that object,
#: found again: the fresh box replaces it (lower than NMS IoU: the object has moved since it was carried)
CARRY_REFOUND_IOU = 0.3


@dataclass(frozen=True)
class ScanPlan:
    kind: ScanKind
    crops: list[Crop]
    width: int
    height: int
    motion_boxes: int = 0
    #: rotating or motion-gated tiles: the tile grid and the tiles of it run this frame (objects these hold are
    #: re-checked, the others carried); None for a plan that scans everything it means to scan
    grid: tuple[Crop, ...] | None = None
    tiles_run: tuple[Crop, ...] = ()


def detector_input_size(detector: Detector, default: int = 416) -> int:
    """Side of the detector's square input (YOLO ``input_hw``, SSD ``input_size``): the native crop size."""
    hw = getattr(detector, "input_hw", None)
    if hw:
        return int(max(hw))
    size = getattr(detector, "input_size", None)
    return int(size) if isinstance(size, int) and size > 0 else default


def tile_grid(width: int, height: int, size: int, overlap: float) -> list[Crop]:
    """Tiles of ``size`` x ``size`` (smaller where the frame is) covering the frame, neighbours sharing
    at least ``overlap`` of a tile, spread evenly so the last tile ends on the frame edge."""

    def starts(total: int) -> list[int]:
        if size >= total:
            return [0]
        stride = max(1.0, size * (1.0 - overlap))
        n = math.ceil((total - size) / stride) + 1
        return [round(i * (total - size) / (n - 1)) for i in range(n)]

    tw, th = min(size, width), min(size, height)
    return [(x, y, x + tw, y + th) for y in starts(height) for x in starts(width)]


def square_region(box: np.ndarray, size: int, width: int, height: int) -> Crop:
    """A square of side max(size, box side) centred on ``box``, shifted to lie inside the frame."""
    bw, bh = float(box[2] - box[0]), float(box[3] - box[1])
    side = max(size, math.ceil(max(bw, bh)))
    sw, sh = min(side, width), min(side, height)
    cx, cy = (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0
    x1 = int(round(min(max(cx - sw / 2.0, 0.0), width - sw)))
    y1 = int(round(min(max(cy - sh / 2.0, 0.0), height - sh)))
    return (x1, y1, x1 + sw, y1 + sh)


def pad_boxes(boxes: np.ndarray, width: int, height: int, frac: float = 0.15, px: float = 8.0) -> np.ndarray:
    """Grow boxes on every side (motion boxes often cover only the moving part: legs, an arm)."""
    if len(boxes) == 0:
        return boxes.reshape(-1, 4).astype(np.float32)
    b = boxes.astype(np.float32).copy()
    m = frac * np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) + px
    b[:, 0] -= m
    b[:, 1] -= m
    b[:, 2] += m
    b[:, 3] += m
    np.clip(b[:, 0::2], 0, width, out=b[:, 0::2])
    np.clip(b[:, 1::2], 0, height, out=b[:, 1::2])
    return b


def regions_for(boxes: np.ndarray, size: int, width: int, height: int) -> list[Crop]:
    """Greedy clustering: a box joins the first cluster whose union with it still fits a size x size
    square; each cluster becomes a square region; regions lying inside another are dropped."""
    clusters: list[np.ndarray] = []
    for b in boxes[np.argsort(boxes[:, 0], kind="stable")] if len(boxes) else []:
        for i, u in enumerate(clusters):
            nu = np.array([min(u[0], b[0]), min(u[1], b[1]), max(u[2], b[2]), max(u[3], b[3])], np.float32)
            if nu[2] - nu[0] <= size and nu[3] - nu[1] <= size:
                clusters[i] = nu
                break
        else:
            clusters.append(np.asarray(b, np.float32).copy())
    regions = [square_region(u, size, width, height) for u in clusters]
    out: list[Crop] = []
    for i, r in enumerate(regions):
        inside = any(
            j != i
            and regions[j][0] <= r[0]
            and regions[j][1] <= r[1]
            and regions[j][2] >= r[2]
            and regions[j][3] >= r[3]
            and (regions[j] != r or j < i)
            for j in range(len(regions))
        )
        if not inside:
            out.append(r)
    return out


class RegionPlanner:
    """One camera's region state: motion background, the objects found so far, frames since a full scan."""

    def __init__(
        self, cfg: CameraDetectConfig, detector_size: int, nms_iou: float = 0.45, object_score: float = 0.0
    ) -> None:
        """``object_score``: only boxes scoring at least this are remembered as objects (keep a region, are
        carried); the detect stage's detector already drops boxes under its threshold, an evaluation that
        runs the detector lower for AP passes the run-time threshold here."""
        self.cfg = cfg
        self.object_score = object_score
        self.region_size = cfg.regions.size or detector_size
        self.tile_size = cfg.tiling.size or detector_size
        self.nms_iou = nms_iou
        t = cfg.tiling
        self.gated = t.enabled and t.motion_gate and not cfg.regions.enabled
        self.motion = MotionDetector(cfg.regions.motion) if cfg.regions.enabled or self.gated else None
        self._since_full = 0
        self._size: tuple[int, int] = (0, 0)
        self._objects = Detections.empty()
        self._still = np.zeros((0,), np.int64)
        self._vel = np.zeros((0, 2), np.float32)
        self._age = np.zeros((0,), np.int64)  # detected frames each object has been carried
        self.tiles_per_frame = t.tiles_per_frame if t.enabled and not cfg.regions.enabled else None
        self._next_tile = 0  # index in the grid of the first tile the next rotating scan runs
        self._tile_age: dict[Crop, int] = {}  # motion gate: detected frames since each tile ran

    def full_scan(self, width: int, height: int) -> ScanPlan:
        whole: Crop = (0, 0, width, height)
        t = self.cfg.tiling
        if not t.enabled:
            return ScanPlan("full", [whole], width, height)
        tiles = tile_grid(width, height, self.tile_size, t.overlap)
        if t.full_frame and tiles != [whole]:
            tiles.append(whole)
        return ScanPlan("tiles", tiles, width, height)

    def plan(self, image: np.ndarray) -> ScanPlan:
        h, w = image.shape[:2]
        if (w, h) != self._size:  # first frame, or the camera came back at another resolution
            self._size = (w, h)
            self._objects = Detections.empty()
            self._still = np.zeros((0,), np.int64)
            self._vel = np.zeros((0, 2), np.float32)
            self._age = np.zeros((0,), np.int64)  # detected frames each object has been carried
            self._next_tile = 0
            self._tile_age = {}
        if self.motion is None:
            return self.full_scan(w, h) if self.tiles_per_frame is None else self._rotating_scan(w, h)
        if self.gated:
            return self._gated_scan(image, w, h)
        motion = self.motion.detect(image)
        self._since_full += 1
        if motion.first or motion.recalibrated or self._since_full >= self.cfg.regions.full_scan_every:
            return self._full(w, h, len(motion.boxes))
        obj = self._objects.boxes
        moving = self._still < self.cfg.regions.stationary_frames
        if len(obj) and len(motion.boxes):
            moving |= (iou_matrix(pad_boxes(obj, w, h), motion.boxes) > 0).any(axis=1)
        boxes = np.concatenate([motion.boxes, obj[moving]]) if len(obj) else motion.boxes
        if len(boxes) == 0:
            return ScanPlan("skip", [], w, h)
        crops = regions_for(pad_boxes(boxes, w, h), self.region_size, w, h)
        if len(crops) > self.cfg.regions.max_regions or self._costlier_than_full(crops, w, h):
            return self._full(w, h, len(motion.boxes))
        return ScanPlan("regions", crops, w, h, len(motion.boxes))

    def _rotating_scan(self, w: int, h: int) -> ScanPlan:
        """The next ``tiles_per_frame`` tiles of the grid in turn (plus the whole frame with
        ``full_frame``); the whole grid when it has no more tiles than that."""
        t = self.cfg.tiling
        grid = tile_grid(w, h, self.tile_size, t.overlap)
        n = int(self.tiles_per_frame or len(grid))
        if n >= len(grid):
            return self.full_scan(w, h)
        start = self._next_tile % len(grid)
        run = tuple(grid[(start + i) % len(grid)] for i in range(n))
        self._next_tile = (start + n) % len(grid)
        crops = list(run) + ([(0, 0, w, h)] if t.full_frame else [])
        return ScanPlan("tiles", crops, w, h, grid=tuple(grid), tiles_run=run)

    def _gated_scan(self, image: np.ndarray, w: int, h: int) -> ScanPlan:
        """Motion-gated tiles: the next ``tiles_per_frame`` (default: all) tiles in turn that are due, i.e.
        hold motion or a moving object, or have not run for ``regions.full_scan_every`` detected frames (a
        tile never run, the first frame and a recalibration make every tile due)."""
        assert self.motion is not None
        t = self.cfg.tiling
        motion = self.motion.detect(image)
        grid = tile_grid(w, h, self.tile_size, t.overlap)
        every = self.cfg.regions.full_scan_every
        for tile in grid:
            self._tile_age[tile] = self._tile_age.get(tile, every) + 1
        moving = self._still < self.cfg.regions.stationary_frames
        active = pad_boxes(np.concatenate([motion.boxes, self._objects.boxes[moving]]).reshape(-1, 4), w, h)
        everything = motion.first or motion.recalibrated
        n = int(self.tiles_per_frame or len(grid))
        start = self._next_tile % len(grid)
        run: list[Crop] = []
        for i in range(len(grid)):
            tile = grid[(start + i) % len(grid)]
            x1, y1, x2, y2 = tile
            lively = bool(
                ((active[:, 0] < x2) & (active[:, 2] > x1) & (active[:, 1] < y2) & (active[:, 3] > y1)).any()
            )
            if everything or lively or self._tile_age[tile] >= every:
                run.append(tile)
                self._tile_age[tile] = 0
                self._next_tile = (start + i + 1) % len(grid)
                if len(run) == n:
                    break
        whole: Crop = (0, 0, w, h)
        crops = run + ([whole] if t.full_frame and whole not in run and (run or len(motion.boxes)) else [])
        kind: ScanKind = "tiles" if crops else "skip"
        return ScanPlan(kind, crops, w, h, len(motion.boxes), grid=tuple(grid), tiles_run=tuple(run))

    def _costlier_than_full(self, crops: list[Crop], w: int, h: int) -> bool:
        """With tiling on, a full scan is its tiles: regions cost more once there are as many. Without
        tiling it is one downscaled frame: regions cost more once they hold as many pixels as the frame."""
        if self.cfg.tiling.enabled:
            return len(crops) >= len(self.full_scan(w, h).crops)
        if max(w, h) < MIN_REGION_GAIN * self.region_size:
            return True
        return sum((c[2] - c[0]) * (c[3] - c[1]) for c in crops) >= w * h

    def _full(self, w: int, h: int, motion_boxes: int) -> ScanPlan:
        self._since_full = 0
        p = self.full_scan(w, h)
        return ScanPlan(p.kind, p.crops, w, h, motion_boxes)

    def finish(self, plan: ScanPlan, results: list[Detections]) -> tuple[Detections, ScanInfo]:
        """Merge the crops' detections (boxes in crop pixels) into the frame's, add carried objects."""
        carried = Detections.empty()
        carried_still = np.zeros((0,), np.int64)
        carried_vel = np.zeros((0, 2), np.float32)
        carried_age = np.zeros((0,), np.int64)
        predicted = self._objects
        if plan.grid is not None and len(self._objects):
            # every remembered object one detected frame on, at its velocity (zero until seen twice)
            predicted = _moved(self._objects, self._vel, plan.width, plan.height)
            kept = ~self._rechecked_by_rotation(plan, predicted.boxes)
            kept &= (predicted.boxes[:, 2] > predicted.boxes[:, 0]) & (
                predicted.boxes[:, 3] > predicted.boxes[:, 1]
            )
            if kept.any():
                # carried objects a crop found whole again give way to the fresh box (it may have moved)
                fresh = whole_boxes_on_frame(plan.crops, results, plan.width, plan.height)
                if len(fresh):
                    kept &= ~(_same_class_iou(predicted, fresh) >= CARRY_REFOUND_IOU).any(axis=1)
            carried = predicted.select(kept)
            carried_still = self._still[kept] + 1
            carried_vel, carried_age = self._vel[kept], self._age[kept] + 1
        elif plan.kind in ("regions", "skip") and len(self._objects):
            # an object is re-checked only if a crop holds all of it; the others are carried
            b = self._objects.boxes
            scanned = np.zeros(len(b), bool)
            for x1, y1, x2, y2 in plan.crops:
                scanned |= (b[:, 0] >= x1) & (b[:, 1] >= y1) & (b[:, 2] <= x2) & (b[:, 3] <= y2)
            carried = self._objects.select(~scanned)
            carried_still = self._still[~scanned] + 1
        out = merge_crops(plan.crops, results, plan.width, plan.height, self.nms_iou, extra=carried)
        # rows of ``out`` that are carried boxes (merge keeps rows it does not drop, NMS reorders by score)
        is_carried = _rows_in(out.boxes, carried.boxes)
        found = out.select(~is_carried)
        carried_kept = _rows_in(carried.boxes, out.boxes[is_carried])
        carried, carried_still = carried.select(carried_kept), carried_still[carried_kept]
        still = self._stillness(found)
        if self.motion is not None or self.tiles_per_frame is not None:
            sure = found.scores >= self.object_score
            vel = np.zeros((len(found), 2), np.float32)
            if plan.grid is not None:
                vel = self._velocities(found, predicted)
                carried_vel, carried_age = carried_vel[carried_kept], carried_age[carried_kept]
            else:
                carried_vel = np.zeros((len(carried), 2), np.float32)
                carried_age = np.zeros(len(carried), np.int64)
            self._objects = concat_detections([found.select(sure), carried])
            self._still = np.concatenate([still[sure], carried_still])
            self._vel = np.concatenate([vel[sure], carried_vel]).astype(np.float32).reshape(-1, 2)
            self._age = np.concatenate([np.zeros(int(sure.sum()), np.int64), carried_age])
        return out, ScanInfo(
            kind=plan.kind, crops=len(plan.crops), carried=len(carried), motion_boxes=plan.motion_boxes
        )

    def _velocities(self, found: Detections, predicted: Detections) -> np.ndarray:
        """Per found box: its object's velocity (pixels per detected frame), from where the object was last
        seen; zero for a new object or with ``tiling.carry_velocity`` off. ``predicted``: the remembered
        objects moved to this frame at their old velocity (same rows as ``self._vel``/``self._age``)."""
        vel = np.zeros((len(found), 2), np.float32)
        if not self.cfg.tiling.carry_velocity or len(found) == 0 or len(predicted) == 0:
            return vel
        iou = _same_class_iou(found, predicted)
        best = iou.argmax(axis=1)
        hit = iou[np.arange(len(found)), best] >= CARRY_REFOUND_IOU
        b = best[hit]
        # predicted = last seen + k * old velocity, so the mean velocity since then is old + error / k
        err = _centres(found.boxes[hit]) - _centres(predicted.boxes[b])
        v = self._vel[b] + err / (self._age[b] + 1)[:, None]
        side = np.maximum(found.boxes[hit, 2:] - found.boxes[hit, :2], 1.0)
        vel[hit] = np.clip(v, -side, side)  # a box moves at most its own size per detected frame
        return vel

    @staticmethod
    def _rechecked_by_rotation(plan: ScanPlan, boxes: np.ndarray) -> np.ndarray:
        """Per remembered box: does this rotating scan look at it again? Yes when a tile run this frame
        holds all of it; for a box no tile of the grid holds (larger than a tile's overlap, on a seam),
        when the whole frame runs or a tile run this frame overlaps it. The others are carried."""
        grid = plan.grid or ()
        run = set(plan.tiles_run)
        held_run = np.zeros(len(boxes), bool)
        held_any = np.zeros(len(boxes), bool)
        touched = np.zeros(len(boxes), bool)
        for x1, y1, x2, y2 in grid:
            holds = (boxes[:, 0] >= x1) & (boxes[:, 1] >= y1) & (boxes[:, 2] <= x2) & (boxes[:, 3] <= y2)
            held_any |= holds
            if (x1, y1, x2, y2) in run:
                held_run |= holds
                touched |= (boxes[:, 0] < x2) & (boxes[:, 2] > x1) & (boxes[:, 1] < y2) & (boxes[:, 3] > y1)
        whole_ran = (0, 0, plan.width, plan.height) in plan.crops
        return held_run | (~held_any & (whole_ran | touched))

    def detect(self, detector: Detector, image: np.ndarray) -> tuple[Detections, ScanInfo]:
        """Plan, detect and merge one frame (benchmarks; the detect stage batches across frames)."""
        plan = self.plan(image)
        crops = [image[y1:y2, x1:x2] for x1, y1, x2, y2 in plan.crops]
        return self.finish(plan, detector.detect(crops) if crops else [])

    def _stillness(self, found: Detections) -> np.ndarray:
        """Per found box: detected frames its object has stood still; 0 when it moved since the last one.

        A new object counts as stationary (``stationary_frames``): found where no region was (a full scan),
        it showed no motion; found in a region, the motion there gives it a region next time anyway."""
        still = np.full(len(found), self.cfg.regions.stationary_frames, np.int64)
        if len(found) == 0 or len(self._objects) == 0:
            return still
        iou = iou_matrix(found.boxes, self._objects.boxes)
        iou[found.class_ids[:, None] != self._objects.class_ids[None, :]] = 0.0
        best = iou.argmax(axis=1)
        best_iou = iou[np.arange(len(found)), best]
        same = best_iou >= STILL_IOU
        moved = (best_iou > 0) & ~same
        still[same] = self._still[best[same]] + 1
        still[moved] = 0
        return still


def _centres(boxes: np.ndarray) -> np.ndarray:
    return np.stack([(boxes[:, 0] + boxes[:, 2]) / 2.0, (boxes[:, 1] + boxes[:, 3]) / 2.0], axis=1)


def _same_class_iou(a: Detections, b: Detections) -> np.ndarray:
    iou = iou_matrix(a.boxes, b.boxes)
    iou[a.class_ids[:, None] != b.class_ids[None, :]] = 0.0
    return iou


def _moved(det: Detections, vel: np.ndarray, width: int, height: int) -> Detections:
    """``det`` shifted by ``vel`` (pixels, per row), clipped to the frame (a box that left it is empty)."""
    if not vel.any():
        return det
    shift = np.concatenate([vel, vel], axis=1).astype(np.float32)
    boxes = det.boxes + shift
    np.clip(boxes[:, 0::2], 0, width, out=boxes[:, 0::2])
    np.clip(boxes[:, 1::2], 0, height, out=boxes[:, 1::2])
    lms = None if det.landmarks is None else det.landmarks + vel[:, None, :].astype(np.float32)
    return Detections(boxes, det.scores, det.class_ids, list(det.labels), lms)


def _rows_in(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mask of rows of ``a`` (N, 4) that also occur exactly in ``b``."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros(len(a), bool)
    return (a[:, None, :] == b[None, :, :]).all(axis=2).any(axis=1)
