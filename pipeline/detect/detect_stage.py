"""The detection stage: one detector shared by every camera, fed in batches.

Like DeepStream's stream muxer, it gathers frames from all cameras' queues (round robin, so a busy camera
cannot starve a quiet one) until it has ``max_batch`` frames or the first frame has waited ``max_wait_ms``,
runs the detector once on the batch, and hands each camera its result. With ``max_batch: 1`` it simply runs
frame by frame.

Cameras with ``detect.regions`` or ``detect.tiling`` on (pipeline/detect/regions/) give the batch several crops
per frame instead of one frame: every crop of every frame in the batch goes through the detector in the
same call, and each camera's planner merges its crops' boxes back into one frame result. A static frame
can give no crop at all (no inference). Each result's ``scan`` says what ran; ``inference_ms`` is the
frame's own share (planning + its crops' part of the batch + merging).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping

import numpy as np

from pipeline.config.regions import CameraDetectConfig
from pipeline.config.schema import BatchConfig
from pipeline.core.metrics import MetricsRegistry
from pipeline.core.queues import BoundedQueue, QueueClosed
from pipeline.core.rate_watch import DetectRateWatch
from pipeline.core.stage import Stage
from pipeline.core.states import CameraStatus
from pipeline.core.types import Frame, FrameResult, ScanInfo
from pipeline.detect.detectors.base import Detector
from pipeline.detect.regions.planner import RegionPlanner, ScanPlan, detector_input_size

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
        camera_detect: Mapping[str, CameraDetectConfig] | None = None,
        nms_iou: float = 0.45,
        detect_fps: dict[str, float] | None = None,
    ) -> None:
        """``detect_fps``: camera id -> the rate it asked for; those cameras get a ``DetectRateWatch``."""
        super().__init__("detect", "", metrics)
        self.detector = detector
        self.inputs = dict(inputs)
        self.wakeup = wakeup
        self.sink = sink
        self.batch_cfg = batch
        self._open = set(self.inputs)
        self._inputs_lock = threading.Lock()  # set_input vs. the detect thread dropping a closed queue
        self._rr = 0
        self._on_all_closed = on_all_inputs_closed
        self.batch_sizes: deque[int] = deque(maxlen=1000)  # recent batch sizes, for metrics/tests
        self.inference_metrics = metrics.stage("inference", detector.name)
        self.rate_watches = {
            cam: DetectRateWatch(cam, fps, metrics=metrics) for cam, fps in (detect_fps or {}).items()
        }
        size = self._crop_size = detector_input_size(detector)
        self._nms_iou = nms_iou
        #: per camera with regions or tiling on; cameras without one get the whole frame as before
        self.planners: dict[str, RegionPlanner] = {
            cam: RegionPlanner(dc, size, nms_iou)
            for cam, dc in (camera_detect or {}).items()
            if dc.active and cam in self.inputs
        }

    def set_input(self, camera_id: str, queue: BoundedQueue[Frame]) -> None:
        """Add a camera's queue, or replace it (a paused camera gets an empty open one), while running.

        The dict and set are replaced, never mutated, so the detect thread's round in progress keeps a
        consistent view; a queue dropped this way is simply no longer polled.
        """
        with self._inputs_lock:
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
            q = self.inputs[cam]
            try:
                item = q.get(timeout=0)
            except QueueClosed:
                with self._inputs_lock:
                    if self.inputs.get(cam) is q:  # not replaced meanwhile by set_input
                        self._open = self._open - {cam}
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
            if batch and first_at is not None:
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
            self._check_rates()
            if batch:
                self._handed_to_detector(batch)
                self._run_batch(batch)

    def _run_batch(self, batch: list[Frame]) -> None:
        t0 = time.perf_counter()
        try:
            plans, spans, inputs, plan_ms = self._plan(batch)
            t1 = time.perf_counter()
            results = self.detector.detect(inputs) if inputs else []
        except Exception:  # noqa: BLE001 - one bad batch must not stop detection for every camera
            self.metrics.errors += 1
            cams = sorted({f.camera_id for f in batch})
            log.exception(
                "detector %s failed on a batch from cameras %s; batch skipped", self.detector.name, cams
            )
            return
        det_ms = (time.perf_counter() - t1) * 1000.0
        self.inference_metrics.observe((time.perf_counter() - t0) * 1000.0, count=len(batch))
        self.batch_sizes.append(len(batch))
        per_input = det_ms / max(1, len(inputs))
        now = time.time()
        for i, frame in enumerate(batch):
            a, b = spans[i]
            planned = plans[i]
            scan: ScanInfo | None = None
            ms = plan_ms[i] + per_input * (b - a)
            if planned is None:
                dets = results[a]
            else:
                tm = time.perf_counter()
                planner, plan = planned
                dets, scan = planner.finish(plan, results[a:b])
                ms += (time.perf_counter() - tm) * 1000.0
                self._count_scan(scan)
            self.metrics.observe((now - frame.capture_time) * 1000.0)
            self.sink(
                FrameResult(
                    frame=frame, detections=dets, detector=self.detector.name, inference_ms=ms, scan=scan
                )
            )

    def _plan(
        self, batch: list[Frame]
    ) -> tuple[
        list[tuple[RegionPlanner, ScanPlan] | None], list[tuple[int, int]], list[np.ndarray], list[float]
    ]:
        """Per frame: its plan (None = whole frame), its slice of the detector inputs, planning time."""
        plans: list[tuple[RegionPlanner, ScanPlan] | None] = []
        spans: list[tuple[int, int]] = []
        inputs: list[np.ndarray] = []
        plan_ms: list[float] = []
        for frame in batch:
            planner = self.planners.get(frame.camera_id)
            start = len(inputs)
            tp = time.perf_counter()
            if planner is None:
                plans.append(None)
                inputs.append(frame.image)
            else:
                plan = planner.plan(frame.image)
                plans.append((planner, plan))
                inputs.extend(frame.image[y1:y2, x1:x2] for x1, y1, x2, y2 in plan.crops)
            plan_ms.append((time.perf_counter() - tp) * 1000.0)
            spans.append((start, len(inputs)))
        return plans, spans, inputs, plan_ms

    def configure_camera(
        self, camera_id: str, detect: CameraDetectConfig | None, detect_fps: float | None = None
    ) -> None:
        """Set (or with None / both off, drop) a camera's regions/tiling while running, e.g. a camera added
        or edited at run time. A new planner starts with a full scan; frames already planned finish with
        the planner that planned them. ``detect_fps`` (None: drop) sets its rate watch, as at start."""
        if detect is None or not detect.active:
            self.planners.pop(camera_id, None)
        else:
            self.planners[camera_id] = RegionPlanner(detect, self._crop_size, self._nms_iou)
        # replaced, not mutated: the detect thread iterates the watches (_check_rates)
        watches = {cam: w for cam, w in self.rate_watches.items() if cam != camera_id}
        if detect_fps:
            watches[camera_id] = DetectRateWatch(camera_id, detect_fps, metrics=self.metrics_registry)
        self.rate_watches = watches

    def _count_scan(self, scan: ScanInfo) -> None:
        """Process counters: detector inputs run for region/tile cameras, and scans by kind."""
        self.metrics_registry.inc("detect_crops_total", scan.crops)
        self.metrics_registry.inc(f"detect_scans_{scan.kind}_total")

    def _handed_to_detector(self, batch: list[Frame]) -> None:
        """Frame age at detection (live latency) and each camera's achieved detect rate."""
        now = time.time()
        for frame in batch:
            self.metrics_registry.observe_frame_age(frame.camera_id, now - frame.capture_time)
            watch = self.rate_watches.get(frame.camera_id)
            if watch is not None:
                watch.detected()

    def _check_rates(self) -> None:
        for watch in self.rate_watches.values():
            watch.check()

    def camera_status(self, camera_id: str, status: str) -> None:
        """A camera that is not online is not judged on its detect rate (see DetectRateWatch.pause)."""
        watch = self.rate_watches.get(camera_id)
        if watch is not None and status != CameraStatus.ONLINE:
            watch.pause()

    def on_exit(self) -> None:
        if self._on_all_closed is not None:
            self._on_all_closed()
