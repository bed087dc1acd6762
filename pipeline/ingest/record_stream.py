"""A camera's main stream (``cameras[].record_source``): its packets kept for clips, never decoded.

Frigate's camera inputs have roles: a low-resolution substream is decoded for detection (``source``), the
camera's main stream is only recorded. Here the main stream's reader demuxes packets into its own
:class:`~pipeline.ingest.packet_ring.PacketRing` and nothing else: no decoder is opened, so a 1080p or 4K
main stream costs a socket and a memcpy per packet, not a decode.

Timeline: the two streams have unrelated clocks (each RTSP session's pts start anywhere). Each is mapped
onto the wall clock by its own :class:`~pipeline.ingest.stream_clock.StreamClock` (its least-delayed packet
anchors it), so the main ring's times (``RingPacket.t``) are wall-clock seconds, and a detect-stream moment
(``Frame.pts``) finds its main-stream packets at ``pts + detect offset`` (:meth:`RecordStream.clip_offset`).

Robustness: the reader has its own ``timeout=(open_timeout_s, read_timeout_s)`` and reconnect back-off (the
camera's ``reconnect`` settings) and runs on its own thread; the detect decoder never waits for it. While it
is down (:meth:`RecordStream.healthy` is false), the clip writer cuts clips from the detect stream's ring
instead and counts the fallback (``vidpipe_clip_fallbacks_total{camera}``; the status line shows it).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator

import av
import av.error

from pipeline.config.schema import CameraConfig
from pipeline.core.box_scale import ASPECT_TOLERANCE, BoxScale, Size, aspect_mismatch
from pipeline.core.metrics import MetricsRegistry
from pipeline.core.sources import redact_url
from pipeline.core.stage import Stage
from pipeline.ingest.decoder import backoff_delay, open_source
from pipeline.ingest.packet_ring import PacketRing
from pipeline.ingest.stream_clock import StreamClock

log = logging.getLogger(__name__)

_SILENCE_FRACTION = 0.95  # as the decoder: a read that blocked this long counts as the stream going silent


class RecordStream(Stage):
    """Reads ``cam.record_source`` into ``ring`` (wall-clock times) until stopped; reconnects forever.

    ``detect_offset``: the detect stream's current pts -> wall-clock offset (its decoder's StreamClock), None
    before its first frame. ``detect_size``: the detect stream's picture size (its ring's), None before it.
    """

    def __init__(
        self,
        cam: CameraConfig,
        ring: PacketRing,
        metrics: MetricsRegistry,
        *,
        detect_offset: Callable[[], float | None],
        detect_size: Callable[[], Size | None],
        rng: random.Random | None = None,
    ) -> None:
        super().__init__("record", cam.id, metrics)
        if cam.record_source is None:
            raise ValueError(f"camera {cam.id!r} has no record_source")
        self.cam = cam
        self.url = cam.record_source
        self.source_display = redact_url(cam.record_source)
        self.ring = ring
        self.detect_offset = detect_offset
        self.detect_size = detect_size
        self.online = False
        self.reason = "not connected yet"
        self.fallbacks = 0  # clips cut from the detect stream because this one was down
        self._last_packet = 0.0  # monotonic time of the newest packet
        self._clock = StreamClock()
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._warned_aspect: tuple[Size, Size] | None = None
        self._logged_down = False
        self.stopped_while_up = False
        self.metrics.note = self.note
        metrics.set_camera_value("record_stream_up", cam.id, 0.0)
        metrics.set_camera_value("clip_fallbacks_total", cam.id, 0.0)

    # -- health and routing (the clip writer's thread) -------------------------------------------------

    def healthy(self) -> bool:
        """Connected, and a packet arrived within ``read_timeout_s``: a clip asked for now can come from it."""
        return (
            self.online
            and self.ring.frame_size() is not None
            and time.monotonic() - self._last_packet < self.cam.read_timeout_s
        )

    def routable(self) -> bool:
        """A clip asked for now can be cut from this ring: the stream is healthy, or it was healthy when the
        run stopped it (clips of tracks ended at shutdown still get the main stream's pictures)."""
        return self.healthy() or (self.stopped_while_up and self.ring.frame_size() is not None)

    def clip_offset(self) -> float | None:
        """Seconds to add to a detect-stream ``Frame.pts`` to find the moment in this ring (wall clock)."""
        return self.detect_offset()

    def scale(self) -> BoxScale | None:
        """Detect-frame boxes -> main-stream pixels; None while either size is unknown. Warns once per size
        pair when the aspect ratios differ (the substream is assumed stretched, not cropped: box_scale.py)."""
        main, detect = self.ring.frame_size(), self.detect_size()
        if main is None or detect is None:
            return None
        if aspect_mismatch(detect, main) > ASPECT_TOLERANCE and self._warned_aspect != (detect, main):
            self._warned_aspect = (detect, main)
            log.warning(
                "camera %s: the detect stream (%dx%d) and record_source (%dx%d) differ in aspect ratio; "
                "boxes are scaled per axis, which is right only if the substream shows the whole picture "
                "stretched (not cropped)",
                self.cam.id,
                *detect,
                *main,
            )
        return BoxScale.between(detect, main)

    def count_fallback(self) -> None:
        with self._lock:
            self.fallbacks += 1
        self.metrics_registry.set_camera_value("clip_fallbacks_total", self.cam.id, float(self.fallbacks))

    def note(self) -> str:
        """Extra words for the status line."""
        state = "up" if self.healthy() else f"DOWN ({self.reason})"
        return f" main={state} fallbacks={self.fallbacks}"

    # -- reader thread --------------------------------------------------------------------------------

    def loop(self) -> None:
        failures = 0
        while not self.stop_event.is_set():
            if failures:
                rc = self.cam.reconnect
                delay = backoff_delay(failures, rc.initial_s, rc.max_s, rc.multiplier, rc.jitter, self._rng)
                if self.stop_event.wait(delay):
                    return
                self.metrics.reconnects += 1
            try:
                container = self._open()
            except Exception as exc:  # noqa: BLE001 - unreachable, refused, timed out, not a video ...
                self._set_down(
                    f"cannot open {self.source_display}: {redact_url(f'{type(exc).__name__}: {exc}')}"
                )
                failures += 1
                continue
            try:
                count, why = self._pump(container)
            finally:
                container.close()
            if self.stop_event.is_set():
                return
            self._set_down(why)
            failures = 1 if count else failures + 1

    def on_exit(self) -> None:
        self.stopped_while_up = self.healthy() and self.stop_event.is_set()
        self.online = False
        self.metrics_registry.set_camera_value("record_stream_up", self.cam.id, 0.0)
        self.ring.end()

    def _open(self) -> av.container.InputContainer:
        return open_source(self.cam, self.url)

    def _pump(self, container: av.container.InputContainer) -> tuple[int, str]:
        """Packets into the ring until the stream ends, goes silent or stop(); (packets, why it ended)."""
        stream = container.streams.video[0]
        self.ring.start_segment(stream)
        self._clock.reset()
        tb = stream.time_base
        silence_s = self.cam.read_timeout_s * _SILENCE_FRACTION
        packets: Iterator[av.Packet] = container.demux(stream)
        count = 0
        while not self.stop_event.is_set():
            t_read = time.monotonic()
            try:
                packet = next(packets)
            except StopIteration:
                return count, "end of stream"
            except av.error.ExitError:
                return count, f"no data for {self.cam.read_timeout_s:g}s (read timeout)"
            except av.error.FFmpegError as exc:
                return count, f"read error: {redact_url(str(exc))}"
            now = time.monotonic()
            if now - t_read >= silence_s:
                return count, f"no data for {now - t_read:.1f}s (read timeout {self.cam.read_timeout_s:g}s)"
            if packet.size == 0:
                continue
            ptb = packet.time_base or tb
            ts_dts = packet.dts if packet.dts is not None else packet.pts
            ts_pts = packet.pts if packet.pts is not None else packet.dts
            if ts_dts is None or ts_pts is None or ptb is None:
                continue  # no timestamp: cannot be placed on the wall clock
            # the clock follows decode order (dts never goes back); the packet is placed by its pts
            dts_s = float(ts_dts * ptb)
            wall = self._clock.capture_time(dts_s, time.time())
            self.ring.push(packet, t=float(ts_pts * ptb) + (wall - dts_s))
            self._last_packet = now
            count += 1
            self.metrics.observe()
            if not self.online:
                self._set_up()
        return count, "stopped"

    def _set_up(self) -> None:
        self.online = True
        self.reason = ""
        self.metrics_registry.set_camera_value("record_stream_up", self.cam.id, 1.0)
        size = self.ring.frame_size()
        log.info(
            "camera %s: record_source %s online (%s)",
            self.cam.id,
            self.source_display,
            f"{size[0]}x{size[1]}" if size else "size unknown",
        )

    def _set_down(self, reason: str) -> None:
        was = self.online
        self.online = False
        self.reason = reason
        self.metrics_registry.set_camera_value("record_stream_up", self.cam.id, 0.0)
        if was or not self._logged_down:
            self._logged_down = True
            log.warning(
                "camera %s: record_source %s down: %s; clips come from the detect stream until it is back "
                "(detection goes on)",
                self.cam.id,
                self.source_display,
                reason,
            )
