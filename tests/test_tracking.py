"""Tracking, zones, lines, event lifecycle and snapshots on generated video of moving shapes."""

from __future__ import annotations

import os
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.analyze.tracking.analyzer import TrackingAnalyzer
from pipeline.analyze.tracking.snapshots import SnapshotStore
from pipeline.config.schema import ConfigError, RedisConfig, parse_config
from pipeline.config.tracking import CameraZonesConfig, SnapshotConfig, TrackingConfig
from pipeline.core.events import Event
from pipeline.core.types import Detections, FaceMatch, Frame, FrameResult
from pipeline.deliver.publisher import Publisher
from tests.support.tracking_scene import Mover, Scene

RED, GREEN, BLUE, YELLOW, CYAN = (0, 0, 255), (0, 255, 0), (255, 0, 0), (0, 255, 255), (255, 255, 0)


def make(tmp_path: Path, zones: dict | None = None, **tracking) -> TrackingAnalyzer:
    cfg = TrackingConfig(enabled=True, **tracking)
    return TrackingAnalyzer("cam1", cfg, CameraZonesConfig.model_validate(zones or {}), tmp_path / "snaps")


def run(an: TrackingAnalyzer, results) -> tuple[list[Event], dict[int, list[int]]]:
    """Events, and for each ground-truth mover the track id it carried on every frame it was tracked."""
    events: list[Event] = []
    ids: dict[int, list[int]] = defaultdict(list)
    for res in results:
        events += an.process(res)
        for t in an.tracker.tracks:
            if t.track_id > 0 and t.det_index >= 0:
                ids[res.extras["gt"][t.det_index]].append(t.track_id)
    events += an.close()
    return events, ids


def by_type(events: list[Event]) -> Counter:
    return Counter(e.type for e in events)


def single_det(box, score=0.9, label="person") -> Detections:
    return Detections(
        np.array([box], np.float32), np.array([score], np.float32), np.zeros(1, np.int32), [label]
    )


def frame_result(f: int, det: Detections, size=(360, 640), fps=10.0) -> FrameResult:
    img = np.zeros((*size, 3), np.uint8)
    return FrameResult(Frame("cam1", f, f / fps, 1000.0 + f / fps, img), det, "test")


# -- tracker --------------------------------------------------------------------------------------
def test_ids_survive_crossing_with_occlusion(tmp_path):
    # two people walk through each other; the one drawn on top hides most of the other for several frames
    scene = Scene(
        [
            Mover("person", RED, 0, 79, 60, 180, 6, 0, 40, 100),
            Mover("person", GREEN, 0, 79, 580, 190, -6, 0, 40, 100),
            Mover("car", BLUE, 10, 79, 320, 60, 0, 2.5, 120, 60),  # a car driving down across both paths
        ]
    )
    events, ids = run(make(tmp_path), scene.results("cam1", 80))
    for mover, seq in ids.items():
        assert len(set(seq)) == 1, f"mover {mover} changed id: {sorted(set(seq))}"
    assert len({seq[0] for seq in ids.values()}) == 3  # three distinct ids
    counts = by_type(events)
    assert counts["tracks.new"] == 3 and counts["tracks.end"] == 3


def test_missed_frames_keep_id_until_max_lost(tmp_path):
    scene = Scene([Mover("person", RED, 0, 99, 50, 180, 5, 0, 40, 100)])
    # the detector misses the person on frames 20-29 (within max_lost) and 50-89 (beyond it)
    hidden = lambda f: {0} if 20 <= f < 30 or 50 <= f < 90 else set()  # noqa: E731
    events, ids = run(make(tmp_path, max_lost_frames=15), scene.results("cam1", 100, hidden=hidden))
    first, second = ids[0][0], ids[0][-1]
    assert set(ids[0]) == {first, second} and first != second
    # re-acquired after the 10-frame gap by the Kalman prediction, with the same id
    assert ids[0][:30].count(first) == len(ids[0][:30])
    ends = [e for e in events if e.type == "tracks.end"]
    assert [e.data["end_reason"] for e in ends] == ["lost", "closed"]
    assert ends[0].data["track_id"] == first
    assert ends[0].data["last_seen"] == pytest.approx(1_700_000_000.0 + 4.9, abs=1e-3)


