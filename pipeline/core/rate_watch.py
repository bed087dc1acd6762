"""Notice when a camera gets fewer detections than it asked for.

Under overload a live camera does not build latency any more (its frame queue keeps only the newest frame),
it gets fewer detections instead. That is silent unless someone says so: ``DetectRateWatch`` logs one
warning when a camera's achieved detect rate has stayed below ``fraction`` of its ``detect_fps`` for
``sustain_s`` seconds, and one line when it is back. The rate is measured over the last ``window_s``
seconds; a camera that is not online (reconnecting, ended) is not judged (``pause()``).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

UNDER_RATE_FRACTION = 0.8
UNDER_RATE_SUSTAIN_S = 30.0
RATE_WINDOW_S = 10.0


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
    ) -> None:
        self.camera_id = camera_id
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
        self._lock = threading.Lock()  # detected/check run on the detect thread, pause on a decoder's

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
            if not self.warned and now - self._below_since >= self.sustain_s:
                self.warned = True
                self.warnings += 1
                log.warning(
                    "camera %s: detecting %.1f frames/s of the %g asked (detect_fps) for %.0f s: the detector "
                    "or decoding cannot keep up; frames are skipped to stay current. Lower detect_fps, run "
                    "fewer cameras, a smaller model, or batch (detector.batch)",
                    self.camera_id,
                    rate,
                    self.target_fps,
                    now - self._below_since,
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
