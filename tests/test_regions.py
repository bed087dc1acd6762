"""Motion-gated regions and tiling (pipeline/detect/regions/, cameras[].detect) on real frames and a real model."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from pipeline.config.regions import CameraDetectConfig
from pipeline.config.schema import BatchConfig, ConfigError, DetectorConfig, parse_config
from pipeline.core.metrics import MetricsRegistry
from pipeline.core.nms import iou_matrix
from pipeline.core.queues import BoundedQueue
from pipeline.core.types import Detections, Frame, FrameResult
from pipeline.detect.detect_stage import DetectStage
from pipeline.detect.regions.merge import merge_crops
from pipeline.detect.regions.planner import RegionPlanner, pad_boxes, regions_for, tile_grid
from tests.support.walk_in import SHARED, YOLOX_NANO, walk_in_clip

needs_shared = pytest.mark.skipif(
    YOLOX_NANO is None or not YOLOX_NANO.is_file(), reason="needs ../shared/data (vtest.mp4, YOLOX-Nano)"
)


@pytest.fixture(scope="module")
def yolox():
    from pipeline.detect.detectors.factory import build_detector

    det = build_detector(DetectorConfig(model=str(YOLOX_NANO), threads=1))
    yield det
    det.close()


# ---- geometry ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("w", "h", "size", "overlap"), [(1920, 1080, 416, 0.25), (960, 540, 640, 0.1), (300, 200, 416, 0.3)]
)
def test_tiles_cover_the_frame_with_the_configured_overlap(w, h, size, overlap):
    tiles = tile_grid(w, h, size, overlap)
    covered = np.zeros((h, w), bool)
    for x1, y1, x2, y2 in tiles:
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        assert x2 - x1 == min(size, w) and y2 - y1 == min(size, h)
        covered[y1:y2, x1:x2] = True
    assert covered.all()
    xs = sorted({t[0] for t in tiles})
    for a, b in zip(xs, xs[1:], strict=False):
        assert min(size, w) - (b - a) >= overlap * size - 1  # neighbours share at least the overlap


def test_regions_are_detector_sized_squares_holding_every_box():
    boxes = np.array(
        [[10, 10, 40, 90], [60, 20, 90, 100], [1500, 900, 1530, 980], [700, 100, 1300, 700]], np.float32
    )
    regions = regions_for(pad_boxes(boxes, 1920, 1080), 416, 1920, 1080)
    assert len(regions) == 3  # the two close boxes share one region; the 600 px box gets its own, larger one
    for b in boxes:
        assert any(r[0] <= b[0] and r[1] <= b[1] and r[2] >= b[2] and r[3] >= b[3] for r in regions)
    for x1, y1, x2, y2 in regions:
        assert x2 - x1 == y2 - y1 >= 416 and x1 >= 0 and x2 <= 1920 and y1 >= 0 and y2 <= 1080


def _dets(boxes, scores, labels=("person",)) -> Detections:
    n = len(boxes)
    labels = list(labels) * n if len(labels) == 1 else list(labels)
    return Detections(
        np.asarray(boxes, np.float32).reshape(-1, 4),
        np.asarray(scores, np.float32),
        np.zeros(n, np.int32),
        labels,
    )


def test_an_object_cut_by_an_inner_crop_edge_is_reported_once_with_its_whole_box():
    # one person at x 380..440 in a 1000x416 frame; tile A (0..416) cuts it at 416, tile B (300..716) holds it
    crops = [(0, 0, 416, 416), (300, 0, 716, 416)]
    in_a = _dets([[380, 100, 416, 220]], [0.9])  # the cut part scores higher than the whole box
    in_b = _dets([[80, 100, 140, 220]], [0.6])
    out = merge_crops(crops, [in_a, in_b], 1000, 416)
    assert len(out) == 1
    np.testing.assert_allclose(out.boxes[0], [380, 100, 440, 220])
    # a box touching the *frame* edge is not cut: kept even with a smaller duplicate elsewhere
    edge = merge_crops([(0, 0, 416, 416)], [_dets([[0, 100, 30, 200]], [0.5])], 1000, 416)
    assert len(edge) == 1


# ---- config -----------------------------------------------------------------------------------------


def test_config_errors_name_the_camera_detect_key():
    base = {"cameras": [{"id": "a", "source": "x.mp4"}, {"id": "b", "source": "y.mp4"}]}
    base["cameras"][1]["detect"] = {"tiling": {"enabled": True, "overlap": 1.5}}
    with pytest.raises(ConfigError, match=r"cameras\[1\]\.detect\.tiling\.overlap"):
        parse_config(base)
    base["cameras"][1]["detect"] = {"regions": {"enabled": True, "motion": {"blur": 4}}}
    with pytest.raises(ConfigError, match=r"cameras\[1\]\.detect\.regions\.motion\.blur.*odd"):
        parse_config(base)
    base["cameras"][1]["detect"] = {"regions": {"enabeld": True}}
    with pytest.raises(ConfigError, match=r"cameras\[1\]\.detect\.regions\.enabeld"):
        parse_config(base)
    base["cameras"][1]["detect"] = {"regions": {"enabled": True}, "tiling": {"enabled": True, "size": 640}}
    cfg = parse_config(base)
    assert cfg.cameras[1].detect.active and not cfg.cameras[0].detect.active


# ---- a static scene, then a person walks in (real clip, real model, the real detect stage) ----------


def _run_stage(detector, frames, detect_cfg: CameraDetectConfig) -> list[FrameResult]:
    wake = threading.Event()
    q: BoundedQueue[Frame] = BoundedQueue(len(frames) + 1, "block", "cam", wake)
    results: list[FrameResult] = []
    stage = DetectStage(
        detector, {"cam": q}, wake, results.append, BatchConfig(max_batch=4, max_wait_ms=5), MetricsRegistry(),
        camera_detect={"cam": detect_cfg},
    )  # fmt: skip
    for i, img in enumerate(frames):
        q.put(Frame("cam", i, i / 10.0, time.time(), img))
    q.close()
    stage.start()
    assert stage.join(120)
    return results


@needs_shared
@pytest.mark.parametrize("scale", [1.0, 2.0])  # 480x360 as recorded; 960x720, where regions are cut
def test_static_scene_skips_inference_and_a_person_walking_in_is_found_within_two_frames(yolox, scale):
    static = 40
    frames, truth = walk_in_clip(yolox, static_frames=static, walk_frames=12, scale=scale)
    cfg = CameraDetectConfig.model_validate({"regions": {"enabled": True, "full_scan_every": 25}})
    results = _run_stage(yolox, frames, cfg)
    assert [r.frame.seq for r in results] == list(range(len(frames)))
    scans = [r.scan for r in results]
    assert all(s is not None for s in scans)
    # static part: a full frame costs one detector input; the static frames cost < 20 % of that on average
    static_inputs = sum(s.crops for s in scans[:static])
    assert static_inputs / static < 0.2, [s.kind for s in scans[:static]]
    assert sum(s.kind == "skip" for s in scans[:static]) >= static - 2  # only the periodic full scans ran
    # the person is found within 2 detected frames of stepping in
    found_at = None
    for i in range(static, len(frames)):
        d = results[i].detections
        person = np.array([lab == "person" for lab in d.labels], bool)
        if person.any() and iou_matrix(truth[i][None], d.boxes[person]).max() >= 0.5:
            found_at = i
            break
    assert found_at is not None and found_at - static < 2
    # not the periodic full scan (frames 0, 25, 50): the motion of the person made the detector run.
    # (480x360 is under twice the 416 region, so the planner scans it whole rather than cut a region.)
    assert scans[found_at].motion_boxes >= 1 and scans[found_at].kind == ("regions" if scale > 1 else "full")
    # and kept while walking on: every later frame has the person
    for i in range(found_at, len(frames)):
        d = results[i].detections
        person = np.array([lab == "person" for lab in d.labels], bool)
        assert person.any() and iou_matrix(truth[i][None], d.boxes[person]).max() >= 0.5, i


@needs_shared
def test_same_clip_with_regions_off_runs_the_detector_on_every_frame(yolox):
    """The peer of the test above: the default (whole frame) costs one detector input per frame."""
    frames, _ = walk_in_clip(yolox, static_frames=10, walk_frames=2)
    results = _run_stage(yolox, frames, CameraDetectConfig())
    assert all(r.scan is None for r in results) and len(results) == len(frames)


# ---- tiles on labelled 1080p street frames ----------------------------------------------------------


@needs_shared
def test_tiles_find_the_small_people_that_the_whole_frame_misses(yolox):
    import cv2

    root = SHARED / "tracks" / "MOT17-04-FRCNN"
    gt = json.loads((root / "instances.json").read_text())
    image = cv2.imread(str(root / "img1" / "000001.jpg"))
    people = np.array(
        [[x, y, x + w, y + h] for a in gt["annotations"] if a["image_id"] == 1 and a["category_id"] == 1
         and a["visibility"] >= 0.5 for x, y, w, h in [a["bbox"]]], np.float32)  # fmt: skip

    def recall(dets: Detections) -> float:
        p = dets.boxes[[lab == "person" for lab in dets.labels]]
        if not len(p):
            return 0.0
        iou = iou_matrix(people, p)
        hit = 0
        taken = np.zeros(len(p), bool)
        for i in np.argsort(-iou.max(axis=1)):
            j = int(np.argmax(np.where(taken, -1, iou[i])))
            if iou[i, j] >= 0.5 and not taken[j]:
                taken[j] = True
                hit += 1
        return hit / len(people)

    full = RegionPlanner(CameraDetectConfig(), 416).detect(yolox, image)[0]
    tiles, info = RegionPlanner(
        CameraDetectConfig.model_validate({"tiling": {"enabled": True, "size": 640}}), 416
    ).detect(yolox, image)
    assert info.kind == "tiles" and info.crops == 9  # 4 x 2 tiles of 640 + the whole frame
    assert len(people) >= 20
    assert recall(full) < 0.7
    assert recall(tiles) >= 0.85


def _mot_people(seq: str, frame: int) -> np.ndarray:
    """Person boxes (every visibility) of one labelled MOT17 frame, x1y1x2y2."""
    gt = json.loads((SHARED / "tracks" / seq / "instances.json").read_text())
    image_id = next(im["id"] for im in gt["images"] if im["frame"] == frame)
    return np.array(
        [[x, y, x + w, y + h] for a in gt["annotations"] if a["image_id"] == image_id
         and a["category_id"] == 1 for x, y, w, h in [a["bbox"]]], np.float32).reshape(-1, 4)  # fmt: skip


def _found(people: np.ndarray, dets: Detections) -> int:
    """People matched one to one by a person box with IoU >= 0.5 (greedy, best score first)."""
    p = dets.select(np.array([lab == "person" for lab in dets.labels], bool))
    iou = iou_matrix(p.boxes, people)
    taken = np.zeros(len(people), bool)
    for i in np.argsort(-p.scores, kind="stable"):
        j = int(np.argmax(np.where(taken, -1.0, iou[i]))) if len(people) else 0
        if len(people) and iou[i, j] >= 0.5 and not taken[j]:
            taken[j] = True
    return int(taken.sum())


@needs_shared
def test_a_seam_piece_of_a_person_is_merged_into_the_person_on_a_real_frame(yolox):
    """MOT17-04 frame 4 (1080p street from above), 416 px tiles with 10 % overlap + the whole frame,
    threshold 0.3: the top-left tile's bottom edge (y = 416) cuts a person, and the tile reports the
    upper part as a person box (IoU < 0.5 with anyone, >= 90 % inside one labelled person). The old merge
    (a cut box is dropped only when >= 50 % inside one *whole* box) kept that piece as a second person; the
    greedy IoS merge folds it into the person, and loses no one that the old merge found."""
    import cv2

    from pipeline.core.nms import box_area, intersection_matrix

    image = cv2.imread(str(SHARED / "tracks" / "MOT17-04-FRCNN" / "img1" / "000004.jpg"))
    people = _mot_people("MOT17-04-FRCNN", 4)
    cfg = CameraDetectConfig.model_validate({"tiling": {"enabled": True, "size": 416, "overlap": 0.1}})
    planner = RegionPlanner(cfg, 416)
    plan = planner.plan(image)
    corner = plan.crops.index((0, 0, 416, 416))
    crops = [image[y1:y2, x1:x2] for x1, y1, x2, y2 in plan.crops]
    results = [r.select(r.scores >= 0.3) for r in yolox.detect(crops)]  # detector.score_threshold 0.3
    tile = results[corner].select(np.array([lab == "person" for lab in results[corner].labels], bool))
    seam = tile.boxes[tile.boxes[:, 3] >= 416 - 2]  # boxes the tile's bottom edge cut (frame pixels here)
    inside = intersection_matrix(seam, people) / box_area(seam)[:, None]
    pieces = seam[(iou_matrix(seam, people) < 0.5).all(axis=1) & (inside >= 0.9).any(axis=1)]
    assert len(pieces) >= 1, "the frame no longer shows a seam piece; pick another frame"
    merged, _ = planner.finish(plan, results)
    left = iou_matrix(pieces, merged.boxes) > 0.7
    assert not left.any(), f"seam piece(s) {pieces[left.any(axis=1)].tolist()} survived the merge"
    whole = yolox.detect([image])[0]
    whole = whole.select(whole.scores >= 0.3)
    assert _found(people, merged) >= _found(people, whole) + 10  # tiles find more, none lost to merging


@needs_shared
def test_batched_stage_gives_each_camera_what_its_own_planner_gives_and_reports_the_scan(yolox):
    """Two cameras in one batch, one tiled (9 crops) and one whole-frame: the crops of both go through one
    detector call, each camera gets its own frame's boxes back, events and metrics say what ran."""
    import cv2

    from pipeline.analyze.analyzers import detections_event

    image = cv2.imread(str(SHARED / "tracks" / "MOT17-04-FRCNN" / "img1" / "000001.jpg"))
    tiled = CameraDetectConfig.model_validate({"tiling": {"enabled": True, "size": 640}})
    expected, _ = RegionPlanner(tiled, 416, yolox.nms_iou).detect(yolox, image)
    whole = yolox.detect([image])[0]

    calls: list[int] = []
    real_detect = yolox.detect

    def counting(images):
        calls.append(len(images))
        return real_detect(images)

    wake = threading.Event()
    queues = {c: BoundedQueue(4, "block", c, wake) for c in ("tiled", "plain")}
    results: list[FrameResult] = []
    registry = MetricsRegistry()
    yolox.detect = counting
    try:
        stage = DetectStage(
            yolox, queues, wake, results.append, BatchConfig(max_batch=2, max_wait_ms=500), registry,
            camera_detect={"tiled": tiled, "plain": CameraDetectConfig()}, nms_iou=yolox.nms_iou,
        )  # fmt: skip
        for cam in queues:
            queues[cam].put(Frame(cam, 0, 0.0, time.time(), image))
            queues[cam].close()
        stage.start()
        assert stage.join(120)
    finally:
        del yolox.detect
    assert (
        calls[0] == 10
    )  # 9 tiles + 1 whole frame in one call (YOLOX-Nano's fixed batch of 1 then splits it)
    by_cam = {r.frame.camera_id: r for r in results}
    np.testing.assert_allclose(by_cam["tiled"].detections.boxes, expected.boxes, atol=1e-3)
    np.testing.assert_allclose(by_cam["plain"].detections.boxes, whole.boxes, atol=1e-3)
    assert by_cam["tiled"].scan is not None and by_cam["tiled"].scan.kind == "tiles"
    assert by_cam["tiled"].scan.crops == 9 and by_cam["plain"].scan is None
    assert detections_event(by_cam["tiled"]).data["scan"] == {
        "kind": "tiles",
        "crops": 9,
        "carried": 0,
        "motion_boxes": 0,
    }
    assert "scan" not in detections_event(by_cam["plain"]).data
    text = registry.prometheus_text()
    assert "vidpipe_detect_crops_total{} 9.0" in text and "vidpipe_detect_scans_tiles_total{} 1.0" in text