def test_low_score_pass_keeps_id(tmp_path):
    # detections at 0.3 (below high_score) for 15 frames: only the second ByteTrack pass can match them
    an = make(tmp_path, max_lost_frames=5)
    tids = []
    for f in range(40):
        score = 0.3 if 10 <= f < 25 else 0.9
        an.process(frame_result(f, single_det([100 + 4 * f, 100, 140 + 4 * f, 200], score)))
        tids.append([t.track_id for t in an.tracker.tracks if t.det_index >= 0])
    assert all(t == [1] for t in tids[1:]), tids


def test_false_positive_flicker_and_low_median_not_published(tmp_path):
    an = make(tmp_path)
    events = []
    rng = np.random.default_rng(1)
    for f in range(60):
        boxes = [[300, 100, 340, 200]]
        scores = [float(rng.uniform(0.3, 0.48))]  # a steady but weak object: median < threshold 0.5
        if f % 7 == 3:  # a one-frame blip somewhere else each time
            x = (f * 53) % 500
            boxes.append([x, 300, x + 40, 340])
            scores.append(0.9)
        det = Detections(
            np.array(boxes, np.float32), np.array(scores, np.float32), np.zeros(len(boxes), np.int32),
            ["person"] * len(boxes),
        )  # fmt: skip
        if f == 0:  # give the weak object a start (new tracks need new_track_score)
            det.scores[0] = 0.9
        events += an.process(frame_result(f, det))
    events += an.close()
    assert events == []


# -- lifecycle --------------------------------------------------------------------------------------
def test_lifecycle_new_throttled_updates_end(tmp_path):
    scene = Scene([Mover("person", RED, 5, 104, 50, 180, 5, 0, 40, 100)])  # 10 s on screen at 10 fps
    events, _ = run(make(tmp_path, update_interval_s=2.0), scene.results("cam1", 140))
    types = [e.type for e in events]
    assert types[0] == "tracks.new" and types[-1] == "tracks.end"
    assert types.count("tracks.new") == 1 and types.count("tracks.end") == 1
    updates = [e for e in events if e.type == "tracks.update"]
    assert 3 <= len(updates) <= 5  # ~10 s / 2 s, not one per frame
    gaps = np.diff([e.ts for e in events if e.type != "tracks.end"])
    assert (gaps >= 2.0 - 1e-6).all()
    new, end = events[0], events[-1]
    assert new.data["track_id"] == end.data["track_id"] and new.data["object_id"] == end.data["object_id"]
    assert end.data["end_reason"] == "lost"
    assert end.data["first_seen"] == pytest.approx(1_700_000_000.5, abs=1e-3)
    assert end.data["last_seen"] == pytest.approx(1_700_000_010.4, abs=1e-3)
    assert end.data["frames"] == 100
    assert 0.9 <= end.data["best_score"] <= 0.95
    assert end.frame_seq > 104 and new.frame_seq == 7  # confirmed on its third frame
    Event.from_json(end.to_json())  # schema round-trip


def _face(box: list[float], identity: str | None) -> FaceMatch:
    return FaceMatch(tuple(box), identity, identity, 0.3 if identity else None, None)  # type: ignore[arg-type]


def test_sub_label_from_face_stage_and_setter(tmp_path):
    an = make(tmp_path, update_interval_s=100.0)
    events = []
    for f in range(20):
        res = frame_result(f, single_det([100, 50, 180, 300]))
        if f == 10:  # the face stage names the face inside the person's head area
            res.faces = [_face([125, 60, 155, 95], "alice")]
        events += an.process(res)
    updates = [e for e in events if e.type == "tracks.update"]
    assert len(updates) == 1 and updates[0].data["sub_label"] == "alice" and updates[0].frame_seq == 10
    assert an.set_sub_label(1, "bob") is True and an.set_sub_label(99, "x") is False
    events = an.process(frame_result(20, single_det([100, 50, 180, 300])))
    assert [e.data["sub_label"] for e in events] == ["bob"]
    assert an.close()[-1].data["sub_label"] == "bob"


