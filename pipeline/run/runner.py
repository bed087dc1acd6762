"""Builds and runs the stage graph for every camera of a config.

    decoder[cam] ──frames q (latest|block)──┐
    decoder[cam] ──frames q ────────────────┼─> detect (batched, shared) ──> analytics[cam] ──> events q ──> publisher
    decoder[cam] ──frames q ────────────────┘                                (faces, doors, tracks)
                                                                                   ├─> sink q ──> mqtt
                                                                                   ├─> sink q ──> webhook
                                                                                   └─> sink q ──> callable
    (pipeline/deliver: one delivery stage per sink, each with its own queue and spool; emit() only enqueues)

Shutdown drains front to back: decoders stop and close their queues, the detector finishes what is queued
and closes the analytics inboxes, analyzers end their tracks, and the publisher flushes every event (to Redis,
or to the on-disk spool if Redis is away). A camera that fails never stops the others.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.analyze.analyzers import AnalyticsStage, Analyzer
from pipeline.config.paths import resolve_runtime_paths
from pipeline.config.schema import CameraConfig, PipelineConfig
from pipeline.config.var_dir import RuntimePaths
from pipeline.core.events import Event
from pipeline.core.metrics import MetricsRegistry
from pipeline.core.queues import BoundedQueue, QueueClosed
from pipeline.core.states import CameraStatus, StageState
from pipeline.core.types import Frame, FrameResult
from pipeline.deliver.build import build_sinks
from pipeline.deliver.delivery import DeliveryStage
from pipeline.detect.detect_stage import DetectStage
from pipeline.detect.detectors.base import Detector
from pipeline.ingest.clip_writer import ClipWriter
from pipeline.ingest.packet_ring import PacketRing
from pipeline.run.track_clips import TrackClips

if TYPE_CHECKING:
    from pipeline.deliver.ha_discovery import HaSite
    from pipeline.ingest.decoder import DecoderStage
    from pipeline.ingest.record_stream import RecordStream

log = logging.getLogger(__name__)

EventSink = Callable[[Event], None]  # an in-process sink; runs on its own delivery stage (pipeline/deliver)
_WAIT_SLICE_S = 0.1  # the main thread returns to the interpreter this often (signals)


def build_analyzers(
    cfg: PipelineConfig, camera_id: str, var_dir: Path, clips: ClipWriter | None = None
) -> list[Analyzer]:
    """Face access first (it labels faces), then tracking (it carries those labels)."""
    cam = next(c for c in cfg.cameras if c.id == camera_id)
    analyzers: list[Analyzer] = []
    if cfg.faces.enabled:
        from pipeline.analyze.faces.analyzer import FaceAccessAnalyzer

        doors = [d for d in cfg.doors if camera_id in d.cameras]
        analyzers.append(
            FaceAccessAnalyzer(
                cfg.faces,
                doors,
                camera_id,
                redis_url=cfg.redis.url,
                redis_prefix=cfg.redis.prefix,
                clips=clips,
            )
        )
    if cfg.tracking.enabled:
        from pipeline.analyze.tracking.analyzer import TrackingAnalyzer

        snapshots = RuntimePaths(var_dir).snapshots
        analyzers.append(
            TrackingAnalyzer(camera_id, cfg.tracking, cam.analytics, snapshots, video_time=not cam.is_live)
        )
    return analyzers


def _ha_site(cfg: PipelineConfig, cameras: list[CameraConfig]) -> HaSite | None:
    """The entities Home Assistant discovery announces (None when it is off)."""
    if cfg.sinks.mqtt is None or not cfg.sinks.mqtt.home_assistant.enabled:
        return None
    from pipeline.deliver.ha_discovery import site_from

    return site_from(cameras, cfg.doors, cfg.sinks.mqtt.home_assistant.classes)


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
        from pipeline.deliver.publisher import Publisher

        cfg = resolve_runtime_paths(cfg, var_dir)  # spool, gallery, crops, audit logs under --var-dir
        self.cfg = cfg
        self.metrics = metrics or MetricsRegistry()
        self.var_dir = Path(var_dir)
        self.sinks = list(event_sinks or [])
        if detector is None:
            from pipeline.detect.detectors.factory import build_detector

            detector = build_detector(cfg.detector)
        self.detector = detector

        self.events_q: BoundedQueue[Event] = BoundedQueue(cfg.redis.queue_size, "block", "events")
        self.publisher = Publisher(cfg.redis, self.events_q, self.metrics)
        self.deliveries: list[DeliveryStage] = [self.publisher]

        cameras = [c for c in cfg.cameras if c.enabled]
        self.frame_wakeup = threading.Event()
        self.frame_queues: dict[str, BoundedQueue[Frame]] = {}
        self.inboxes: dict[str, BoundedQueue[FrameResult]] = {}
        self.decoders: dict[str, DecoderStage] = {}
        self.analytics: dict[str, AnalyticsStage] = {}
        self._analytics_left = len(cameras)
        self._left_lock = threading.Lock()
        # clips: one packet ring per camera (fed by its decoder), one writer thread for every camera
        self.rings: dict[str, PacketRing] = {}
        self.records: dict[str, RecordStream] = {}  # main streams (record_source) of cameras that have one
        self.clips: ClipWriter | None = None
        if any(cfg.clips.for_camera(c.id).enabled for c in cfg.cameras):
            self.clips = ClipWriter(
                cfg.clips.dir, self.rings, cfg.clips.for_camera, self.emit, self.metrics, cfg.clips.queue_size
            )
        self.track_clips = TrackClips(self.clips) if self.clips is not None else None
        make_analyzers: Callable[[str], list[Analyzer]] = analyzers_factory or (
            lambda cam_id: build_analyzers(cfg, cam_id, self.var_dir, self.clips)
        )

        self.latest: dict[str, FrameResult] = {}  # live tap: newest detected frame per camera (a reference)
        self._cams_lock = threading.RLock()
        self._placeholders: dict[str, BoundedQueue[Frame]] = {}  # paused cameras: empty, open detector inputs
        self._make_analyzers = make_analyzers
        try:
            self.deliveries += build_sinks(
                cfg.sinks,  # its spools already under --var-dir (resolve_runtime_paths)
                self.metrics,
                callables=self.sinks,
                redis_spool_path=cfg.redis.spool_path,
                ha_site=_ha_site(cfg, cameras),
            )
            for cam in cameras:
                self._build_camera(cam)
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
                detect_fps={c.id: c.detect_fps for c in cameras if c.detect_fps},
            )
        except Exception:
            for delivery in self.deliveries:  # release the spools opened so far (their file locks)
                delivery.spool.close()
            raise
        self._deliveries_left = len(self.deliveries)
        self._stopping = threading.Event()
        self._done = threading.Event()
        for delivery in self.deliveries:
            delivery.on_exit_callbacks.append(self._delivery_done)
        if not cameras:
            self._close_event_queues()

    # -- cameras ------------------------------------------------------------------------------------------
    def _build_camera(self, cam: CameraConfig) -> None:
        """Create a camera's frame queue, decoder, results inbox and analytics stage (not started)."""
        policy = cam.effective_queue_policy
        inbox: BoundedQueue[FrameResult] = BoundedQueue(
            cam.queue_size * 2, policy, f"results[{cam.id}]", threading.Event()
        )
        self.inboxes[cam.id] = inbox
        self._build_decoder(cam)
        stage = AnalyticsStage(
            cam.id,
            inbox,
            self._make_analyzers(cam.id),
            self.emit,
            self.metrics,
            publish_detections=self.cfg.redis.publish_detections,
        )
        stage.on_exit_callbacks.append(self._analytics_done)
        self.analytics[cam.id] = stage

    def _build_decoder(self, cam: CameraConfig) -> None:
        from pipeline.ingest.decoder import DecoderStage

        policy = cam.effective_queue_policy
        # A `latest` frames queue holds only the newest frame: the detector never gets a stale one, and a
        # slow detector costs detections, not latency (and not 8 frames of memory per camera).
        fq: BoundedQueue[Frame] = BoundedQueue(
            1 if policy == "latest" else cam.queue_size, policy, f"frames[{cam.id}]", self.frame_wakeup
        )
        self.frame_queues[cam.id] = fq
        ring = None
        clip_cfg = self.cfg.clips.for_camera(cam.id)
        if self.clips is not None and clip_cfg.enabled:
            ring = self.rings.get(cam.id)
            if ring is None:
                ring = PacketRing(cam.id, clip_cfg.ring_max_s, int(clip_cfg.ring_max_mb * 1024 * 1024))
                self.rings[cam.id] = ring
        from pipeline.ingest.thread_budget import decode_threads

        cameras = sum(1 for c in self.cfg.cameras if c.enabled)
        decoder = DecoderStage(
            cam, fq, self._on_decoder_event, self.metrics, ring=ring, ffmpeg_threads=decode_threads(cameras)
        )
        self._build_record_stream(cam, decoder, ring)
        # The decoder's line shows its output queue: frames waiting for the detector (the decoder itself
        # reports the frames a `latest` queue dropped because the detector was behind).
        decoder.metrics.queue_depth = fq.qsize
        self.decoders[cam.id] = decoder

    def _build_record_stream(self, cam: CameraConfig, decoder: DecoderStage, ring: PacketRing | None) -> None:
        """A camera's main stream (``record_source``): its own reader and ring, for clips only."""
        if cam.record_source is None:
            return
        if ring is None or self.clips is None:
            log.warning("camera %s: record_source is not read: clips are disabled for this camera", cam.id)
            return
        from pipeline.ingest.record_stream import RecordStream

        clip_cfg = self.cfg.clips.for_camera(cam.id)
        main_ring = PacketRing(cam.id, clip_cfg.ring_max_s, int(clip_cfg.ring_max_mb * 1024 * 1024))
        clock = decoder.stream_clock
        record = RecordStream(
            cam, main_ring, self.metrics, detect_offset=lambda: clock.offset, detect_size=ring.frame_size
        )
        self.records[cam.id] = record
        self.clips.record_streams[cam.id] = record

    # -- cameras at run time (the web app, its JSON API and `cameras` CLI call these) ----------------------
    def camera_configs(self) -> list[CameraConfig]:
        with self._cams_lock:
            return list(self.cfg.cameras)

    def add_camera(self, cam: CameraConfig) -> None:
        """Start a new camera while the others keep flowing (their queues and threads are not touched)."""
        with self._cams_lock:
            if any(c.id == cam.id for c in self.cfg.cameras):
                raise ValueError(f"camera id {cam.id!r} is already in use")
            self._check_running()
            self.cfg.cameras.append(cam)
            if cam.enabled:
                self._start_camera(cam)

    def update_camera(self, cam: CameraConfig) -> None:
        """Replace a camera's settings: its stages restart with the new ones; other cameras are untouched."""
        with self._cams_lock:
            i = self._index(cam.id)
            self._check_running()
            counted = cam.id in self.analytics
            if counted and not cam.enabled:
                with self._left_lock:
                    last = self._analytics_left == 1
                if last:  # its analytics would end, and with them the run (as for remove_camera)
                    raise ValueError(f"camera {cam.id!r} is the last running camera; pause it instead")
            self._stop_camera(cam.id, end_analytics=True, forget=False)
            self.cfg.cameras[i] = cam
            if cam.enabled:
                self._start_camera(cam, counted=counted)
            elif counted:
                self._analytics_done()

    def pause_camera(self, camera_id: str) -> None:
        """Stop decoding one camera; its door decisions fail closed (status ``paused``) until resumed."""
        with self._cams_lock:
            i = self._index(camera_id)
            self.cfg.cameras[i] = self.cfg.cameras[i].model_copy(update={"enabled": False})
            if camera_id in self.decoders:
                self._stop_camera(camera_id, end_analytics=False, forget=False)

    def resume_camera(self, camera_id: str) -> None:
        with self._cams_lock:
            i = self._index(camera_id)
            self._check_running()
            cam = self.cfg.cameras[i] = self.cfg.cameras[i].model_copy(update={"enabled": True})
            if camera_id not in self.decoders:
                self._start_camera(cam)

    def remove_camera(self, camera_id: str) -> None:
        """Stop a camera for good (its tracks end, its events are flushed) and forget it. The last camera
        cannot be removed: without one the pipeline would finish; pause it instead."""
        with self._cams_lock:
            i = self._index(camera_id)
            if len(self.cfg.cameras) == 1:
                raise ValueError(f"camera {camera_id!r} is the last camera; pause it instead of removing it")
            counted = camera_id in self.analytics
            self._stop_camera(camera_id, end_analytics=True, forget=True)
            del self.cfg.cameras[i]
            if counted:
                self._analytics_done()
            self.latest.pop(camera_id, None)

    def _index(self, camera_id: str) -> int:
        for i, c in enumerate(self.cfg.cameras):
            if c.id == camera_id:
                return i
        raise KeyError(f"no camera {camera_id!r}")

    def _check_running(self) -> None:
        if self._stopping.is_set() or self.detect.state in ("stopped", "failed"):
            raise RuntimeError("the pipeline is stopping; cameras cannot be started now")

    def _start_camera(self, cam: CameraConfig, *, counted: bool = False) -> None:
        """Start a camera's stages; ``counted``: its analytics already count in ``_analytics_left``."""
        self._placeholders.pop(cam.id, None)
        if cam.id in self.analytics:  # resumed: analytics kept running, only the decoder is new
            self._build_decoder(cam)
        else:
            if not counted:
                with self._left_lock:
                    self._analytics_left += 1
            self._build_camera(cam)
            self.analytics[cam.id].start()
        # its regions/tiling and its rate watch follow its (new) settings
        self.detect.configure_camera(cam.id, cam.detect, cam.detect_fps)
        self.detect.set_input(cam.id, self.frame_queues[cam.id])
        self.decoders[cam.id].start()
        if cam.id in self.records:
            self.records[cam.id].start()

    def _stop_camera(
        self, camera_id: str, *, end_analytics: bool, forget: bool, timeout: float = 10.0
    ) -> None:
        """Swap the detector's input for an empty open queue first (so the detect stage never sees all
        inputs closed and ends), then stop the decoder; with ``end_analytics`` also end the camera's
        analytics (tracks end, events flushed) without counting it as finished (the caller does)."""
        placeholder: BoundedQueue[Frame] = BoundedQueue(1, "latest", f"paused[{camera_id}]")
        self.detect.set_input(camera_id, placeholder)
        self.frame_queues[camera_id] = placeholder
        self._placeholders[camera_id] = placeholder
        record = self.records.pop(camera_id, None)
        if record is not None:  # first: its blocking read may take read_timeout_s to notice
            record.stop()
            if self.clips is not None:
                self.clips.record_streams.pop(camera_id, None)
        decoder = self.decoders.pop(camera_id, None)
        if decoder is not None:
            decoder.stop()
            decoder.join(timeout)
            status = CameraStatus.REMOVED if forget else CameraStatus.PAUSED
            self._on_decoder_event(
                Event(
                    type="status.camera",
                    camera_id=camera_id,
                    data={"status": status, "reason": "by the operator"},
                )
            )
        if record is not None:
            record.join(timeout)
            if forget:
                record.metrics.note = None  # the status line stops reporting a removed camera's main stream
        if end_analytics:
            stage = self.analytics.pop(camera_id, None)
            inbox = self.inboxes.pop(camera_id, None)
            if stage is not None:
                stage.on_exit_callbacks.remove(self._analytics_done)
            if inbox is not None:
                inbox.close()
            if stage is not None:
                stage.join(timeout)
        if forget:
            self.rings.pop(camera_id, None)
            self._placeholders.pop(camera_id, None)
            self.frame_queues.pop(camera_id, None)
            placeholder.close()  # the detect stage forgets this camera on its next round
            self.detect.configure_camera(camera_id, None)

    # -- event plumbing -------------------------------------------------------------------------------
    def emit(self, event: Event) -> None:
        """Hand an event to every sink's delivery stage (Redis, MQTT, webhooks, callables like --print-events).

        Each ``submit`` only queues (or, when that sink's queue is full, spools): no sink's I/O runs on the
        calling camera thread, so a slow or dead sink never stalls a camera or another sink."""
        if self.track_clips is not None:
            self.track_clips.observe(event)  # tracks.end: names its clip (the writer cuts it later)
        for delivery in self.deliveries:
            try:
                delivery.submit(event)
            except Exception:  # noqa: BLE001 - e.g. a spool write error: the other sinks still get it
                log.exception("sink %s could not take event %s", delivery.name, event.event_id)

    def _on_decoder_event(self, event: Event) -> None:
        self.emit(event)
        if event.type == "status.camera":
            self.detect.camera_status(event.camera_id, str(event.data.get("status", "")))
            stage = self.analytics.get(event.camera_id)
            if stage is not None:
                stage.camera_status(str(event.data.get("status", "")))

    def _route_result(self, result: FrameResult) -> None:
        self.latest[result.frame.camera_id] = result  # by reference: no copy, no encoding on this thread
        inbox = self.inboxes.get(result.frame.camera_id)
        if inbox is None:
            return  # the camera was removed while this frame was in the detector
        try:
            inbox.put(result)
        except QueueClosed:
            log.debug("camera %s: result after its analytics closed", result.frame.camera_id)

    def _close_inboxes(self) -> None:
        for q in list(self.inboxes.values()):  # a copy: cameras may be added or removed meanwhile
            q.close()

    def _analytics_done(self) -> None:
        with self._left_lock:
            self._analytics_left -= 1
            last = self._analytics_left == 0
        if last:
            for record in list(self.records.values()):  # no camera is left to make clips of
                record.stop()
            if self.clips is not None:  # its doors.evidence events go out before the queues close
                self.clips.finish()
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
        if self.clips is not None:
            self.clips.start()
        for stage in self.analytics.values():
            stage.start()
        self.detect.start()
        for dec in self.decoders.values():
            dec.start()
        for record in self.records.values():
            record.start()
        return self

    def stop(self) -> None:
        """Graceful stop: sources stop; everything already decoded is processed and published."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        log.info("stopping: sources first, then draining detect → analytics → publisher")
        for dec in list(self.decoders.values()):
            dec.stop()
        for record in list(self.records.values()):
            record.stop()
        for q in list(self._placeholders.values()):
            q.close()

    def cut_off(self) -> None:
        """The stop deadline is near: stop analysing and stop sending; every event goes to its spool.

        Decoders are already stopped (``stop()``). Analytics stop taking frames (frames still waiting are not
        analysed) and end their tracks; each delivery stage parks its queue in its spool and spools every
        later event directly. Nothing already turned into an event is lost: it is sent or spooled."""
        self.stop()
        log.warning("stop deadline near: frames not yet analysed are dropped, undelivered events are spooled")
        for stage in list(self.analytics.values()):
            stage.stop()
        for delivery in self.deliveries:
            delivery.cut_off()

    def wait_cut_off(self, timeout: float) -> bool:
        """After ``cut_off``: wait until analytics and delivery threads ended (their events are spooled)."""
        deadline = time.monotonic() + timeout
        for stage in self.analytics.values():  # their last events (tracks ended) go to the spools
            while not stage.join(_WAIT_SLICE_S):  # short slices: the main thread stays free for signals
                if time.monotonic() >= deadline:
                    return False
        for delivery in self.deliveries:  # one blocked on a hung destination holds nothing unspooled
            while not delivery.settled_after_cut_off():
                if time.monotonic() >= deadline:
                    return False
                delivery.join(_WAIT_SLICE_S / 2)
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the publisher has flushed (all sources ended or stop() was called).

        Waits in short slices rather than one long ``Event.wait``: Python runs a signal handler only in the
        main thread, and only once that thread is back in the interpreter. The kernel may hand SIGTERM to
        any thread (a decoder, FFmpeg's), and then a main thread parked in one untimed wait never woke and
        the signal was lost.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = _WAIT_SLICE_S if deadline is None else min(_WAIT_SLICE_S, deadline - time.monotonic())
            if step <= 0:
                return self._done.is_set()
            if self._done.wait(step):
                return True

    def join(self, timeout: float = 30.0) -> bool:
        ok = self.wait(timeout)
        for record in list(self.records.values()):  # main streams end with the run (none is waited on)
            record.stop()
        clips = [self.clips] if self.clips is not None else []
        stages = [*self.decoders.values(), *self.records.values(), self.detect, *self.analytics.values()]
        for s in [*stages, *clips, *self.deliveries]:
            s.join(1.0)
        self.detector.close()
        return ok

    def health(self) -> dict:
        cams = {
            cid: {"decoder": d.state, "analytics": self.analytics[cid].state, "last_error": d.last_error}
            for cid, d in list(self.decoders.items())
            if cid in self.analytics
        }
        ok = self.detect.state != StageState.FAILED and self.publisher.state != StageState.FAILED
        return {"ok": ok, "detect": self.detect.state, "publisher": self.publisher.state, "cameras": cams}

    def sink_status(self) -> dict[str, dict]:
        """State, connection, error, spool and queue of every sink other than Redis (see ``publisher``)."""
        return {d.name: {"state": d.state, **d.status()} for d in self.deliveries[1:]}
