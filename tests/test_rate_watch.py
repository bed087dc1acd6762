"""DetectRateWatch: one warning after 30 s below 80 % of detect_fps, one line on recovery (a stepped clock)."""

from __future__ import annotations

import logging

from pipeline.core.rate_watch import DetectRateWatch


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def run(watch: DetectRateWatch, clock: Clock, fps: float, seconds: float) -> list[str]:
    """Feed ``fps`` detections a second for ``seconds``, checking after each (as the detect stage does)."""
    out = []
    for _ in range(round(fps * seconds)):
        clock.t += 1.0 / fps
        watch.detected()
        r = watch.check()
        if r:
            out.append(r)
    return out


def test_warns_once_after_30s_below_80_percent_and_once_on_recovery(caplog):
    clock = Clock()
    w = DetectRateWatch("cam1", 5.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="pipeline.core.rate_watch"):
        assert run(w, clock, 4.5, 60) == []  # 90 % of the asked rate: fine
        # 0.9 detections/s of 5 (the overload): nothing before 30 s below, then exactly one warning
        assert run(w, clock, 0.9, 28) == []
        assert run(w, clock, 0.9, 10) == ["slow"]  # 30 s after the 10 s window first fell below 4/s
        assert run(w, clock, 0.9, 120) == []  # not repeated
        assert run(w, clock, 5.0, 20) == ["recovered"]
        assert run(w, clock, 5.0, 60) == []
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 2 and "cam1" in msgs[0] and "frames/s of the 5 asked" in msgs[0]
    assert "recovered" in msgs[1] and w.warnings == 1


def test_a_short_dip_or_a_paused_camera_is_not_judged():
    clock = Clock()
    w = DetectRateWatch("cam1", 5.0, clock=clock)
    assert run(w, clock, 5.0, 20) == []
    assert run(w, clock, 1.0, 25) == []  # below for less than 30 s (plus the window)
    assert run(w, clock, 5.0, 20) == []
    w.pause()  # camera offline: no detections at all, and that is not the detector's fault
    clock.t += 300
    assert w.check() is None and not w.warned