def test_a_camera_coming_back_at_another_resolution_starts_over_with_a_full_scan():
    from pipeline.detect.detectors.base import NullDetector

    planner = RegionPlanner(CameraDetectConfig.model_validate({"regions": {"enabled": True}}), 416)
    rng = np.random.default_rng(1)
    big = rng.integers(0, 255, (720, 1280, 3), np.uint8)
    assert planner.detect(NullDetector(), big)[1].kind == "full"
    assert planner.detect(NullDetector(), big)[1].kind == "skip"
    small = rng.integers(0, 255, (360, 640, 3), np.uint8)
    assert planner.detect(NullDetector(), small)[1].kind == "full"


def test_regions_can_be_switched_on_and_off_for_a_running_camera():
    """configure_camera: what a camera added or edited at run time uses; the next frame follows it."""
    from pipeline.detect.detectors.base import NullDetector

    wake = threading.Event()
    q: BoundedQueue[Frame] = BoundedQueue(10, "block", "cam", wake)
    results: list[FrameResult] = []
    got = threading.Event()

    def sink(r: FrameResult) -> None:
        results.append(r)
        got.set()

    stage = DetectStage(NullDetector(), {"cam": q}, wake, sink, BatchConfig(), MetricsRegistry())
    stage.start()
    img = np.random.default_rng(0).integers(0, 255, (480, 900, 3), np.uint8)

    def one(seq: int) -> FrameResult:
        got.clear()
        q.put(Frame("cam", seq, seq / 10, time.time(), img))
        assert got.wait(10)
        return results[-1]

    assert one(0).scan is None
    stage.configure_camera("cam", CameraDetectConfig.model_validate({"tiling": {"enabled": True}}))
    scan = one(1).scan
    assert (
        scan is not None and scan.kind == "tiles" and scan.crops == 3 * 2 + 1
    )  # 3 x 2 tiles of 416 + the frame
    stage.configure_camera("cam", None)
    assert one(2).scan is None
    q.close()
    assert stage.join(10)


