"""Live means live: a file paced in real time (the README quick start's demo camera) is treated like a
camera, so a detector slower than the clip costs detections, not seconds of delay."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import yaml

from pipeline.config.schema import CameraConfig, parse_config
from pipeline.core.types import Detections
from pipeline.detect.detectors.base import NullDetector
from pipeline.run.runner import Pipeline

REPO = Path(__file__).resolve().parents[1]


def test_a_realtime_file_gets_the_newest_frame_like_a_camera() -> None:
    assert CameraConfig(id="d", source="demo", realtime=True).effective_queue_policy == "latest"
    assert CameraConfig(id="d", source="clip.mp4").effective_queue_policy == "block"  # batch: every frame
    assert CameraConfig(id="d", source="rtsp://h/s").effective_queue_policy == "latest"
    assert CameraConfig(
        id="d", source="c.mp4", realtime=True, queue_policy="block"
    ).effective_queue_policy == ("block")
    quick_start = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())["cameras"][0]
    assert CameraConfig.model_validate(quick_start).effective_queue_policy == "latest"


class SlowDetector(NullDetector):
    """A detector that takes 0.2 s a batch: slower than a 25 fps clip, as YOLO on a busy CPU is."""

    def detect(self, images: list[np.ndarray]) -> list[Detections]:
        time.sleep(0.2)
        return super().detect(images)


def _ages(demo_mp4, redis_server, tmp_path: Path, **cam: object) -> list[float]:  # noqa: ANN001
    cfg = parse_config(
        {
            "cameras": [{"id": "c", "source": str(demo_mp4.path), "loop": True, "realtime": True, **cam}],
            "detector": {"model": "none"},
            "redis": {"url": redis_server.url, "spool_path": str(tmp_path / "spool.sqlite")},
        }
    )
    pipe = Pipeline(cfg, detector=SlowDetector(), var_dir=tmp_path, analyzers_factory=lambda c: []).start()
    ages, last = [], None
    try:
        t_end = time.time() + 6
        while time.time() < t_end:
            r = pipe.latest.get("c")
            if r is not None and r is not last:
                last = r
                ages.append(time.time() - r.frame.capture_time)
            time.sleep(0.01)
    finally:
        pipe.stop()
        pipe.join(30)
    return ages[len(ages) // 2 :]  # the second half: after any start-up back-log


def test_the_quick_start_camera_stays_live_with_a_slow_detector(demo_mp4, redis_server, tmp_path) -> None:
    live = _ages(demo_mp4, redis_server, tmp_path / "live")
    queued = _ages(demo_mp4, redis_server, tmp_path / "block", queue_policy="block")
    assert live and queued
    # newest frame: a frame is at most about one detection old when its result comes out
    assert statistics.median(live) < 1.0, live
    # the old default (every frame queued) falls further and further behind: the figure the issue saw
    assert statistics.median(queued) > 2 * statistics.median(live), (live, queued)