def test_sub_label_only_for_named_faces_in_the_head_area(tmp_path):
    # the face stage's typed result: its own face boxes with an identity (None = unknown face)
    an = make(tmp_path, update_interval_s=100.0)
    events = []
    for f in range(8):
        det = Detections(np.array([[100, 50, 180, 300], [300, 50, 380, 300]], np.float32),
                         np.full(2, 0.9, np.float32), np.zeros(2, np.int32), ["person", "person"])  # fmt: skip
        res = frame_result(f, det)
        if f == 5:
            res.faces = [
                _face([320, 60, 350, 95], "carol"),
                _face([125, 60, 155, 95], None),
                _face([125, 200, 155, 235], "mallory"),  # lower half: no
            ]
        events += an.process(res)
    updates = [(e.data["track_id"], e.data["sub_label"]) for e in events if e.type == "tracks.update"]
    assert updates == [(2, "carol")]


# -- zones, masks, filters, lines -----------------------------------------------------------------------
ZONE = {"zones": {"door": {"points": [[300, 0], [640, 0], [640, 360], [300, 360]], "inertia": 3,
                           "loiter_time_s": 2.0}}}  # fmt: skip


def test_zone_inertia_enter_exit_and_loitering(tmp_path):
    an = make(tmp_path, ZONE, update_interval_s=1000)
    events = []
    # x of the feet: approach, a one-frame jitter into the zone (seq 5), then walk in, stay 3 s, walk out;
    # the zone starts at x=300 and the anchor is the bottom centre
    xs = [250, 260, 270, 280, 290, 303, 290, 290, 295] + [310 + 2 * i for i in range(30)]
    xs += [350 - 15 * i for i in range(10)]
    for f, x in enumerate(xs):
        events += an.process(frame_result(f, single_det([x - 40, 100, x + 40, 200])))
    kinds = [(e.type, e.frame_seq) for e in events if e.type != "tracks.new"]
    assert kinds[0] == ("tracks.zone_enter", 11)  # third consecutive frame inside; not the blip
    assert kinds[1] == ("tracks.loitering", 31)  # 2 s later at 10 fps
    assert kinds[2] == ("tracks.zone_exit", 45)  # third frame outside (x=290 at seq 43)
    assert events[-1].data["dwell_s"] == pytest.approx(3.4)
    end = an.close()[-1]
    assert end.data["entered_zones"] == ["door"] and end.data["zones"] == []


def test_zone_object_filter_and_normalized_points(tmp_path):
    zones = {"zones": {"road": {"points": [[0.5, 0], [1, 0], [1, 1], [0.5, 1]], "normalized": True,
                                "objects": ["car"], "inertia": 1}}}  # fmt: skip
    an = make(tmp_path, zones)
    events = []
    for f in range(6):
        det = Detections(np.array([[400, 100, 440, 200], [500, 100, 600, 160]], np.float32),
                         np.array([0.9, 0.9], np.float32), np.zeros(2, np.int32), ["person", "car"])  # fmt: skip
        events += an.process(frame_result(f, det))
    enters = [e for e in events if e.type == "tracks.zone_enter"]
    assert [e.data["label"] for e in enters] == ["car"]


