"""DecoderStage against real generated H.264 files and a real GStreamer RTSP server on 127.0.0.1."""

from __future__ import annotations

import functools
import http.server
import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.config.schema import CameraConfig
from pipeline.core.events import Event
from pipeline.core.metrics import MetricsRegistry
from pipeline.core.queues import BoundedQueue, QueueClosed
from pipeline.core.types import Frame
from pipeline.deliver.redis_server import free_port
from pipeline.ingest.decoder import DecoderStage, FrameThinner, backoff_delay
from pipeline.ingest.demo_media import read_frame_index, render_frames, write_demo_video

pytestmark = pytest.mark.timeout(60)


class Harness:
    """Runs one DecoderStage with a consumer thread that records frames and events with arrival times."""

    def __init__(self, emit_fails: bool = False, **cam_fields: object) -> None:
        self.cam = CameraConfig(id=str(cam_fields.pop("id", "cam1")), **cam_fields)
        self.queue: BoundedQueue[Frame] = BoundedQueue(self.cam.queue_size, self.cam.effective_queue_policy)
        self.events: list[tuple[float, Event]] = []
        self.frames: list[tuple[float, Frame]] = []
        self.closed = threading.Event()
        self._lock = threading.Lock()
        self._emit_fails = emit_fails
        self.metrics = MetricsRegistry()
        self.stage = DecoderStage(self.cam, self.queue, self._emit, self.metrics, rng=random.Random(7))
        self._consumer = threading.Thread(target=self._consume, daemon=True)

    def _emit(self, event: Event) -> None:
        with self._lock:
            self.events.append((time.monotonic(), event))
        if self._emit_fails:
            raise ConnectionError("publisher down")

    def _consume(self) -> None:
        while True:
            try:
                frame = self.queue.get(0.1)
            except QueueClosed:
                self.closed.set()
                return
            if frame is not None:
                with self._lock:
                    self.frames.append((time.monotonic(), frame))

    def __enter__(self) -> Harness:
        self.stage.start()
        self._consumer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stage.stop()
        assert self.stage.join(10), "decoder did not stop"

    def statuses(self) -> list[str]:
        with self._lock:
            return [e.data["status"] for _, e in self.events]

    def wait_status(self, status: str, timeout: float, after: int = 0) -> tuple[int, float, Event]:
        """First event with ``status`` at index >= ``after``: (index, arrival time, event)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for i, (t, e) in enumerate(self.events[after:], start=after):
                    if e.data["status"] == status:
                        return i, t, e
            time.sleep(0.02)
        raise AssertionError(f"no {status!r} event within {timeout}s; got {self.statuses()}")

    def wait_frames(self, n: int, timeout: float) -> list[Frame]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.frames) >= n:
                    return [f for _, f in self.frames]
            time.sleep(0.02)
        raise AssertionError(
            f"only {len(self.frames)} of {n} frames within {timeout}s; events {self.statuses()}"
        )

    def frame_count(self) -> int:
        with self._lock:
            return len(self.frames)


def _run_file(timeout: float = 30.0, **cam: object) -> Harness:
    h = Harness(**cam)
    with h:
        assert h.closed.wait(timeout), f"output queue never closed; events {h.statuses()}"
    return h


# ---------------------------------------------------------------------------------------------- files


def test_file_decodes_every_frame_in_order(demo_mp4) -> None:
    h = _run_file(source=str(demo_mp4.path), queue_size=2)
    frames = [f for _, f in h.frames]
    assert len(frames) == demo_mp4.frames
    assert [f.seq for f in frames] == list(range(demo_mp4.frames))
    assert [read_frame_index(f.image) for f in frames] == list(range(demo_mp4.frames))
    pts = np.array([f.pts for f in frames])
    assert np.all(np.diff(pts) > 0)
    assert pts[1] - pts[0] == pytest.approx(1 / demo_mp4.fps, abs=1e-3)
    first = frames[0]
    assert first.image.shape == (demo_mp4.height, demo_mp4.width, 3) and first.image.dtype == np.uint8
    assert first.camera_id == "cam1" and first.capture_time == pytest.approx(time.time(), abs=60)
    assert h.statuses() == ["online", "ended"]
    assert h.events[-1][1].data["frames"] == demo_mp4.frames
    assert h.queue.dropped == 0  # files block instead of dropping
    assert h.stage.state == "stopped"


def test_raw_h264_file_gets_pts_from_frame_rate(demo_h264) -> None:
    h = _run_file(source=str(demo_h264.path))
    frames = [f for _, f in h.frames]
    assert len(frames) == demo_h264.frames
    assert [f.pts for f in frames] == pytest.approx([i / demo_h264.fps for i in range(demo_h264.frames)])


def test_ffmpeg_options_reach_the_demuxer(demo_h264) -> None:
    # the raw H.264 demuxer's "framerate" option overrides the rate it assumes, and with it the pts step
    h = _run_file(source=str(demo_h264.path), ffmpeg_options={"framerate": "50"})
    frames = [f for _, f in h.frames]
    assert len(frames) == demo_h264.frames and frames[1].pts == pytest.approx(0.02)


def test_detect_fps_thins_by_pts_and_counts_skips(demo_mp4) -> None:
    h = _run_file(source=str(demo_mp4.path), detect_fps=5)
    frames = [f for _, f in h.frames]
    seconds = demo_mp4.frames / demo_mp4.fps
    assert len(frames) == round(seconds * 5)
    assert h.stage.frames_decoded == demo_mp4.frames
    assert h.stage.frames_skipped == demo_mp4.frames - len(frames)
    assert h.stage.metrics.skipped == h.stage.frames_skipped  # exported as vidpipe_skipped_total
    assert h.queue.dropped == 0
    # seq counts every decoded frame, so forwarded frames show the thinning as gaps
    assert [f.seq for f in frames] == [read_frame_index(f.image) for f in frames]
    gaps = np.diff([f.pts for f in frames])
    assert gaps.min() >= 1 / 5 - 1 / demo_mp4.fps - 1e-6 and gaps.mean() == pytest.approx(0.2, abs=0.02)


def test_frame_thinner_keeps_the_requested_average_rate() -> None:
    thinner = FrameThinner(10)
    kept = [t for t in (i / 25 for i in range(250)) if thinner.keep(t)]
    assert len(kept) == 100  # 10 s at 25 fps thinned to 10 fps
    assert FrameThinner(None).keep(0.0) and FrameThinner(None).keep(0.0)


def test_loop_restarts_file_with_growing_seq_and_pts(demo_mp4) -> None:
    n = demo_mp4.frames * 2 + 10
    h = Harness(source=str(demo_mp4.path), loop=True)
    with h:
        frames = h.wait_frames(n, 30)[:n]
    assert [f.seq for f in frames] == list(range(n))
    assert [read_frame_index(f.image) for f in frames] == [i % demo_mp4.frames for i in range(n)]
    assert np.all(np.diff([f.pts for f in frames]) > 0)
    assert "ended" not in h.statuses()


def test_realtime_paces_a_file_at_its_frame_rate(demo_mp4) -> None:
    h = Harness(source=str(demo_mp4.path), realtime=True)
    with h:
        h.wait_frames(26, 10)
        times = [t for t, _ in h.frames[:26]]
    assert times[25] - times[0] >= 0.9  # 25 frame intervals at 25 fps = 1 s


def test_missing_file_fails_naming_camera_and_path(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_clip.mp4"
    h = _run_file(source=str(missing), id="frontdoor")
    assert h.statuses() == ["failed"]
    reason = h.events[0][1].data["reason"]
    assert "frontdoor" in reason and str(missing) in reason
    assert h.frames == []


def test_file_that_is_not_a_video_fails(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.mp4"
    bogus.write_text("this is not a video\n" * 100)
    h = _run_file(source=str(bogus))
    assert h.statuses() == ["failed"] and str(bogus) in h.events[0][1].data["reason"]


def test_truncated_streamable_file_gives_frames_up_to_the_cut(demo_mkv, damaged_copy) -> None:
    h = _run_file(source=str(damaged_copy(demo_mkv, keep_fraction=0.5)))
    frames = [f for _, f in h.frames]
    assert 10 < len(frames) < demo_mkv.frames
    assert [read_frame_index(f.image) for f in frames] == list(range(len(frames)))
    assert h.statuses() == ["online", "ended"]


def test_truncated_mp4_without_index_fails_clearly(demo_mp4, damaged_copy) -> None:
    path = damaged_copy(demo_mp4, keep_fraction=0.5)
    h = _run_file(source=str(path))
    assert h.statuses() == ["failed"]
    assert str(path) in h.events[0][1].data["reason"]


def test_corrupted_bytes_are_skipped_and_decoding_goes_on(demo_mp4, damaged_copy) -> None:
    h = _run_file(source=str(damaged_copy(demo_mp4, keep_fraction=0.4, corrupt=True)))
    frames = [f for _, f in h.frames]
    assert h.statuses() == ["online", "ended"]
    assert h.stage.decode_errors > 0 and h.events[-1][1].data["decode_errors"] == h.stage.decode_errors
    # frames before the damage are intact, and decoding resumes after it (the last frames come through)
    assert [read_frame_index(f.image) for f in frames[:20]] == list(range(20))
    assert read_frame_index(frames[-1].image) == demo_mp4.frames - 1


def test_a_failing_emit_does_not_stop_decoding(demo_mp4) -> None:
    h = _run_file(source=str(demo_mp4.path), emit_fails=True)
    assert len(h.frames) == demo_mp4.frames


def test_stop_is_prompt_while_blocked_on_a_full_queue(demo_mp4) -> None:
    cam = CameraConfig(id="c", source=str(demo_mp4.path), queue_size=1)
    queue: BoundedQueue[Frame] = BoundedQueue(1, "block")
    stage = DecoderStage(cam, queue, lambda e: None, MetricsRegistry())
    stage.start()
    time.sleep(0.5)  # nobody consumes: the decoder waits for room
    t0 = time.monotonic()
    stage.stop()
    assert stage.join(2) and time.monotonic() - t0 < 1.0
    assert queue.closed


# ---------------------------------------------------------------------------------------------- live


def test_backoff_grows_caps_and_jitters() -> None:
    rng = random.Random(1)
    plain = [backoff_delay(a, 0.5, 4.0, 2.0, 0.0, rng) for a in range(1, 7)]
    assert plain == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    jittered = [backoff_delay(3, 0.5, 4.0, 2.0, 0.2, rng) for _ in range(200)]
    assert min(jittered) >= 1.6 and max(jittered) <= 2.4 and len(set(jittered)) > 100


def test_rtsp_frames_arrive_in_order(rtsp_server) -> None:
    h = Harness(source=rtsp_server.url, read_timeout_s=2, open_timeout_s=5)
    with h:
        frames = h.wait_frames(30, 20)
    _, _, online = h.wait_status("online", 1)
    assert online.data["source"] == rtsp_server.url
    idx = [read_frame_index(f.image) for f in frames[:30]]
    assert all((b - a) % 75 == 1 for a, b in zip(idx, idx[1:], strict=False))
    assert [f.seq for f in frames[:30]] == list(range(30))
    assert frames[0].image.shape == (240, 320, 3)


def test_rtsp_over_udp_and_detect_fps_on_wall_clock(rtsp_server) -> None:
    h = Harness(source=rtsp_server.url, rtsp_transport="udp", detect_fps=5, read_timeout_s=2)
    with h:
        h.wait_frames(1, 20)
        n0, t0 = h.frame_count(), time.monotonic()
        time.sleep(2.0)
        rate = (h.frame_count() - n0) / (time.monotonic() - t0)
        decoded = h.stage.frames_decoded
    assert 3.5 <= rate <= 6.0, rate  # 25 fps source thinned to ~5 fps
    assert h.stage.frames_skipped > 0 and decoded > h.frame_count() * 3


def test_rtsp_server_killed_and_restarted_reconnects(rtsp_server) -> None:
    h = Harness(
        source=rtsp_server.url,
        read_timeout_s=2,
        reconnect={"initial_s": 0.2, "max_s": 1.0, "jitter": 0.1},
    )
    with h:
        h.wait_frames(10, 20)
        rtsp_server.stop()
        i_off, _, offline = h.wait_status("offline", 10)
        assert offline.data["reason"]
        i_rec, _, rec = h.wait_status("reconnecting", 10, after=i_off)
        assert rec.data["attempt"] >= 1 and rec.data["retry_in_s"] > 0
        seq_before = max(f.seq for _, f in h.frames)
        rtsp_server.start()
        i_on, t_on, _ = h.wait_status("online", 20, after=i_rec)
        n_before = h.frame_count()
        frames = h.wait_frames(n_before + 10, 20)
    after = [f for f in frames[n_before:]]
    assert after and min(f.seq for f in after) > seq_before
    assert h.statuses()[0] == "online" and i_off < i_rec < i_on
    assert h.stage.metrics.reconnects >= 1


def test_rtsp_silent_server_is_noticed_within_read_timeout(rtsp_server) -> None:
    read_timeout = 1.5
    h = Harness(
        source=rtsp_server.url, read_timeout_s=read_timeout, reconnect={"initial_s": 0.2, "jitter": 0}
    )
    with h:
        h.wait_frames(10, 20)
        rtsp_server.pause()
        t_pause = time.monotonic()
        _, t_off, offline = h.wait_status("offline", 10)
        assert t_off - t_pause <= read_timeout + 1.0, t_off - t_pause
        assert "no data" in offline.data["reason"]
        rtsp_server.resume()
        i_on, _, _ = h.wait_status("online", 20, after=1)
        n = h.frame_count()
        h.wait_frames(n + 5, 20)


def test_unreachable_url_backs_off_exponentially_and_redacts_password() -> None:
    url = f"rtsp://admin:s3cret@127.0.0.1:{free_port()}/cam"
    h = Harness(
        source=url,
        open_timeout_s=2,
        reconnect={"initial_s": 0.1, "max_s": 0.8, "multiplier": 2.0, "jitter": 0.0},
    )
    with h:
        h.wait_status("reconnecting", 10)
        deadline = time.monotonic() + 10
        while h.statuses().count("reconnecting") < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
    events = [e for _, e in h.events]
    assert events[0].data["status"] == "offline"
    rec = [e.data for e in events if e.data["status"] == "reconnecting"]
    assert [r["attempt"] for r in rec[:5]] == [1, 2, 3, 4, 5]
    assert [r["retry_in_s"] for r in rec[:5]] == [0.1, 0.2, 0.4, 0.8, 0.8]
    assert h.stage.metrics.reconnects >= 4
    assert all("s3cret" not in e.to_json() for e in events)
    assert events[0].data["source"] == url.replace("s3cret", "***")


def test_gives_up_after_max_attempts() -> None:
    h = Harness(
        source=f"rtsp://127.0.0.1:{free_port()}/cam",
        reconnect={"initial_s": 0.05, "jitter": 0.0, "max_attempts": 2},
    )
    with h:
        assert h.closed.wait(15)
    assert h.statuses() == ["offline", "reconnecting", "reconnecting", "failed"]
    assert "2 reconnect attempts" in h.events[-1][1].data["reason"]


def test_stop_is_prompt_during_backoff() -> None:
    h = Harness(source=f"rtsp://127.0.0.1:{free_port()}/cam", reconnect={"initial_s": 30.0})
    h.__enter__()
    h.wait_status("reconnecting", 10)
    t0 = time.monotonic()
    h.stage.stop()
    assert h.stage.join(2) and time.monotonic() - t0 < 1.0
    assert h.closed.wait(2)


@pytest.fixture
def http_server(demo_mkv):  # noqa: ANN201
    """Python's own HTTP server on 127.0.0.1 serving the media directory."""
    handler = functools.partial(_QuietHandler, directory=str(demo_mkv.path.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def test_http_source_end_of_stream_reconnects_and_server_loss_backs_off(http_server, demo_mkv) -> None:
    port = http_server.server_address[1]
    url = f"http://127.0.0.1:{port}/{demo_mkv.path.name}"
    h = Harness(
        source=url,
        queue_policy="block",
        read_timeout_s=2,
        reconnect={"initial_s": 0.1, "max_s": 0.2, "jitter": 0.0},
    )
    with h:
        # a live source's end of stream is a disconnect: the decoder comes back and plays on
        frames = h.wait_frames(demo_mkv.frames + 10, 20)
        i_off, _, offline = h.wait_status("offline", 1)
        assert offline.data["reason"] == "end of stream"
        h.wait_status("online", 5, after=i_off)
        http_server.shutdown()
        http_server.server_close()
        n = len(h.events)
        h.wait_status("reconnecting", 10, after=n)
        deadline = time.monotonic() + 10
        while "Connection refused" not in " ".join(e.data["reason"] for _, e in h.events[n:]):
            assert time.monotonic() < deadline, h.events[n:]
            time.sleep(0.05)
    assert [f.seq for f in frames] == list(range(len(frames)))
    idx = [read_frame_index(f.image) for f in frames]
    assert idx[: demo_mkv.frames] == list(range(demo_mkv.frames)) and idx[demo_mkv.frames] == 0


def test_demo_frames_carry_a_readable_index_and_odd_sizes_are_refused(tmp_path: Path) -> None:
    frames = list(render_frames(320, 240, 25, 40))
    assert [read_frame_index(f) for f in frames] == list(range(40))
    assert not np.array_equal(frames[0], frames[39])  # the photos move
    with pytest.raises(ValueError, match="even"):
        write_demo_video(tmp_path / "odd.mp4", width=321, height=240)
