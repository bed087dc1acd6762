"""Cameras added, edited, paused and removed while the pipeline runs: the others keep every frame."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from pipeline.config.schema import CameraConfig, parse_config
from pipeline.core.events import Event
from pipeline.detect.detectors.base import NullDetector
from pipeline.run.runner import Pipeline


class SeqRecorder:
    """An event sink keeping the frame_seq of every detections.frame event per camera."""

    def __init__(self) -> None:
        self.seqs: dict[str, list[int]] = {}
        self.status: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def __call__(self, ev: Event) -> None:
        with self._lock:
            if ev.type == "detections.frame" and ev.frame_seq is not None:
                self.seqs.setdefault(ev.camera_id, []).append(ev.frame_seq)
            elif ev.type == "status.camera":
                self.status.append((ev.camera_id, str(ev.data.get("status"))))

    def count(self, cam: str) -> int:
        with self._lock:
            return len(self.seqs.get(cam, []))

    def wait_more(self, cam: str, n: int, timeout: float = 20.0) -> bool:
        start = self.count(cam)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.count(cam) >= start + n:
                return True
            time.sleep(0.05)
        return False


def _cam(cam_id: str, source: Path, **extra: object) -> CameraConfig:
    extra.setdefault("queue_policy", "block")  # every frame: the no-gap assertions are about the runner
    return CameraConfig(id=cam_id, source=str(source), loop=True, realtime=True, **extra)


def test_add_pause_edit_remove_a_camera_while_another_keeps_every_frame(demo_mp4, redis_server, tmp_path):
    cfg = parse_config(
        {
            "cameras": [_cam("a", demo_mp4.path).model_dump()],
            "detector": {"model": "none"},
            "redis": {"url": redis_server.url, "spool_path": str(tmp_path / "spool.sqlite")},
        }
    )
    rec = SeqRecorder()
    pipe = Pipeline(cfg, detector=NullDetector(), event_sinks=[rec], var_dir=tmp_path).start()
    try:
        assert rec.wait_more("a", 10)
        pipe.add_camera(_cam("b", demo_mp4.path))
        assert rec.wait_more("b", 10), "an added camera never delivered frames"
        assert pipe.latest["b"].frame.camera_id == "b"  # the live tap holds its newest result

        pipe.pause_camera("b")
        paused_at = rec.count("b")
        assert rec.wait_more("a", 10)
        assert rec.count("b") <= paused_at + 1, "a paused camera kept delivering"
        pipe.resume_camera("b")
        assert rec.wait_more("b", 5), "a resumed camera never came back"

        pipe.update_camera(_cam("b", demo_mp4.path, detect_fps=5, detect={"regions": {"enabled": True}}))
        assert rec.wait_more("b", 5), "an edited camera never came back"
        assert "b" in pipe.detect.planners  # its new motion-regions setting is in force

        pipe.remove_camera("b")
        removed_at = rec.count("b")
        assert rec.wait_more("a", 15)
        assert rec.count("b") == removed_at, "a removed camera kept delivering"
        assert "b" not in pipe.decoders and "b" not in pipe.analytics and "b" not in pipe.frame_queues
        assert "b" not in pipe.detect.planners
        assert pipe.detect.inputs["b"].closed  # drained and no longer polled
        assert [c.id for c in pipe.camera_configs()] == ["a"]
    finally:
        pipe.stop()
        assert pipe.join(30), "the pipeline did not drain after runtime camera changes"

    seqs = rec.seqs["a"]
    assert len(seqs) > 40
    gaps = [(x, y) for x, y in zip(seqs, seqs[1:], strict=False) if y != x + 1]
    assert not gaps, f"camera a lost frames while b was added/paused/edited/removed: {gaps[:5]}"
    assert ("b", "paused") in rec.status and ("b", "removed") in rec.status


def test_the_last_camera_cannot_be_removed_but_can_be_paused(demo_mp4, redis_server, tmp_path):
    cfg = parse_config(
        {
            "cameras": [_cam("a", demo_mp4.path).model_dump()],
            "detector": {"model": "none"},
            "redis": {"url": redis_server.url, "spool_path": str(tmp_path / "spool.sqlite")},
        }
    )
    rec = SeqRecorder()
    pipe = Pipeline(cfg, detector=NullDetector(), event_sinks=[rec], var_dir=tmp_path).start()
    try:
        assert rec.wait_more("a", 5)
        try:
            pipe.remove_camera("a")
            raise AssertionError("removing the last camera was accepted")
        except ValueError as exc:
            assert "last camera" in str(exc)
        pipe.pause_camera("a")
        time.sleep(1.0)
        assert not pipe.wait(0.1), "pausing the only camera ended the pipeline"
        pipe.resume_camera("a")
        assert rec.wait_more("a", 5)
    finally:
        pipe.stop()
        assert pipe.join(30)


def test_disabling_the_last_running_camera_by_an_edit_does_not_end_the_pipeline(
    demo_mp4, redis_server, tmp_path
):
    """An edit with ``enabled: false`` ends the camera's analytics; for the last running one that would finish
    the whole run (as removing it would), so it is refused like removal: pause it instead."""
    cfg = parse_config(
        {
            "cameras": [_cam("a", demo_mp4.path).model_dump()],
            "detector": {"model": "none"},
            "redis": {"url": redis_server.url, "spool_path": str(tmp_path / "spool.sqlite")},
        }
    )
    rec = SeqRecorder()
    pipe = Pipeline(cfg, detector=NullDetector(), event_sinks=[rec], var_dir=tmp_path).start()
    try:
        assert rec.wait_more("a", 5)
        try:
            pipe.update_camera(_cam("a", demo_mp4.path, enabled=False))
            raise AssertionError("disabling the last running camera was accepted")
        except ValueError as exc:
            assert "pause it instead" in str(exc)
        time.sleep(1.0)
        assert not pipe.wait(0.1), "disabling the only camera ended the pipeline"
        assert rec.wait_more("a", 5), "the refused edit stopped the camera"
    finally:
        pipe.stop()
        assert pipe.join(30)


def test_a_camera_added_or_edited_at_run_time_gets_its_detect_rate_watched(demo_mp4, redis_server, tmp_path):
    """detect_fps of a camera added or edited while running is watched like one in the config at start (an
    edit's new rate, not the old one, judges it), and a removed camera's watch goes with it."""
    cfg = parse_config(
        {
            "cameras": [_cam("a", demo_mp4.path).model_dump()],
            "detector": {"model": "none"},
            "redis": {"url": redis_server.url, "spool_path": str(tmp_path / "spool.sqlite")},
        }
    )
    pipe = Pipeline(cfg, detector=NullDetector(), var_dir=tmp_path).start()
    try:
        pipe.add_camera(_cam("b", demo_mp4.path, detect_fps=5.0))
        assert pipe.detect.rate_watches["b"].target_fps == 5.0
        pipe.update_camera(_cam("b", demo_mp4.path, detect_fps=2.0))
        assert pipe.detect.rate_watches["b"].target_fps == 2.0
        pipe.remove_camera("b")
        assert "b" not in pipe.detect.rate_watches
    finally:
        pipe.stop()
        assert pipe.join(30)