def test_masks_and_label_filters_drop_detections(tmp_path):
    zones = {
        "masks": [{"points": [[0, 0], [200, 0], [200, 360], [0, 360]]}],
        "filters": {"car": {"min_area": 2000, "max_area": 20000}},
    }
    an = make(tmp_path, zones, filters={"person": {"min_score": 0.7}}, objects=["person", "car"])
    events = []
    for f in range(10):
        rows = [
            ([50, 100, 90, 200], 0.9, "person"),  # inside the mask (feet at x=70): ignored
            ([300, 100, 340, 200], 0.65, "person"),  # below the person min_score
            ([400, 100, 420, 120], 0.9, "car"),  # 400 px^2: smaller than min_area
            ([300, 200, 640, 360], 0.9, "car"),  # 54400 px^2: larger than max_area
            ([450, 250, 530, 300], 0.9, "dog"),  # not in tracking.objects
            ([450, 100, 550, 160], 0.9, "car"),  # the only one kept
        ]
        det = Detections(np.array([r[0] for r in rows], np.float32), np.array([r[1] for r in rows], np.float32),
                         np.zeros(len(rows), np.int32), [r[2] for r in rows])  # fmt: skip
        events += an.process(frame_result(f, det))
    news = [e for e in events if e.type == "tracks.new"]
    assert [(e.data["label"], e.data["box"]) for e in news] == [("car", [450.0, 100.0, 550.0, 160.0])]


def test_broken_detector_rows_are_ignored(tmp_path):
    an = make(tmp_path)
    events = []
    for f in range(6):
        rows = [
            [np.nan, 10, 50, 90],
            [10, 10, np.inf, 90],
            [200, 100, 200, 180],  # zero width
            [300, 180, 340, 100],  # inverted
            [400 + f, 100, 440 + f, 200],  # the only real one
        ]
        det = Detections(np.array(rows, np.float32), np.array([0.9, 0.9, 0.9, 0.9, 0.9], np.float32),
                         np.zeros(5, np.int32), ["person"] * 5)  # fmt: skip
        det.scores[1] = np.nan
        events += an.process(frame_result(f, det))
    news = [e for e in events if e.type == "tracks.new"]
    assert len(news) == 1 and news[0].data["box"] == [402.0, 100.0, 442.0, 200.0]  # confirmed on frame 2
    assert all(np.isfinite(t.mean).all() for t in an.tracker.tracks)


def test_line_crossing_directions_and_hysteresis(tmp_path):
    # a horizontal line drawn left -> right: forward = moving down the image
    zones = {"lines": {"gate": {"points": [[100, 180], [540, 180]], "forward_name": "in",
                                "backward_name": "out", "hysteresis_px": 3}}}  # fmt: skip
    scene = Scene(
        [
            Mover("person", RED, 0, 39, 200, 60, 0, 5, 40, 60),  # walks down: feet cross y=180 at ~f 18
            Mover("person", GREEN, 0, 39, 400, 320, 0, -6, 40, 60),  # walks up
            Mover("car", BLUE, 0, 39, 600, 120, 0, 5, 40, 60),  # crosses y=180 but right of the segment
        ]
    )
    an = make(tmp_path, zones)
    events, _ = run(an, scene.results("cam1", 40))
    crossings = [(e.data["track_id"], e.data["direction"]) for e in events if e.type == "tracks.line_cross"]
    assert sorted(crossings) == [(1, "in"), (2, "out")]
    last = [e for e in events if e.type == "tracks.line_cross"][-1]
    assert last.data["counts"] == {"in": 1, "out": 1}
    assert an.line_counts()["gate"]["in"] == 1 and an.line_counts()["gate"]["out"] == 1

    # jitter of +-2 px around the line never counts
    an = make(tmp_path, zones)
    events = []
    for f in range(30):
        y2 = 180 + (2 if f % 2 else -2)
        events += an.process(frame_result(f, single_det([300, y2 - 60, 340, y2])))
    assert not [e for e in events if e.type == "tracks.line_cross"]


def test_crossing_before_confirmation_is_counted(tmp_path):
    zones = {"lines": {"gate": {"points": [[0, 180], [640, 180]]}}}
    an = make(tmp_path, zones, min_hits=5)
    events = []
    for f in range(8):  # feet cross on the second frame, the track is confirmed on the fifth
        y2 = 170 + 15 * f
        events += an.process(frame_result(f, single_det([300, y2 - 60, 340, y2])))
    types = [e.type for e in events]
    assert types == ["tracks.new", "tracks.line_cross"]
    assert events[1].frame_seq == 1 and an.line_counts()["gate"]["forward"] == 1
    assert events[1].data["counts"] == {"forward": 1, "backward": 0}


