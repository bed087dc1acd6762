"""Capture time from the stream clock: the pure mapping, then a real RTSP server going silent so that FFmpeg
hands out its held-back frame late; that frame keeps its real (old) time and does not vote at a door."""

from __future__ import annotations

import time

import pytest

from pipeline.analyze.doors.policy import DoorPolicy, FaceVote
from pipeline.config.doors import DoorConfig
from pipeline.ingest.stream_clock import StreamClock
from tests.test_decoder import Harness

T0 = 1_800_000_000.0


def test_late_frame_keeps_its_stream_time():
    c = StreamClock()
    for i in range(25):  # 25 fps, each frame handed over 80 ms after capture
        assert c.capture_time(i * 0.04, T0 + i * 0.04 + 0.08) == pytest.approx(T0 + i * 0.04 + 0.08)
    # the stream goes silent; FFmpeg hands out the next frame 5.1 s late
    late = c.capture_time(1.0, T0 + 1.0 + 0.08 + 5.1)
    assert late == pytest.approx(T0 + 1.08, abs=0.01)  # drift allowance: at most 1 ms per second


def test_burst_at_connect_and_reconnect_reanchor():
    c = StreamClock()
    # the first frames arrive in a burst 1 s after capture: the least-delayed one sets the offset
    stamps = [c.capture_time(i * 0.04, T0 + 1.0 + i * 0.001) for i in range(10)]
    assert stamps == sorted(stamps)
    assert c.capture_time(1.0, T0 + 1.0 + 0.05) == pytest.approx(T0 + 1.05)
    c.reset()  # reconnect: pts start over near 0
    assert c.capture_time(0.0, T0 + 30.0) == pytest.approx(T0 + 30.0)
    assert c.reanchors == 2


def test_discontinuities_reanchor():
    c = StreamClock()
    c.capture_time(100.0, T0)
    assert c.capture_time(3.0, T0 + 1.0) == pytest.approx(T0 + 1.0)  # pts went back
    assert c.capture_time(50.0, T0 + 1.1) == pytest.approx(T0 + 1.1)  # jumped ahead
    c.capture_time(50.04, T0 + 1.14)
    assert c.capture_time(50.08, T0 - 60) == pytest.approx(T0 - 60)  # wall clock stepped back
    assert c.capture_time(None, T0 + 5) == T0 + 5 and c.no_pts == 1


def test_slow_camera_clock_does_not_turn_fresh_frames_stale():
    c = StreamClock()
    rate = 1 - 200e-6  # the camera's clock runs 200 ppm slow: its pts fall behind the wall clock
    last, arrival = 0.0, 0.0
    for i in range(0, 25 * 3600, 25):  # an hour, one frame a second sampled
        arrival = T0 + i * 0.04 + 0.05
        last = c.capture_time(i * 0.04 * rate, arrival)
    # the true latency is 0.05 s; after an hour the estimate is still within 0.1 s of it (0.77 s without
    # the drift allowance, which would turn fresh frames stale at a door after a few hours)
    assert 0.0 <= arrival - last < 0.15, arrival - last


def test_rtsp_frame_handed_out_late_is_stamped_old_and_does_not_vote(rtsp_server):
    read_timeout = 2.0
    h = Harness(
        source=rtsp_server.url, read_timeout_s=read_timeout, reconnect={"initial_s": 5.0, "jitter": 0}
    )
    with h:
        h.wait_frames(25, 20)
        time.sleep(0.5)
        rtsp_server.pause()  # the camera goes silent, the connection stays open
        t_pause = time.time()
        h.wait_status("offline", 10)
        with h._lock:
            arrivals = [(t, f) for t, f in h.frames]
        rtsp_server.resume()
    # map each frame's arrival (monotonic) to wall time
    mono_to_wall = time.time() - time.monotonic()
    late = [(t + mono_to_wall, f) for t, f in arrivals if t + mono_to_wall > t_pause + 1.0]
    assert late, "FFmpeg handed out no frame after the pause (nothing held back?)"
    arrived, frame = late[-1]
    assert arrived - t_pause >= read_timeout * 0.9
    assert frame.capture_time < t_pause + 0.5, (frame.capture_time - t_pause, arrived - t_pause)
    fresh = [f for t, f in arrivals if t + mono_to_wall < t_pause - 0.2]
    assert all(abs((t + mono_to_wall) - f.capture_time) < 1.0 for t, f in arrivals if f in fresh)

    door = DoorConfig(id="front", cameras=["cam1"], allow_people=["alice"], secret="s" * 16, k_frames=1,
                      min_face_px=50, max_frame_age_s=1.0, liveness="off")  # fmt: skip
    policy = DoorPolicy(door)
    out = policy.observe(frame.capture_time, [FaceVote("alice", 0.3, 100)], now=arrived)
    assert [d["decision"] for d in out] == ["denied"] and "stale frame" in out[0]["reason"]
    assert policy.stale_frames == 1
    # with the old stamping (time of hand-over) the same frame would have opened the door
    assert [
        d["decision"] for d in DoorPolicy(door).observe(arrived, [FaceVote("alice", 0.3, 100)], now=arrived)
    ] == ["granted"]