@needs_shared
def test_evaluate_tiles_option_scores_the_small_people_on_a_1080p_frame(capsys):
    import argparse
    import re

    from pipeline.cli import evaluate

    root = SHARED / "tracks" / "MOT17-04-FRCNN"

    def ap50(*extra: str) -> tuple[float, str]:
        parser = argparse.ArgumentParser()
        evaluate.add_arguments(parser)
        args = parser.parse_args(
            ["--annotations", str(root / "instances.json"), "--images", str(root), "--model", str(YOLOX_NANO),
             "--classes", "person", "--limit", "1", "--score-threshold", "0.05", "--threads", "1", *extra]
        )  # fmt: skip
        assert evaluate.main(args) == 0
        out = capsys.readouterr().out
        return float(re.search(r"\| AP50 \| ([0-9.]+) \|", out).group(1)), out

    whole, _ = ap50()
    tiled, out = ap50("--tiles", "640")
    assert "tiles 640 px" in out
    assert tiled > whole + 0.1
    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    bad = parser.parse_args(["--annotations", str(root / "instances.json"), "--images", str(root), "--model",
                             str(YOLOX_NANO), "--limit", "1", "--tiles", "640", "--tile-overlap", "0.95"])  # fmt: skip
    assert evaluate.main(bad) == 2
    assert "--tiles/--tile-overlap" in capsys.readouterr().err