# -- snapshots --------------------------------------------------------------------------------------
def test_snapshot_is_annotated_best_frame(tmp_path):
    an = make(tmp_path)
    events = []
    for f in range(12):
        img = np.zeros((360, 640, 3), np.uint8)
        img[100:200, 300:340] = (0, 255, 0)
        det = single_det([300, 100, 340, 200], 0.6 + 0.03 * f)
        events += an.process(FrameResult(Frame("cam1", f, None, 1000.0 + f, img), det, "t"))
    events += an.close()
    paths = {e.data["snapshot"] for e in events if e.type.startswith("tracks.")}
    assert len(paths) == 1
    path = Path(paths.pop())
    assert path.exists() and path.parent == tmp_path / "snaps"
    with Image.open(path) as im:
        assert im.format == "JPEG" and im.size == (640, 360)
        px = np.asarray(im.convert("RGB"))
    assert px[150, 320, 1] > 200  # the green object (BGR -> RGB kept right)
    assert px[150, 300, 0] > 150 and px[150, 300, 2] < 120  # the orange box outline on its left edge
    assert events[-1].data["best_score"] == pytest.approx(0.93, abs=1e-3)


def test_snapshot_retention_count_bytes_age(tmp_path):
    img = np.random.default_rng(0).integers(0, 255, (120, 160, 3), np.uint8)
    store = SnapshotStore(tmp_path, "cam1", SnapshotConfig(max_count=3, max_bytes=None, max_age_s=None))
    paths = [store.path_for(i, f"obj{i}") for i in range(6)]
    for p in paths:
        assert store.save(p, img, [10, 10, 50, 50], "x")
        os.utime(p, (time.time() + len(store.files), time.time() + len(store.files)))  # strictly ordered
        store._files[p] = (p.stat().st_mtime, p.stat().st_size)
    assert sorted(tmp_path.glob("cam1-*.jpg")) == sorted(paths[3:])
    other = tmp_path / "cam2-000001-x.jpg"  # another camera's file is never touched
    other.write_bytes(b"x")

    size = paths[5].stat().st_size
    store = SnapshotStore(tmp_path, "cam1", SnapshotConfig(max_count=None, max_bytes=int(size * 1.5)))
    assert len(store.files) == 1 and store.total_bytes <= size * 1.5

    old = store.files[0]
    os.utime(old, (time.time() - 100, time.time() - 100))
    store = SnapshotStore(tmp_path, "cam1", SnapshotConfig(max_count=None, max_bytes=None, max_age_s=50))
    assert store.files == [] and not old.exists() and other.exists()


def test_snapshot_retention_through_analyzer(tmp_path):
    movers = [Mover("person", c, 10 * i, 10 * i + 6, 100 + 80 * i, 180, 0, 0, 40, 80)
              for i, c in enumerate([RED, GREEN, BLUE, YELLOW, CYAN])]  # fmt: skip
    an = make(tmp_path, max_lost_frames=2, snapshots={"max_count": 2})
    events, _ = run(an, Scene(movers).results("cam1", 60))
    assert by_type(events)["tracks.new"] == 5
    assert len(list((tmp_path / "snaps").glob("cam1-*.jpg"))) == 2


