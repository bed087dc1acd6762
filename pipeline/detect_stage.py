"""The detection stage: one detector shared by every camera, fed in batches.

Like DeepStream's stream muxer, it gathers frames from all cameras' queues (round robin, so a busy camera
cannot starve a quiet one) until it has ``max_batch`` frames or the first frame has waited ``max_wait_ms``,
runs the detector once on the batch, and hands each camera its result. With ``max_batch: 1`` it simply runs
frame by frame.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from pipeline.config import BatchConfig
from pipeline.detectors.base import Detector
from pipeline.metrics import MetricsRegistry
from pipeline.queues import BoundedQueue, QueueClosed
from pipeline.stage import Stage
from pipeline.types import Frame, FrameResult

log = logging.getLogger(__name__)

ResultSink = Callable[[FrameResult], None]


class DetectStage(Stage):
    def __init__(
        self,
        detector: Detector,
        inputs: dict[str, BoundedQueue[Frame]],
        wakeup: threading.Event,
        sink: ResultSink,
        batch: BatchConfig,
        metrics: MetricsRegistry,
        on_all_inputs_closed: Callable[[], None] | None = None,
    ) -> None:
        super().__init__("detect", "", metrics)
        self.detector = detector
        self.inputs = dict(inputs)
        self.wakeup = wakeup
        self.sink = sink
        self.batch_cfg = batch
        self._open = set(self.inputs)
        self._rr = 0
        self._on_all_closed = on_all_inputs_closed
        self.batch_sizes: deque[int] = deque(maxlen=1000)  # recent batch sizes, for metrics/tests
        self.inference_metrics = metrics.stage("inference", detector.name)

    def set_input(self, camera_id: str, queue: BoundedQueue[Frame]) -> None:
        """Add a camera's queue, or replace it (a paused camera gets an empty open one), while running.

        The dict and set are replaced, never mutated, so the detect thread's round in progress keeps a
        consistent view; a queue dropped this way is simply no longer polled.
        """
        self.inputs = {**self.inputs, camera_id: queue}
        self._open = self._open | {camera_id}
        self.wakeup.set()

    def _poll_round(self, batch: list[Frame], limit: int) -> bool:
        """Take at most one frame from each open camera queue, in rotating order. True if any was taken."""
        cams = sorted(self._open)
        if not cams:
            return False
        took = False
        start = self._rr % len(cams)
        self._rr += 1
        for cam in cams[start:] + cams[:start]:
            if len(batch) >= limit:
                break
            try:
                item = self.inputs[cam].get(timeout=0)
            except QueueClosed:
                self._open.discard(cam)
                continue
            if item is not None:
                batch.append(item)
                took = True
        return took

    def _gather(self) -> list[Frame]:
        limit = self.batch_cfg.max_batch
        max_wait = self.batch_cfg.max_wait_ms / 1000.0
        batch: list[Frame] = []
        first_at: float | None = None
        while len(batch) < limit and self._open:
            self.wakeup.clear()
            took = self._poll_round(batch, limit)
            if batch and first_at is None:
                first_at = time.monotonic()
            if len(batch) >= limit or not self._open:
                break
            if took and limit > 1:
                continue  # keep draining while frames are there
            if batch:
                remaining = max_wait - (time.monotonic() - first_at)
                if remaining <= 0:
                    break
                self.wakeup.wait(remaining)
            else:
                # Nothing at all: sleep until a decoder puts something or closes its queue.
                self.wakeup.wait(0.2)
        return batch

    def loop(self) -> None:
        while self._open:
            batch = self._gather()
            if not batch:
                continue
            t0 = time.perf_counter()
            try:
                results = self.detector.detect([f.image for f in batch])
            except Exception:  # noqa: BLE001 - one bad batch must not stop detection for every camera
                self.metrics.errors += 1
                cams = sorted({f.camera_id for f in batch})
                log.exception(
                    "detector %s failed on a batch from cameras %s; batch skipped", self.detector.name, cams
                )
                continue
            ms = (time.perf_counter() - t0) * 1000.0
            self.inference_metrics.observe(ms, count=len(batch))
            self.batch_sizes.append(len(batch))
            per_frame = ms / len(batch)
            now = time.time()
            for frame, dets in zip(batch, results, strict=True):
                self.metrics.observe((now - frame.capture_time) * 1000.0)
                self.sink(
                    FrameResult(
                        frame=frame, detections=dets, detector=self.detector.name, inference_ms=per_frame
                    )
                )

    def on_exit(self) -> None:
        if self._on_all_closed is not None:
            self._on_all_closed()
