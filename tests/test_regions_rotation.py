"""Rotating tiles (``cameras[].detect.tiling.tiles_per_frame``): the grid run a few tiles per detected
frame, objects of the tiles not run carried (pipeline/detect/regions/planner.py), on real MOT17 frames."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config.regions import CameraDetectConfig
from pipeline.config.schema import ConfigError, DetectorConfig, parse_config
from pipeline.core.nms import iou_matrix
from pipeline.core.types import Detections
from pipeline.detect.regions.planner import RegionPlanner, tile_grid
from tests.support.walk_in import SHARED, YOLOX_NANO

needs_shared = pytest.mark.skipif(
    YOLOX_NANO is None or not YOLOX_NANO.is_file(), reason="needs ../shared/data (MOT17, YOLOX-Nano)"
)

FRAME = np.zeros((1080, 1920, 3), np.uint8)
# 1080 px tiles, 10 % overlap, no whole frame (the street profile): tile A x 0..1080, tile B x 840..1920
TWO_TILES = {"tiling": {"enabled": True, "size": 1080, "overlap": 0.1, "full_frame": False}}


def _cfg(tiles_per_frame: int, velocity: bool = True, base: dict | None = None) -> CameraDetectConfig:
    t = dict((base or TWO_TILES)["tiling"], tiles_per_frame=tiles_per_frame, carry_velocity=velocity)
    return CameraDetectConfig.model_validate({"tiling": t})


def _person(*boxes: list[float]) -> Detections:
    n = len(boxes)
    return Detections(
        np.asarray(boxes, np.float32).reshape(-1, 4), np.full(n, 0.8, np.float32), np.zeros(n, np.int32),
        ["person"] * n,
    )  # fmt: skip


def _step(planner: RegionPlanner, found: dict) -> tuple[Detections, object, object]:
    """One detected frame; ``found``: crop -> person boxes in frame pixels that the crop detects."""
    plan = planner.plan(FRAME)
    results = []
    for crop in plan.crops:
        boxes = found.get(crop, [])
        det = _person(*boxes) if boxes else Detections.empty()
        if len(det):
            det.boxes[:, 0::2] -= crop[0]
            det.boxes[:, 1::2] -= crop[1]
        results.append(det)
    out, info = planner.finish(plan, results)
    return out, info, plan


@pytest.mark.parametrize(("size", "overlap", "full", "n"), [(640, 0.25, True, 2), (640, 0.25, True, 3),
                                                           (1080, 0.1, False, 1), (512, 0.25, False, 4)])  # fmt: skip
def test_each_tile_runs_within_its_turn_and_a_frame_costs_n_tiles(size, overlap, full, n):
    cfg = _cfg(n, base={"tiling": {"enabled": True, "size": size, "overlap": overlap, "full_frame": full}})
    planner = RegionPlanner(cfg, 416)
    grid = tile_grid(1920, 1080, size, overlap)
    turn = -(-len(grid) // n)
    last_run = {tile: -1 for tile in grid}
    for frame in range(3 * turn):
        plan = planner.plan(FRAME)
        assert plan.kind == "tiles" and len(plan.tiles_run) == n
        assert plan.crops == list(plan.tiles_run) + ([(0, 0, 1920, 1080)] if full else [])
        for tile in plan.tiles_run:
            last_run[tile] = frame
        planner.finish(plan, [Detections.empty()] * len(plan.crops))
        if frame >= turn - 1:  # after the first turn, no tile is older than one turn
            assert min(last_run.values()) >= frame - turn + 1


def test_a_grid_no_larger_than_n_runs_whole_and_carries_nothing():
    planner = RegionPlanner(_cfg(2), 416)
    plan = planner.plan(FRAME)
    assert plan.grid is None and len(plan.crops) == 2


def test_a_person_is_carried_while_their_tile_rests_and_dropped_when_it_runs_without_them():
    planner = RegionPlanner(_cfg(1, velocity=False), 416)
    a, b = (0, 0, 1080, 1080), (840, 0, 1920, 1080)
    person = [100.0, 500.0, 140.0, 600.0]  # in tile A only
    out, info, plan = _step(planner, {a: [person]})
    assert plan.tiles_run == (a,) and len(out) == 1 and info.carried == 0
    out, info, plan = _step(planner, {})  # tile B runs: the person in A is carried
    assert plan.tiles_run == (b,) and info.carried == 1
    np.testing.assert_allclose(out.boxes, [person])
    out, info, plan = _step(planner, {})  # tile A runs again and does not find them: dropped
    assert plan.tiles_run == (a,) and len(out) == 0 and info.carried == 0
    out, info, plan = _step(planner, {})
    assert len(out) == 0  # and not carried again


def test_a_carried_box_moves_on_at_its_velocity():
    planner = RegionPlanner(_cfg(1), 416)
    a = (0, 0, 1080, 1080)
    _step(planner, {a: [[100.0, 500.0, 140.0, 600.0]]})  # frame 1, tile A: found at x 100
    out, _, _ = _step(planner, {})  # frame 2, tile B: carried where it was (no velocity yet)
    np.testing.assert_allclose(out.boxes, [[100, 500, 140, 600]])
    _step(planner, {a: [[110.0, 500.0, 150.0, 600.0]]})  # frame 3, tile A: 10 px on in 2 frames
    out, info, _ = _step(planner, {})  # frame 4, tile B: carried 5 px further
    assert info.carried == 1
    np.testing.assert_allclose(out.boxes, [[115, 500, 155, 600]])


def test_a_carried_person_found_again_by_the_whole_frame_is_reported_once():
    base = {"tiling": {"enabled": True, "size": 1080, "overlap": 0.1, "full_frame": True}}
    planner = RegionPlanner(_cfg(1, velocity=False, base=base), 416)
    a, whole = (0, 0, 1080, 1080), (0, 0, 1920, 1080)
    _step(planner, {a: [[100.0, 400.0, 200.0, 700.0]]})
    # tile B runs; the whole frame sees the same person 40 px on (IoU 0.43 with the carried box: below NMS)
    out, info, _ = _step(planner, {whole: [[140.0, 400.0, 240.0, 700.0]]})
    assert len(out) == 1 and info.carried == 0
    np.testing.assert_allclose(out.boxes, [[140, 400, 240, 700]])


def test_config_errors_name_the_key():
    base = {"cameras": [{"id": "a", "source": "x.mp4"}]}
    base["cameras"][0]["detect"] = {"tiling": {"enabled": True, "tiles_per_frame": 0}}
    with pytest.raises(ConfigError, match=r"cameras\[0\]\.detect\.tiling\.tiles_per_frame"):
        parse_config(base)
    base["cameras"][0]["detect"] = {"tiling": {"enabled": True, "carry_velocty": False}}
    with pytest.raises(ConfigError, match=r"cameras\[0\]\.detect\.tiling\.carry_velocty"):
        parse_config(base)
    base["cameras"][0]["detect"] = {
        "tiling": {"enabled": True, "tiles_per_frame": 2},
        "regions": {"enabled": True},
    }
    with pytest.raises(ConfigError, match=r"cameras\[0\]\.detect.*tiling\.tiles_per_frame.*regions\.enabled"):
        parse_config(base)
    base["cameras"][0] = {
        "id": "a",
        "source": "x.mp4",
        "profile": "street",
        "detect": {"tiling": {"tiles_per_frame": 1}},
    }
    assert parse_config(base).cameras[0].detect.tiling.tiles_per_frame == 1


# ---- a real model on real frames ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def yolox():
    from pipeline.detect.detectors.factory import build_detector

    det = build_detector(DetectorConfig(model=str(YOLOX_NANO), threads=1, score_threshold=0.3))
    yield det
    det.close()


def _frames(seq: str) -> list[np.ndarray]:
    import cv2

    return [cv2.imread(str(p)) for p in sorted((SHARED / "tracks" / seq / "img1").glob("*.jpg"))]


@needs_shared
@pytest.mark.parametrize("seq", ["MOT17-10-FRCNN", "MOT17-04-FRCNN"])
def test_no_duplicate_people_on_a_real_sequence(yolox, seq):
    """640 px tiles two a frame plus the whole frame, the people of the other tiles carried (MOT17-10: a
    hand-held camera walking down a street, near people large enough for the whole frame to find them
    again while they are carried): no two person boxes of a frame are one person (IoU >= 0.45, the
    detector's NMS), and the carrying is real (boxes are carried on every frame after the first)."""
    base = {"tiling": {"enabled": True, "size": 640, "overlap": 0.25, "full_frame": True}}
    planner = RegionPlanner(_cfg(2, base=base), 416, yolox.nms_iou)
    carried = []
    for image in _frames(seq):
        out, info = planner.detect(yolox, image)
        carried.append(info.carried)
        p = out.boxes[[lab == "person" for lab in out.labels]]
        iou = iou_matrix(p, p)
        np.fill_diagonal(iou, 0.0)
        assert iou.max(initial=0.0) < yolox.nms_iou, f"duplicate person boxes: IoU {iou.max():.2f}"
    assert all(c > 0 for c in carried[1:]), carried


@needs_shared
def test_rotation_keeps_most_of_what_the_whole_grid_finds_on_mot17_04(yolox):
    """The two 1080 px tiles of the street profile, one a frame: after the first frame the carried boxes
    keep at least 90 % of the half-visible people the full grid finds, at half its detector inputs."""
    import json

    gt = json.loads((SHARED / "tracks" / "MOT17-04-FRCNN" / "instances.json").read_text())
    ids = {im["frame"]: im["id"] for im in gt["images"]}
    full = RegionPlanner(CameraDetectConfig.model_validate(TWO_TILES), 416, yolox.nms_iou)
    rot = RegionPlanner(_cfg(1), 416, yolox.nms_iou)
    found = {"full": 0, "rot": 0}
    inputs = {"full": 0, "rot": 0}
    for n, image in enumerate(_frames("MOT17-04-FRCNN"), start=1):
        people = np.array(
            [[x, y, x + w, y + h] for a in gt["annotations"] if a["image_id"] == ids[n]
             and a["category_id"] == 1 and a["visibility"] >= 0.5 for x, y, w, h in [a["bbox"]]], np.float32)  # fmt: skip
        for name, planner in (("full", full), ("rot", rot)):
            out, info = planner.detect(yolox, image)
            inputs[name] += info.crops
            if n > 1:
                p = out.boxes[[lab == "person" for lab in out.labels]]
                iou = iou_matrix(people, p)
                taken = np.zeros(len(p), bool)
                for i in np.argsort(-iou.max(axis=1, initial=0.0)):
                    j = int(np.argmax(np.where(taken, -1.0, iou[i]))) if len(p) else 0
                    if len(p) and iou[i, j] >= 0.5 and not taken[j]:
                        taken[j] = True
                found[name] += int(taken.sum())
    assert inputs["rot"] * 2 == inputs["full"]
    assert found["full"] >= 100
    assert found["rot"] >= 0.9 * found["full"], found


@needs_shared
def test_the_batched_detect_stage_rotates_and_carries_as_the_planner_alone_does(yolox):
    """Four frames of one ``street-rotate`` camera queued at once, so the detect stage plans several of them
    before it merges the first: each frame gets the boxes a lone planner gives, one detector input a frame,
    and its event's scan says how many people were carried."""
    import threading
    import time

    from pipeline.analyze.analyzers import detections_event
    from pipeline.config.profiles import PROFILES
    from pipeline.config.schema import BatchConfig
    from pipeline.core.metrics import MetricsRegistry
    from pipeline.core.queues import BoundedQueue
    from pipeline.core.types import Frame, FrameResult
    from pipeline.detect.detect_stage import DetectStage

    cfg = CameraDetectConfig.model_validate(PROFILES["street-rotate"])
    images = _frames("MOT17-04-FRCNN")[:4]
    alone = RegionPlanner(cfg, 416, yolox.nms_iou)
    expected = [alone.detect(yolox, im) for im in images]
    assert [info.crops for _, info in expected] == [1, 1, 1, 1]
    assert all(info.carried > 0 for _, info in expected[1:])

    wake = threading.Event()
    q: BoundedQueue[Frame] = BoundedQueue(8, "block", "cam", wake)
    results: list[FrameResult] = []
    stage = DetectStage(
        yolox, {"cam": q}, wake, results.append, BatchConfig(max_batch=4, max_wait_ms=500), MetricsRegistry(),
        camera_detect={"cam": cfg}, nms_iou=yolox.nms_iou,
    )  # fmt: skip
    for i, im in enumerate(images):
        q.put(Frame("cam", i, i / 25.0, time.time(), im))
    q.close()
    stage.start()
    assert stage.join(120)
    assert [r.frame.seq for r in results] == [0, 1, 2, 3]
    for r, (dets, info) in zip(results, expected, strict=True):
        np.testing.assert_allclose(r.detections.boxes, dets.boxes, atol=1e-3)
        assert detections_event(r).data["scan"] == {
            "kind": "tiles", "crops": 1, "carried": info.carried, "motion_boxes": 0,
        }  # fmt: skip


# ---- motion-gated tiles ------------------------------------------------------------------------------


def test_motion_gated_tiles_run_only_where_something_moves_and_carry_the_rest():
    cfg = CameraDetectConfig.model_validate(
        {"tiling": dict(TWO_TILES["tiling"], motion_gate=True), "regions": {"full_scan_every": 4}}
    )
    planner = RegionPlanner(cfg, 416)
    a, b = (0, 0, 1080, 1080), (840, 0, 1920, 1080)
    still = np.full((1080, 1920, 3), 90, np.uint8)

    def step(image, found):
        plan = planner.plan(image)
        results = []
        for crop in plan.crops:
            boxes = [np.subtract(bx, [crop[0], crop[1], crop[0], crop[1]]) for bx in found.get(crop, [])]
            results.append(_person(*boxes) if boxes else Detections.empty())
        out, info = planner.finish(plan, results)
        return plan, out, info

    person = [100.0, 500.0, 140.0, 600.0]  # in tile A only, standing still
    plan, out, _ = step(still, {a: [person]})
    assert plan.tiles_run == (a, b)  # the first frame: every tile
    plan, out, info = step(still, {})  # nothing moves: no inference, the person carried
    assert plan.kind == "skip" and plan.crops == [] and info.carried == 1 and len(out) == 1
    walker = still.copy()
    walker[300:700, 1500:1650] = 250  # someone appears in tile B only
    plan, out, info = step(walker, {b: [[1500.0, 300.0, 1650.0, 700.0]]})
    assert plan.tiles_run == (b,) and info.carried == 1 and len(out) == 2
    plan, _, _ = step(walker, {})  # the walker still there (background learning), tile A still resting
    assert a not in plan.tiles_run
    plan, _, _ = step(walker, {a: [person]})  # tile A ran 4 detected frames ago (full_scan_every): due again
    assert a in plan.tiles_run


def test_motion_gate_and_regions_together_are_refused_naming_the_key():
    base = {"cameras": [{"id": "a", "source": "x.mp4"}]}
    base["cameras"][0]["detect"] = {
        "tiling": {"enabled": True, "motion_gate": True},
        "regions": {"enabled": True},
    }
    with pytest.raises(ConfigError, match=r"cameras\[0\]\.detect.*tiling\.motion_gate.*regions\.enabled"):
        parse_config(base)


@needs_shared
def test_gated_tiles_skip_a_static_scene_and_find_a_person_walking_in(yolox):
    """vtest.mp4's empty scene with sensor noise, enlarged to 1440x1080 (6 tiles of 640 px), then a real
    walker steps in: with ``motion_gate`` the static frames run no tile (but the first frame and the
    periodic rescan), and the walker is found from the second frame they are in."""
    from tests.support.walk_in import walk_in_clip

    frames, truth = walk_in_clip(yolox, static_frames=30, walk_frames=8, scale=3.0)
    cfg = CameraDetectConfig.model_validate(
        {"tiling": {"enabled": True, "size": 640, "overlap": 0.25, "full_frame": False, "motion_gate": True}}
    )
    planner = RegionPlanner(cfg, 416, yolox.nms_iou)
    inputs, seen = [], []
    for image, box in zip(frames, truth, strict=True):
        out, info = planner.detect(yolox, image)
        inputs.append(info.crops)
        if box is not None:
            p = out.boxes[[lab == "person" for lab in out.labels]]
            seen.append(bool(len(p)) and float(iou_matrix(box[None], p).max()) >= 0.5)
    grid = len(tile_grid(1440, 1080, 640, 0.25))
    assert inputs[0] == grid == 6
    static = inputs[1:30]
    assert static.count(0) >= 27 and sum(static) <= grid  # at most one periodic rescan (every 25 frames)
    assert len(seen) >= 6 and all(seen[1:]), seen
    assert all(0 < n < grid for n in inputs[31:]), inputs[30:]  # only the tiles the walker is in