# -- config ---------------------------------------------------------------------------------------------
def test_config_errors_name_the_key():
    base = {
        "cameras": [
            {"id": "c", "source": "x.mp4", "analytics": {"zones": {"z": {"points": [[0, 0], [1, 1]]}}}}
        ]
    }
    with pytest.raises(ConfigError, match=r"cameras\[0\]\.analytics\.zones\.z.*at least 3 points"):
        parse_config(base)
    bad_line = {"cameras": [{"id": "c", "source": "x", "analytics": {"lines": {"l": {"points": [[0, 0]]}}}}]}
    with pytest.raises(ConfigError, match=r"lines\.l.*exactly 2 points"):
        parse_config(bad_line)
    with pytest.raises(ConfigError, match=r"tracking.*low_score"):
        parse_config(
            {"cameras": [{"id": "c", "source": "x"}], "tracking": {"low_score": 0.9, "high_score": 0.5}}
        )
    with pytest.raises(ConfigError, match=r"normalized"):
        parse_config({"cameras": [{"id": "c", "source": "x", "analytics": {
            "masks": [{"points": [[0, 0], [2, 0], [0, 1]], "normalized": True}]}}]})  # fmt: skip
    cfg = parse_config(
        {"cameras": [{"id": "c", "source": "x", **{"analytics": ZONE}}], "tracking": {"enabled": True}}
    )
    assert cfg.cameras[0].analytics.zones["door"].loiter_time_s == 2.0


# -- Redis ------------------------------------------------------------------------------------------------
def test_redis_gets_one_new_and_one_end_per_object(tmp_path, redis_server, redis_client):
    """The analyzer's events go through the real Publisher into a real redis-server's tracks stream."""
    scene = Scene(
        [
            Mover("person", RED, 0, 89, 40, 180, 6, 0, 40, 100),
            Mover("person", GREEN, 5, 94, 600, 200, -6, 0, 40, 100),  # crosses the first one
            Mover("car", BLUE, 20, 119, 320, 40, 0, 2.5, 120, 60),
            Mover("person", YELLOW, 60, 119, 100, 300, 4, -1, 30, 60),
        ]
    )
    an = make(tmp_path, update_interval_s=2.0)
    pub = Publisher(RedisConfig(spool_path=str(tmp_path / "spool.sqlite")), url=redis_server.url)
    pub.start()
    sub = redis_client.pubsub()
    sub.subscribe("vidpipe:tracks:cam1")
    assert sub.get_message(timeout=2)["type"] == "subscribe"
    n_frames = n_sent = 0
    for res in scene.results("cam1", 130):
        n_frames += 1
        for ev in an.process(res):
            pub.publish_event(ev)
            n_sent += 1
    for ev in an.close():
        pub.publish_event(ev)
        n_sent += 1
    deadline = time.monotonic() + 10
    while redis_client.xlen("vidpipe:stream:tracks") < n_sent and time.monotonic() < deadline:
        time.sleep(0.05)
    pub.stop()
    assert pub.join(15)

    got = [Event.from_json(fields["event"]) for _, fields in redis_client.xrange("vidpipe:stream:tracks")]
    assert len(got) == n_sent
    per_object = defaultdict(Counter)
    for ev in got:
        per_object[ev.data["object_id"]][ev.type] += 1
    assert len(per_object) == 4
    for counts in per_object.values():
        assert counts["tracks.new"] == 1 and counts["tracks.end"] == 1
        assert counts["tracks.update"] <= 5  # at most 12 s of video / 2 s
    assert len(got) < n_frames  # far fewer than one event per frame
    assert {e.data["label"] for e in got} == {"person", "car"}
    live = []
    while (msg := sub.get_message(timeout=0.5)) is not None:
        if msg["type"] == "message":
            live.append(Event.from_json(msg["data"]).type)
    assert live.count("tracks.new") == 4 and live.count("tracks.end") == 4
    sub.close()


def test_car_truck_confusion_is_one_object(tmp_path):
    # the detector calls one vehicle "car" or "truck" on alternate frames, sometimes both at once
    an = make(tmp_path)
    events = []
    for f in range(30):
        box = [100 + 3 * f, 100, 200 + 3 * f, 160]
        if f % 3 == 0:
            det = Detections(np.array([box, [b + 2 for b in box]], np.float32), np.array([0.8, 0.6], np.float32),
                             np.array([2, 7], np.int32), ["car", "truck"])  # fmt: skip
        else:
            det = single_det(box, 0.7, "truck" if f % 3 == 1 else "car")
        events += an.process(frame_result(f, det))
    events += an.close()
    assert by_type(events)["tracks.new"] == 1 and by_type(events)["tracks.end"] == 1
    assert events[-1].data["label"] == "car"  # the score-weighted majority

    # without the label group the two labels are separate objects
    an = make(tmp_path, label_groups=[], dedupe_iou=None)
    events = []
    for f in range(30):
        box = [100 + 3 * f, 100, 200 + 3 * f, 160]
        det = Detections(np.array([box, box], np.float32), np.array([0.8, 0.7], np.float32),
                         np.array([2, 7], np.int32), ["car", "truck"])  # fmt: skip
        events += an.process(frame_result(f, det))
    assert by_type(events)["tracks.new"] == 2


