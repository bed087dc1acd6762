"""Builds and runs the stage graph for every camera of a config.

    decoder[cam] ──frames q (latest|block)──┐
    decoder[cam] ──frames q ────────────────┼─> detect (batched, shared) ──> analytics[cam] ──> events q ──> publisher
    decoder[cam] ──frames q ────────────────┘                                (faces, doors, tracks)
                                                                                   ├─> sink q ──> mqtt
                                                                                   ├─> sink q ──> webhook
                                                                                   └─> sink q ──> callable
    (pipeline/sinks: one delivery stage per sink, each with its own queue and spool; emit() only enqueues)

Shutdown drains front to back: decoders stop and close their queues, the detector finishes what is queued
and closes the analytics inboxes, analyzers end their tracks, and the publisher flushes every event (to Redis,
or to the on-disk spool if Redis is away). A camera that fails never stops the others.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from pipeline.analyzers import AnalyticsStage, Analyzer
from pipeline.config import PipelineConfig
from pipeline.detect_stage import DetectStage
from pipeline.detectors.base import Detector
from pipeline.events import Event
from pipeline.metrics import MetricsRegistry
from pipeline.queues import BoundedQueue, QueueClosed
from pipeline.sinks.build import build_sinks
from pipeline.sinks.delivery import DeliveryStage
from pipeline.types import Frame, FrameResult

log = logging.getLogger(__name__)

EventSink = Callable[[Event], None]  # an in-process sink; runs on its own delivery stage (pipeline/sinks)


def build_analyzers(cfg: PipelineConfig, camera_id: str, var_dir: Path) -> list[Analyzer]:
    """Face access first (it labels faces), then tracking (it carries those labels)."""
    cam = next(c for c in cfg.cameras if c.id == camera_id)
    analyzers: list[Analyzer] = []
    if cfg.faces.enabled:
        from pipeline.faces.analyzer import FaceAccessAnalyzer

        doors = [d for d in cfg.doors if camera_id in d.cameras]
        analyzers.append(FaceAccessAnalyzer(cfg.faces, doors, camera_id))
    if cfg.tracking.enabled:
        from pipeline.tracking.analyzer import TrackingAnalyzer

        analyzers.append(
            TrackingAnalyzer(
                camera_id, cfg.tracking, cam.analytics, var_dir / "snapshots", video_time=not cam.is_live
            )
        )
    return analyzers


class Pipeline:
    def __init__(
        self,
        cfg: PipelineConfig,
        *,
        detector: Detector | None = None,
        event_sinks: list[EventSink] | None = None,
        metrics: MetricsRegistry | None = None,
        var_dir: str | Path = "var",
        analyzers_factory: Callable[[str], list[Analyzer]] | None = None,
    ) -> None:
        from pipeline.decoder import DecoderStage
        from pipeline.publisher import Publisher

        self.cfg = cfg
        self.metrics = metrics or MetricsRegistry()
        self.var_dir = Path(var_dir)
        self.sinks = list(event_sinks or [])
        if detector is None:
            from pipeline.detectors.factory import build_detector

            detector = build_detector(cfg.detector)
        self.detector = detector

        self.events_q: BoundedQueue[Event] = BoundedQueue(cfg.redis.queue_size, "block", "events")
        self.publisher = Publisher(cfg.redis, self.events_q, self.metrics)
        self.deliveries: list[DeliveryStage] = [self.publisher]
        try:
            self.deliveries += build_sinks(
                cfg.sinks.with_spools_under(self.var_dir),
                self.metrics,
                callables=self.sinks,
                redis_spool_path=cfg.redis.spool_path,
            )
        except Exception:
            self.publisher.spool.close()
            raise
        self._deliveries_left = len(self.deliveries)

        cameras = [c for c in cfg.cameras if c.enabled]
        self.frame_wakeup = threading.Event()
        self.frame_queues: dict[str, BoundedQueue[Frame]] = {}
        self.inboxes: dict[str, BoundedQueue[FrameResult]] = {}
        self.decoders: dict[str, DecoderStage] = {}
        self.analytics: dict[str, AnalyticsStage] = {}
        self._analytics_left = len(cameras)
        self._left_lock = threading.Lock()
        make_analyzers = analyzers_factory or (lambda cam_id: build_analyzers(cfg, cam_id, self.var_dir))

        for cam in cameras:
            policy = cam.effective_queue_policy
            fq: BoundedQueue[Frame] = BoundedQueue(
                cam.queue_size, policy, f"frames[{cam.id}]", self.frame_wakeup
            )
            inbox: BoundedQueue[FrameResult] = BoundedQueue(
                cam.queue_size * 2, policy, f"results[{cam.id}]", threading.Event()
            )
            self.frame_queues[cam.id] = fq
            self.inboxes[cam.id] = inbox
            decoder = DecoderStage(cam, fq, self._on_decoder_event, self.metrics)
            # The decoder's line shows its output queue: frames waiting for the detector, and frames dropped
            # by a `latest` queue because the detector was behind.
            decoder.metrics.queue_depth = fq.qsize
            decoder.metrics.queue_drops = lambda fq=fq: fq.dropped
            self.decoders[cam.id] = decoder
            stage = AnalyticsStage(
                cam.id,
                inbox,
                make_analyzers(cam.id),
                self.emit,
                self.metrics,
                publish_detections=cfg.redis.publish_detections,
            )
            stage.on_exit_callbacks.append(self._analytics_done)
            self.analytics[cam.id] = stage

        self.detect = DetectStage(
            self.detector,
            self.frame_queues,
            self.frame_wakeup,
            self._route_result,
            cfg.detector.batch,
            self.metrics,
            on_all_inputs_closed=self._close_inboxes,
            camera_detect={c.id: c.detect for c in cameras},
            nms_iou=cfg.detector.nms_iou,
        )
        self._stopping = threading.Event()
        self._done = threading.Event()
        for delivery in self.deliveries:
            delivery.on_exit_callbacks.append(self._delivery_done)
        if not cameras:
            self._close_event_queues()

    # -- event plumbing -------------------------------------------------------------------------------
    def emit(self, event: Event) -> None:
        """Hand an event to every sink's delivery stage (Redis, MQTT, webhooks, callables like --print-events).

        Each ``submit`` only queues (or, when that sink's queue is full, spools): no sink's I/O runs on the
        calling camera thread, so a slow or dead sink never stalls a camera or another sink."""
        for delivery in self.deliveries:
            try:
                delivery.submit(event)
            except Exception:  # noqa: BLE001 - e.g. a spool write error: the other sinks still get it
                log.exception("sink %s could not take event %s", delivery.name, event.event_id)

    def _on_decoder_event(self, event: Event) -> None:
        self.emit(event)
        if event.type == "status.camera":
            stage = self.analytics.get(event.camera_id)
            if stage is not None:
                stage.camera_status(str(event.data.get("status", "")))

    def _route_result(self, result: FrameResult) -> None:
        inbox = self.inboxes[result.frame.camera_id]
        try:
            inbox.put(result)
        except QueueClosed:
            log.debug("camera %s: result after its analytics closed", result.frame.camera_id)

    def _close_inboxes(self) -> None:
        for q in self.inboxes.values():
            q.close()

    def _analytics_done(self) -> None:
        with self._left_lock:
            self._analytics_left -= 1
            last = self._analytics_left == 0
        if last:
            self._close_event_queues()

    def _close_event_queues(self) -> None:
        for delivery in self.deliveries:
            delivery.queue.close()

    def _delivery_done(self) -> None:
        with self._left_lock:
            self._deliveries_left -= 1
            last = self._deliveries_left == 0
        if last:
            self._done.set()

    # -- lifecycle --------------------------------------------------------------------------------------
    def start(self) -> Pipeline:
        for delivery in self.deliveries:
            delivery.start()
        for stage in self.analytics.values():
            stage.start()
        self.detect.start()
        for dec in self.decoders.values():
            dec.start()
        return self

    def stop(self) -> None:
        """Graceful stop: sources stop; everything already decoded is processed and published."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        log.info("stopping: sources first, then draining detect → analytics → publisher")
        for dec in self.decoders.values():
            dec.stop()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the publisher has flushed (all sources ended or stop() was called)."""
        return self._done.wait(timeout)

    def join(self, timeout: float = 30.0) -> bool:
        ok = self.wait(timeout)
        for s in [*self.decoders.values(), self.detect, *self.analytics.values(), *self.deliveries]:
            s.join(1.0)
        self.detector.close()
        return ok

    def health(self) -> dict:
        cams = {
            cid: {"decoder": d.state, "analytics": self.analytics[cid].state, "last_error": d.last_error}
            for cid, d in self.decoders.items()
        }
        ok = self.detect.state != "failed" and self.publisher.state != "failed"
        return {"ok": ok, "detect": self.detect.state, "publisher": self.publisher.state, "cameras": cams}

    def sink_status(self) -> dict[str, dict]:
        """State, connection, error, spool and queue of every sink other than Redis (see ``publisher``)."""
        return {d.name: {"state": d.state, **d.status()} for d in self.deliveries[1:]}
