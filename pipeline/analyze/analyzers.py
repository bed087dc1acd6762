"""Per-camera analytics after detection: what turns boxes into events.

An analyzer sees every detected frame of one camera, in order, on one thread, and returns events. The
runner chains them (face access first, so the tracker can carry a face identity as a sub-label).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from pipeline.core.events import Event
from pipeline.core.metrics import MetricsRegistry
from pipeline.core.queues import BoundedQueue, QueueClosed
from pipeline.core.stage import Stage
from pipeline.core.types import FrameResult

log = logging.getLogger(__name__)


class Analyzer(Protocol):
    """What the analytics stage calls, all on the camera's analytics thread, in order."""

    def process(self, result: FrameResult) -> list[Event]:
        """One detected frame of this camera; the events it causes."""
        ...

    def on_camera_status(self, status: str) -> list[Event]:
        """The camera's source changed status (a ``CameraStatus`` value: online, offline, reconnecting, failed,
        ended). Lost-camera statuses arrive before the next frame, so door decisions can fail closed."""
        ...

    def close(self) -> list[Event]:
        """The camera is done (shutdown or end of file): final events (tracks ended ...)."""
        ...


def detections_event(result: FrameResult) -> Event:
    f = result.frame
    return Event.for_frame(
        "detections.frame",
        f,
        {
            "detector": result.detector,
            "inference_ms": round(result.inference_ms, 2),
            "width": f.width,
            "height": f.height,
            "detections": result.detections.to_dicts(),
            **({"scan": result.scan.to_dict()} if result.scan is not None else {}),
        },
    )


class AnalyticsStage(Stage):
    """Runs one camera's analyzers on its detected frames and emits their events."""

    def __init__(
        self,
        camera_id: str,
        inbox: BoundedQueue[FrameResult],
        analyzers: list[Analyzer],
        emit: Callable[[Event], None],
        metrics: MetricsRegistry,
        publish_detections: bool = True,
    ) -> None:
        super().__init__("analytics", camera_id, metrics)
        self.inbox = inbox
        self.analyzers = analyzers
        self.emit = emit
        self.publish_detections = publish_detections
        self._status: deque[str] = deque()
        self._ended: deque[str] = deque()
        self._status_lock = threading.Lock()
        self.metrics.queue_depth = inbox.qsize
        self.metrics.queue_drops = lambda: inbox.dropped

    def camera_status(self, status: str) -> None:
        """Called from the decoder's thread; handled on this stage's thread.

        A loss of the camera (offline, reconnecting, failed) is handled before the next frame, so door
        decisions fail closed at once. ``ended`` (a file played to its end) is no emergency: it is handled
        after every frame already queued, so it comes last, as it happened.
        """
        with self._status_lock:
            (self._ended if status == "ended" else self._status).append(status)
        if self.inbox.wakeup is not None:
            self.inbox.wakeup.set()

    def _drain_status(self, include_ended: bool = False) -> None:
        while True:
            with self._status_lock:
                if include_ended and not self._status and self._ended:
                    self._status.extend(self._ended)
                    self._ended.clear()
                if not self._status:
                    return
                status = self._status.popleft()
            for a in self.analyzers:
                self._emit_all(self._guard(a, a.on_camera_status, status))

    def _guard(self, analyzer: Analyzer, call: Callable[..., list[Event]], *args: object) -> list[Event]:
        try:
            return call(*args) or []
        except Exception:  # noqa: BLE001 - an analyzer bug is logged and counted; others still run
            self.metrics.errors += 1
            log.exception("camera %s: analyzer %s raised", self.camera_id, type(analyzer).__name__)
            return []

    def _emit_all(self, events: list[Event]) -> None:
        for ev in events:
            self.emit(ev)

    def loop(self) -> None:
        while True:
            self._drain_status()
            if self.stop_event.is_set():  # cut off at the stop deadline: frames not analysed yet are left
                self._drain_status(include_ended=True)
                return
            try:
                result = self.inbox.get(timeout=0.2)
            except QueueClosed:
                self._drain_status(include_ended=True)
                return
            if result is None:
                continue
            if self.publish_detections:
                self.emit(detections_event(result))
            for a in self.analyzers:
                self._emit_all(self._guard(a, a.process, result))
            self.metrics.observe((time.time() - result.frame.capture_time) * 1000.0)

    def on_exit(self) -> None:
        for a in self.analyzers:
            self._emit_all(self._guard(a, a.close))