# ---- track timing on video time (pts) for files ------------------------------------------------------


def _retimed(results, seconds_per_frame: float, t0: float = 1_700_000_000.0):
    """The same frames (pts = f / fps) as if decoded ``seconds_per_frame`` apart (faster/slower than real time)."""
    for r in results:
        f = r.frame
        yield FrameResult(Frame(f.camera_id, f.seq, f.pts, t0 + f.seq * seconds_per_frame, f.image), r.detections,
                          r.detector, extras=r.extras)  # fmt: skip


@pytest.mark.parametrize("seconds_per_frame", [0.155, 0.01])  # 1.55x slower / 10x faster than the 10 fps clip
def test_file_tracks_follow_video_time_not_processing_time(tmp_path, seconds_per_frame):
    # a 3.8 s clip (38 frames at 10 fps) with one person on screen the whole time
    scene = Scene([Mover("person", RED, 0, 37, 50, 180, 5, 0, 40, 100)])
    cfg = TrackingConfig(enabled=True, update_interval_s=1.0)
    an = TrackingAnalyzer("cam1", cfg, CameraZonesConfig(), tmp_path / "snaps", video_time=True)
    events, _ = run(an, _retimed(scene.results("cam1", 38), seconds_per_frame))
    end = next(e for e in events if e.type == "tracks.end")
    assert 3.0 <= end.data["duration_s"] <= 3.8
    # throttle on video time: one update per video second after confirmation, whatever the decode speed
    assert by_type(events)["tracks.update"] == 3
    # processing time gives 37 * 0.155 = 5.7 s from this 3.8 s clip (the bug) or 0.4 s
    legacy = TrackingAnalyzer("cam1", cfg, CameraZonesConfig(), tmp_path / "snaps2")
    legacy_end = next(e for e in run(legacy, _retimed(scene.results("cam1", 38), seconds_per_frame))[0]
                      if e.type == "tracks.end")  # fmt: skip
    assert legacy_end.data["duration_s"] == pytest.approx(37 * seconds_per_frame, abs=1e-3)


def test_video_clock_runs_on_when_a_looping_file_starts_over():
    from pipeline.analyze.tracking.analyzer import VideoClock

    clock = VideoClock()
    img = np.zeros((2, 2, 3), np.uint8)
    t = [
        clock.at(Frame("c", i, pts, 500.0 + i * 0.001, img))
        for i, pts in enumerate([0.0, 0.1, 0.2, 0.0, 0.1])
    ]
    assert t[0] == 500.0 and t[2] == pytest.approx(500.2)
    assert t[3] == pytest.approx(500.2) and t[4] == pytest.approx(500.3)  # never goes back
    assert clock.at(Frame("c", 9, None, 777.0, img)) == 777.0  # no pts: capture time


def test_runner_times_file_cameras_on_video_time_and_live_ones_on_the_clock(tmp_path):
    from pipeline.run.runner import build_analyzers

    cfg = parse_config({"cameras": [{"id": "f", "source": "clip.mp4"}, {"id": "l", "source": "rtsp://h/s"}],
                        "tracking": {"enabled": True}})  # fmt: skip
    file_an = next(a for a in build_analyzers(cfg, "f", tmp_path) if isinstance(a, TrackingAnalyzer))
    live_an = next(a for a in build_analyzers(cfg, "l", tmp_path) if isinstance(a, TrackingAnalyzer))
    assert file_an.clock is not None and live_an.clock is None
