"""The decoder stage: one camera's source (file, RTSP, HTTP, V4L2) decoded with PyAV into ``Frame`` objects.

Live sources reconnect forever (or up to ``reconnect.max_attempts``) with exponential back-off and jitter,
reporting each change as a ``status.camera`` event. Files are read once (or looped) and then the output
queue is closed so the stages downstream drain and finish.

Every blocking FFmpeg call runs under PyAV's ``timeout=(open_timeout_s, read_timeout_s)``: without it a
server that stops sending (but keeps the socket open) would block the read forever. ``stop()`` is
therefore noticed at once during back-off sleeps and queue waits, and within ``read_timeout_s`` while a
network read is blocked.

Timestamps: ``Frame.pts`` is the stream's time in seconds. For files it keeps growing across loops (each
pass is offset by the length of the previous ones) and falls back to ``index / frame rate`` for streams
without timestamps (raw .h264). For live sources it is the stream's own clock, which restarts with every
connection; use ``capture_time`` to order live frames across reconnects. ``seq`` counts every decoded
frame (forwarded or thinned out by ``detect_fps``), so gaps in ``seq`` show thinning.

``capture_time`` of a live frame comes from the stream clock (``pipeline/ingest/stream_clock.py``: pts mapped to
wall time at connect, re-anchored on reconnect or a pts discontinuity), so a frame FFmpeg hands out late
keeps its real, old time; for files it is the time the frame was decoded.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterator

import av
import av.error

from pipeline.config.schema import CameraConfig
from pipeline.core.events import Event
from pipeline.core.metrics import MetricsRegistry
from pipeline.core.queues import BoundedQueue, QueueClosed
from pipeline.core.rate_watch import DecoderLagWatch
from pipeline.core.sources import open_spec, redact_url
from pipeline.core.stage import Stage
from pipeline.core.states import CameraStatus
from pipeline.core.types import Frame
from pipeline.ingest.packet_ring import PacketRing
from pipeline.ingest.stream_clock import StreamClock

log = logging.getLogger(__name__)

LOG_EVERY_N_ERRORS = 100  # decode errors are logged on the 1st, 101st, 201st ...
MAX_CONSECUTIVE_READ_ERRORS = 20  # a file that keeps failing to read after this many retries is done
_SILENCE_FRACTION = (
    0.95  # a read that blocked this fraction of read_timeout_s counts as the stream going silent
)


# FFmpeg "renders" any text file with one of these extensions (.txt, .ans, .nfo ...) as a video of the text.
_TEXT_FORMATS = frozenset({"tty", "bin", "xbin", "adf", "idf"})
_TEXT_CODECS = frozenset({"ansi", "bintext", "xbin", "idf"})


class SourceError(Exception):
    """The source opened but cannot be used (e.g. it has no video stream)."""


class FrameThinner:
    """Forwards at most ``fps`` frames per second: the first frame of each ``1/fps`` time slot.

    Slots (rather than "at least 1/fps since the last one") keep the average rate at ``fps`` even when the
    source rate is not a multiple of it (25 fps thinned to 10 fps gives 10, not 8.3).
    """

    def __init__(self, fps: float | None) -> None:
        self.interval = 1.0 / fps if fps else None
        self._last_slot: int | None = None

    def keep(self, t: float) -> bool:
        if self.interval is None:
            return True
        slot = math.floor(t / self.interval + 1e-6)
        if self._last_slot is None or slot > self._last_slot or slot < self._last_slot - 1:
            # (a slot far in the past means the clock went back, e.g. a new live connection: start over)
            self._last_slot = slot
            return True
        return False


def backoff_delay(
    attempt: int, initial_s: float, max_s: float, multiplier: float, jitter: float, rng: random.Random
) -> float:
    """Wait before reconnect ``attempt`` (1-based): initial * multiplier^(attempt-1), capped, ± jitter."""
    base = min(max_s, initial_s * multiplier ** max(0, attempt - 1))
    return max(0.0, base * (1.0 + jitter * rng.uniform(-1.0, 1.0)))


def _describe(exc: BaseException) -> str:
    return redact_url(f"{type(exc).__name__}: {exc}")


def open_source(cam: CameraConfig, source: str | None = None) -> av.container.InputContainer:
    """Open a camera's source (or ``source``: its ``record_source``) with its timeouts and options; raises if
    it cannot be opened or is not a video."""
    spec = open_spec(
        source or cam.source, rtsp_transport=cam.rtsp_transport, read_timeout_s=cam.read_timeout_s
    )
    container = av.open(
        spec.url,
        format=spec.format,
        options={**spec.options, **cam.ffmpeg_options},
        timeout=(cam.open_timeout_s, cam.read_timeout_s),
    )
    if not container.streams.video:
        container.close()
        raise SourceError("no video stream")
    codec = container.streams.video[0].codec_context.name
    if container.format.name in _TEXT_FORMATS or codec in _TEXT_CODECS:
        container.close()
        raise SourceError(
            f"not a video: FFmpeg reads it as text art ({container.format.name} demuxer, {codec} codec)"
        )
    return container


def probe_file_source(cam: CameraConfig) -> str | None:
    """None if a file camera's source opens as a video; else the reason, worded as the decoder's failure.

    Start-up calls this before the model loads, so a missing or non-video file is reported in seconds.
    Live sources are not probed: they may come online later and reconnect on their own."""
    if cam.is_live:
        return None
    try:
        open_source(cam).close()
    except Exception as exc:  # noqa: BLE001 - any open failure is the camera's failure, reported clearly
        return f"camera {cam.id!r}: cannot open {redact_url(cam.source)}: {_describe(exc)}"
    return None


class DecoderStage(Stage):
    """Decodes one camera into ``out``; reports status changes through ``emit``."""

    def __init__(
        self,
        cam: CameraConfig,
        out: BoundedQueue[Frame],
        emit: Callable[[Event], None],
        metrics: MetricsRegistry,
        *,
        rng: random.Random | None = None,
        ring: PacketRing | None = None,
        ffmpeg_threads: int = 0,
    ) -> None:
        """``ring``: every demuxed video packet is also kept there (before decoding and thinning) for clips."""
        super().__init__("decoder", cam.id, metrics)
        #: FFmpeg decode threads (0 = FFmpeg's choice); pipeline/ingest/thread_budget.py picks it
        self.ffmpeg_threads = ffmpeg_threads
        self.cam = cam
        self.out = out
        self.emit = emit
        self.live = cam.is_live
        self.source_display = redact_url(cam.source)
        self.status = CameraStatus.CREATED
        self.status_reason = ""  # why the camera is in its current status (shown in the run summary)
        self.seq = 0
        self.frames_decoded = 0
        self.frames_forwarded = 0
        self.frames_skipped = 0  # thinned out by detect_fps (not drops: they were never queued)
        self.decode_errors = 0
        self._rng = rng or random.Random()
        self._thinner = FrameThinner(cam.detect_fps)
        self._pts_offset = 0.0  # files: time of all previous passes when looping
        self._last_pts: float | None = None
        self._pace_origin: tuple[float, float] | None = None  # (monotonic, pts) for realtime files
        self.stream_clock = StreamClock()  # live sources: capture_time from pts
        self.ring = ring
        self._registry = metrics
        self.lag_watch = DecoderLagWatch(cam.id)
        self._pace_lost_s = 0.0  # realtime files: time given up by re-anchoring the pace (decoder behind)
        self.metrics.queue_drops = lambda: out.dropped

    # ------------------------------------------------------------------ stage protocol

    def loop(self) -> None:
        if self.live:
            self._run_live()
        else:
            self._run_file()

    def on_exit(self) -> None:
        if self.ring is not None:
            self.ring.end()
        self.out.close()

    # ------------------------------------------------------------------ status events

    def outcome(self) -> str:
        """One line for the end-of-run summary: the stage state, or why the camera failed."""
        if self.status == CameraStatus.FAILED:
            return f"failed: {self.status_reason}"
        return str(self.state)

    def _set_status(self, status: CameraStatus, reason: str = "", **data: object) -> None:
        self.status = status
        self.status_reason = reason
        payload: dict[str, object] = {"status": status, "reason": reason, "source": self.source_display}
        payload.update({"attempt": None, "retry_in_s": None})
        payload.update(data)
        level = logging.INFO if status in (CameraStatus.ONLINE, CameraStatus.ENDED) else logging.WARNING
        log.log(level, "camera %s %s%s", self.cam.id, status, f": {reason}" if reason else "")
        try:
            self.emit(Event(type="status.camera", camera_id=self.cam.id, data=payload))
        except Exception:  # noqa: BLE001 - a broken publisher must not stop the camera
            log.exception("camera %s: could not emit status event %r", self.cam.id, status)

    # ------------------------------------------------------------------ files

    def _run_file(self) -> None:
        passes = 0
        while not self.stop_event.is_set():
            try:
                container = self._open()
            except Exception as exc:  # noqa: BLE001 - any open failure ends this camera, clearly
                self._set_status(
                    CameraStatus.FAILED,
                    f"camera {self.cam.id!r}: cannot open {self.source_display}: {_describe(exc)}",
                )
                return
            if passes == 0:
                self._set_status(CameraStatus.ONLINE)
            count, reason = self._pump(container)
            if self.stop_event.is_set():
                return
            if count == 0:
                if passes == 0:
                    self._set_status(
                        CameraStatus.FAILED,
                        f"camera {self.cam.id!r}: no decodable video frames in {self.source_display} ({reason})",
                    )
                else:
                    self._set_status(
                        CameraStatus.ENDED,
                        reason,
                        frames=self.frames_decoded,
                        decode_errors=self.decode_errors,
                    )
                return
            if not self.cam.loop:
                self._set_status(
                    CameraStatus.ENDED, reason, frames=self.frames_decoded, decode_errors=self.decode_errors
                )
                return
            passes += 1
            self._pts_offset = self._next_pass_offset()

    def _next_pass_offset(self) -> float:
        step = self._frame_step or 0.04
        return (self._last_pts + step) if self._last_pts is not None else self._pts_offset

    # ------------------------------------------------------------------ live sources

    def _run_live(self) -> None:
        rc = self.cam.reconnect
        failures = 0  # consecutive failures to get frames; the next reconnect attempt's number
        reason = ""
        while not self.stop_event.is_set():
            if failures:
                if rc.max_attempts is not None and failures > rc.max_attempts:
                    self._set_status(
                        CameraStatus.FAILED,
                        f"camera {self.cam.id!r}: gave up after {rc.max_attempts} reconnect attempts; last error: {reason}",
                        attempt=failures - 1,
                    )
                    return
                delay = backoff_delay(failures, rc.initial_s, rc.max_s, rc.multiplier, rc.jitter, self._rng)
                self._set_status(
                    CameraStatus.RECONNECTING, reason, attempt=failures, retry_in_s=round(delay, 3)
                )
                if self.stop_event.wait(delay):
                    return
                self.metrics.reconnects += 1
            try:
                container = self._open()
            except Exception as exc:  # noqa: BLE001 - unreachable, refused, timed out, bad stream ...
                reason = f"cannot open {self.source_display}: {_describe(exc)}"
                if failures == 0:
                    self._set_status(CameraStatus.OFFLINE, reason)
                failures += 1
                continue
            self._set_status(CameraStatus.ONLINE, attempt=failures or None)
            count, reason = self._pump(container)
            if self.stop_event.is_set():
                return
            self._set_status(CameraStatus.OFFLINE, reason)
            failures = 1 if count else failures + 1

    # ------------------------------------------------------------------ shared decode loop

    def _open(self) -> av.container.InputContainer:
        return open_source(self.cam)

    def _pump(self, container: av.container.InputContainer) -> tuple[int, str]:
        """Decode until the source ends, breaks or stop() is called, then close ``container``.

        Returns (frames decoded, why it ended).
        """
        try:
            return self._pump_open(container)
        finally:
            container.close()

    def _pump_open(self, container: av.container.InputContainer) -> tuple[int, str]:
        self.stream_clock.reset()  # a new connection's pts start over
        stream = container.streams.video[0]
        stream.codec_context.thread_type = "AUTO"
        if self.ffmpeg_threads:
            stream.codec_context.thread_count = self.ffmpeg_threads
        rate = stream.average_rate or stream.guessed_rate
        self._frame_step = 1.0 / float(rate) if rate else None
        if self.ring is not None:
            self.ring.start_segment(stream, 0.0 if self.live else self._pts_offset)
        count = 0
        read_errors = 0
        silence_s = self.cam.read_timeout_s * _SILENCE_FRACTION
        packets: Iterator[av.Packet] = container.demux(stream)
        while not self.stop_event.is_set():
            t_read = time.monotonic()
            try:
                packet = next(packets)
            except StopIteration:
                return count, "end of stream" if self.live else "end of file"
            except av.error.ExitError:
                # PyAV's interrupt callback fired: nothing arrived for read_timeout_s.
                return count, f"no data for {self.cam.read_timeout_s:g}s (read timeout)"
            except av.error.FFmpegError as exc:
                read_errors += 1
                self._count_decode_error(exc, "read")
                if self.live or read_errors > MAX_CONSECUTIVE_READ_ERRORS:
                    return count, f"read error: {_describe(exc)}"
                packets = container.demux(stream)  # skip past the damage and keep reading
                continue
            waited = time.monotonic() - t_read
            read_errors = 0
            if self.ring is not None:
                self.ring.push(packet)
            t0 = time.perf_counter()
            try:
                frames = packet.decode()
            except av.error.FFmpegError as exc:
                self._count_decode_error(exc, "decode")
                frames = []
            for vf in frames:
                self._deliver(vf, count, t0)
                count += 1
                t0 = time.perf_counter()
                if self.stop_event.is_set():
                    break
            if self.live and waited >= silence_s:
                # FFmpeg's parser hands out the frame it held back when the read was interrupted, so a
                # silent stream first shows up as one packet that took read_timeout_s to arrive.
                return count, f"no data for {waited:.1f}s (read timeout {self.cam.read_timeout_s:g}s)"
        return count, "stopped"

    def _deliver(self, vf: av.VideoFrame, index_in_pass: int, t0: float) -> None:
        self.frames_decoded += 1
        seq = self.seq
        self.seq += 1
        pts = vf.time
        if pts is None and self._frame_step is not None and not self.live:
            pts = index_in_pass * self._frame_step
        if pts is not None and not self.live:
            pts += self._pts_offset
            self._last_pts = pts
        clock = pts if (pts is not None and not self.live) else time.monotonic()
        if not self._thinner.keep(clock):
            self.frames_skipped += 1
            self.metrics.skipped += 1
            return
        if self.cam.realtime and not self.live and pts is not None:
            self._pace(pts)
        arrival = time.time()
        captured = self.stream_clock.capture_time(pts, arrival) if self.live else arrival
        if self.live:
            self._report_lag(arrival - captured)
        image = vf.to_ndarray(format="bgr24")
        frame = Frame(camera_id=self.cam.id, seq=seq, pts=pts, capture_time=captured, image=image)
        self.metrics.observe(latency_ms=(time.perf_counter() - t0) * 1000.0)
        if self._put(frame):
            self.frames_forwarded += 1

    def _pace(self, pts: float) -> None:
        now = time.monotonic()
        if self._pace_origin is None:
            self._pace_origin = (now, pts)
            return
        wall0, pts0 = self._pace_origin
        delay = wall0 + (pts - pts0) - now
        self._report_lag(self._pace_lost_s + max(0.0, -delay))
        if delay > 0:
            self.stop_event.wait(delay)
        elif delay < -1.0:  # far behind (slow consumer): re-anchor instead of bursting to catch up
            self._pace_lost_s += -delay  # a simulated live camera would be this much further ahead
            self._pace_origin = (now, pts)

    def _report_lag(self, lag_s: float) -> None:
        """Live edge minus decoded time: a metric, and a warning when it stays high (DecoderLagWatch)."""
        lag_s = max(0.0, lag_s)
        self._registry.set_decoder_lag(self.cam.id, lag_s)
        if (
            self.cam.effective_queue_policy == "latest"
        ):  # a `block` queue's lag includes waiting for the detector
            self.lag_watch.observe(lag_s)

    def _put(self, frame: Frame) -> bool:
        while not self.stop_event.is_set():
            try:
                if self.out.put(frame, timeout=0.2):
                    return True
            except QueueClosed:
                self.stop_event.set()
                return False
        return False

    def _count_decode_error(self, exc: BaseException, what: str) -> None:
        self.decode_errors += 1
        self.metrics.errors += 1
        if self.decode_errors % LOG_EVERY_N_ERRORS == 1:
            log.warning(
                "camera %s: %s error #%d in %s (skipped; logged every %d): %s",
                self.cam.id,
                what,
                self.decode_errors,
                self.source_display,
                LOG_EVERY_N_ERRORS,
                _describe(exc),
            )

    _frame_step: float | None = None
