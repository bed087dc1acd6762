"""Notice when a camera gets fewer detections than it asked for.

Under overload a live camera does not build latency any more (its frame queue keeps only the newest frame),
it gets fewer detections instead. That is silent unless someone says so: ``DetectRateWatch`` logs one
warning when a camera's achieved detect rate has stayed below ``fraction`` of its ``detect_fps`` for
``sustain_s`` seconds, and one line when it is back. The rate is measured over the last ``window_s``
seconds; a camera that is not online (reconnecting, ended) is not judged (``pause()``). The warning names
the cause it can see (``slow_cause``): the decoder behind the live edge, the detector (frames replaced in
the camera's 1-frame queue before the detector took them: skipped to stay current), or a source that
delivers fewer frames than asked.

``DecoderLagWatch`` is the decoder's own warning: decoding that stays ``LAG_WARN_S`` or more behind the live
edge for ``LAG_SUSTAIN_S`` seconds is logged once (and its recovery), with the lag in the message. Under
CPU overload H.264 decoding itself falls behind; frames then reach the detector late (their age shows in
``vidpipe_frame_age_at_detection_seconds``), and nothing is skipped, so "skipped to stay current" would be
false.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable

from pipeline.core.metrics import MetricsRegistry

log = logging.getLogger(__name__)

UNDER_RATE_FRACTION = 0.8
UNDER_RATE_SUSTAIN_S = 30.0
RATE_WINDOW_S = 10.0
LAG_WARN_S = 2.0
LAG_SUSTAIN_S = 10.0


def slow_cause(metrics: MetricsRegistry | None, camera_id: str, drops_since: int | None) -> str:
    """Why a camera gets fewer detections than asked, from what the metrics show.

    drops_since: the decoder's queue drops when the shortfall began (None: unknown)."""
    if metrics is None:
        return "the detector or decoding cannot keep up"
    lag = metrics.decoder_lags().get(camera_id, 0.0)
    if lag >= LAG_WARN_S:
        return (
            f"decoding is {lag:.1f} s behind the live stream: the decoder cannot keep up (CPU), not the "
            "detector; frames reach the detector late and none are skipped"
        )
    drops = metrics.stage("decoder", camera_id).total_drops()
    if drops_since is not None and drops > drops_since:
        return (
            f"the detector cannot keep up: {drops - drops_since} frames were replaced in the camera's queue "
            "before the detector took them (skipped to stay current)"
        )
    return "the source or decoder delivers fewer frames than asked (no frame waited for the detector)"


class DetectRateWatch:
    def __init__(
        self,
        camera_id: str,
        target_fps: float,
        *,
        fraction: float = UNDER_RATE_FRACTION,
        sustain_s: float = UNDER_RATE_SUSTAIN_S,
        window_s: float = RATE_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
        metrics: MetricsRegistry | None = None,
    ) -> None:
        """metrics: where the decoder's lag and queue drops are read to name the cause (None: not named)."""
        self.camera_id = camera_id
        self.metrics = metrics
        self._drops_at_below: int | None = None
        self.target_fps = target_fps
        self.fraction = fraction
        self.sustain_s = sustain_s
        self.window_s = window_s
        self.clock = clock
        self._times: collections.deque[float] = collections.deque()
        self._since: float | None = None  # when judging (re)started: a rate needs a full window first
        self._below_since: float | None = None
        self.warned = False
        self.warnings = 0  # how many under-rate warnings were logged (metrics, tests)
        self.last_cause = ""  # what the last under-rate warning named
        self._lock = threading.Lock()  # detected/check run on the detect thread, pause on a decoder's

    def _decoder_drops(self) -> int | None:
        return None if self.metrics is None else self.metrics.stage("decoder", self.camera_id).total_drops()

    def detected(self) -> None:
        """One frame of this camera went through the detector."""
        now = self.clock()
        with self._lock:
            if self._since is None:
                self._since = now
            self._times.append(now)

    def pause(self) -> None:
        """The camera is not delivering frames (offline, ended): stop judging until frames come again."""
        with self._lock:
            self._since = None
            self._below_since = None
            self._times.clear()

    def rate(self, now: float | None = None) -> float:
        now = self.clock() if now is None else now
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()
        return len(self._times) / self.window_s

    def check(self) -> str | None:
        """Judge the rate now; returns "slow" or "recovered" when that was just logged, else None."""
        now = self.clock()
        with self._lock:
            if self._since is None or now - self._since < self.window_s:
                return None
            rate = self.rate(now)
        if rate < self.fraction * self.target_fps:
            if self._below_since is None:
                self._below_since = now
                self._drops_at_below = self._decoder_drops()
            if not self.warned and now - self._below_since >= self.sustain_s:
                self.warned = True
                self.warnings += 1
                self.last_cause = slow_cause(self.metrics, self.camera_id, self._drops_at_below)
                log.warning(
                    "camera %s: detecting %.1f frames/s of the %g asked (detect_fps) for %.0f s: %s. Lower "
                    "detect_fps, run fewer cameras, a smaller model, or batch (detector.batch)",
                    self.camera_id,
                    rate,
                    self.target_fps,
                    now - self._below_since,
                    self.last_cause,
                )
                return "slow"
            return None
        self._below_since = None
        if self.warned:
            self.warned = False
            log.warning(
                "camera %s: detect rate recovered: %.1f frames/s of the %g asked",
                self.camera_id,
                rate,
                self.target_fps,
            )
            return "recovered"
        return None


class DecoderLagWatch:
    """One warning when a camera's decoding stays ``warn_s`` or more behind its live edge for ``sustain_s``
    seconds, one line when it catches up. Fed by the decoder with each frame's lag (``observe``)."""

    def __init__(
        self,
        camera_id: str,
        *,
        warn_s: float = LAG_WARN_S,
        sustain_s: float = LAG_SUSTAIN_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.camera_id = camera_id
        self.warn_s = warn_s
        self.sustain_s = sustain_s
        self.clock = clock
        self._behind_since: float | None = None
        self.warned = False
        self.warnings = 0

    def observe(self, lag_s: float) -> str | None:
        """Returns "behind" or "recovered" when that was just logged, else None."""
        now = self.clock()
        if lag_s >= self.warn_s:
            if self._behind_since is None:
                self._behind_since = now
            if not self.warned and now - self._behind_since >= self.sustain_s:
                self.warned = True
                self.warnings += 1
                log.warning(
                    "camera %s: decoding is %.1f s behind the live stream (for %.0f s): the decoder cannot keep "
                    "up, frames reach the detector late (vidpipe_decoder_lag_seconds). Give decoding more CPU: "
                    "fewer cameras per process, a lower-resolution sub-stream, or hardware decoding",
                    self.camera_id,
                    lag_s,
                    now - self._behind_since,
                )
                return "behind"
            return None
        self._behind_since = None
        if self.warned and lag_s < self.warn_s / 2:
            self.warned = False
            log.warning(
                "camera %s: decoding caught up with the live stream (%.1f s behind)", self.camera_id, lag_s
            )
            return "recovered"
        return None
