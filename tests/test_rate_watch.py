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


# -- the cause the under-rate warning names, and the decoder's own lag warning ----------------------------


def _slow_for_40s(w: DetectRateWatch, clock: Clock) -> list[str]:
    assert run(w, clock, 5.0, 20) == []
    return run(w, clock, 0.9, 45)


def test_under_rate_names_the_decoder_when_decoding_is_behind(caplog):
    from pipeline.core.metrics import MetricsRegistry

    metrics, clock = MetricsRegistry(), Clock()
    w = DetectRateWatch("cam1", 5.0, clock=clock, metrics=metrics)
    metrics.set_decoder_lag("cam1", 14.2)
    with caplog.at_level(logging.WARNING, logger="pipeline.core.rate_watch"):
        assert _slow_for_40s(w, clock) == ["slow"]
    msg = caplog.records[-1].getMessage()
    assert "decoding is 14.2 s behind the live stream" in msg and "none are skipped" in msg
    assert "skipped to stay current" not in msg  # the false claim the issue found


def test_under_rate_names_the_detector_when_frames_were_replaced_in_the_queue(caplog):
    from pipeline.core.metrics import MetricsRegistry

    metrics, clock = MetricsRegistry(), Clock()
    w = DetectRateWatch("cam1", 5.0, clock=clock, metrics=metrics)
    metrics.set_decoder_lag("cam1", 0.1)  # decoding keeps up
    with caplog.at_level(logging.WARNING, logger="pipeline.core.rate_watch"):
        assert run(w, clock, 5.0, 20) == []
        out = run(w, clock, 0.9, 5)  # the shortfall begins ...
        metrics.stage("decoder", "cam1").dropped += 120  # ... and frames are replaced before detection
        out += run(w, clock, 0.9, 40)
    assert out == ["slow"]
    assert "the detector cannot keep up: 120 frames were replaced" in w.last_cause


def test_under_rate_without_lag_or_drops_blames_the_source():
    from pipeline.core.metrics import MetricsRegistry

    metrics, clock = MetricsRegistry(), Clock()
    w = DetectRateWatch("cam1", 5.0, clock=clock, metrics=metrics)
    assert _slow_for_40s(w, clock) == ["slow"]
    assert "delivers fewer frames than asked" in w.last_cause


def test_decoder_lag_warns_once_when_it_stays_behind_and_once_when_it_catches_up(caplog):
    from pipeline.core.rate_watch import DecoderLagWatch

    clock = Clock()
    w = DecoderLagWatch("cam7", clock=clock)
    out = []
    with caplog.at_level(logging.WARNING, logger="pipeline.core.rate_watch"):
        for lag in [0.1] * 50 + [3.0, 5.0, 8.0] * 100 + [0.2] * 10:  # 25 frames/s
            clock.t += 0.04
            if r := w.observe(lag):
                out.append(r)
    assert out == ["behind", "recovered"]
    assert "camera cam7: decoding is" in caplog.records[0].getMessage()
    assert "behind the live stream" in caplog.records[0].getMessage()


def test_decoder_lag_is_exported_per_camera():
    from pipeline.core.metrics import MetricsRegistry

    m = MetricsRegistry()
    m.set_decoder_lag("cam1", 12.5)
    assert 'vidpipe_decoder_lag_seconds{camera="cam1"} 12.5' in m.prometheus_text()
