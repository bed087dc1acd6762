"""The clip writer: one thread that cuts MP4 clips out of the cameras' packet rings, without re-encoding.

Camera threads (analytics) only ``request()`` a clip: a non-blocking put on a bounded queue (a full queue
drops the request, counted and logged; it never waits). The writer holds each request until its post-roll
has arrived in the ring (the ring's newest packet is past ``t_end + post_s``), the camera's decoder ended,
or a wall-clock deadline passed, then remuxes the packets with PyAV into memory, hashes them (sha256),
writes ``<dir>/<camera>/<name>.mp4`` (mode 0600, through a temporary file and a rename, so a reader never
sees half a clip) and deletes the camera's oldest clips beyond its quota. Finally it calls the request's
``on_written`` hook (the door analyzer signs and audits a ``doors.evidence`` record there) and emits what
the hook returns.

Clips start at the last keyframe at or before ``t_start - pre_s`` (a decoder needs one), so the pre-roll is
at least ``pre_s`` (up to one GOP more) when the ring still holds it.

A camera with a ``record_source`` (its main stream, pipeline/ingest/record_stream.py) has a second ring:
:meth:`ClipWriter.route` sends a clip there while that stream is healthy (``ClipRoute.stream == "main"``,
with the offset from the detect timeline to the main ring's wall clock and the :class:`BoxScale` of its
pictures), else to the detect stream's ring, counting the fallback. A main-stream clip whose packets are gone
by the time it is cut (the stream reconnected) is cut from the detect ring too; ``ClipResult.stream`` says
which stream a clip holds.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import queue
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import av

from pipeline.config.clips import ClipSettings
from pipeline.core.box_scale import BoxScale
from pipeline.core.events import Event
from pipeline.core.metrics import MetricsRegistry
from pipeline.core.stage import Stage
from pipeline.ingest.packet_ring import SUFFIX_FORMATS, PacketRing, RingSnapshot

if TYPE_CHECKING:
    from pipeline.ingest.record_stream import RecordStream

log = logging.getLogger(__name__)

_POLL_S = 0.05
_GRACE_S = 10.0  # beyond post_s, the longest a request waits for its post-roll (a stalled camera)
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass
class ClipResult:
    name: str  # "<camera>/<file>.mp4", relative to the clips directory
    path: Path
    sha256: str
    size: int
    start_t: float  # timeline seconds (Frame.pts) of the first and last packet
    end_t: float
    duration_s: float
    packets: int
    keyframes: int
    #: cameras with a record_source: "main" or "detect" (the stream the clip holds); None for the others
    stream: str | None = None
    width: int = 0  # the clip's picture size
    height: int = 0


@dataclass
class ClipRequest:
    camera_id: str
    name: str
    t_start: float  # the moment (or the first moment) on the Frame.pts timeline
    t_end: float
    pre_s: float
    post_s: float
    on_written: Callable[[ClipResult | None, str], list[Event]] | None = None
    deadline: float = field(default=0.0)  # monotonic; set by request()
    stream: Literal["detect", "main"] = "detect"  # which ring: ClipWriter.route() decides
    offset: float = 0.0  # the ring's time of a moment = its Frame.pts + offset (main ring: wall clock)


@dataclass(frozen=True)
class ClipRoute:
    """Where a clip asked for now is cut from (:meth:`ClipWriter.route`): which stream's ring, the offset of
    its timeline, the file suffix its codec needs, and ``scale`` from detect-frame boxes to its pixels."""

    stream: Literal["detect", "main"]
    offset: float = 0.0
    suffix: str = ".mp4"
    scale: BoxScale = field(default_factory=BoxScale)
    has_main: bool = False  # the camera has a record_source (whether or not this clip comes from it)

    def request(
        self, camera_id: str, name: str, t_start: float, t_end: float, pre_s: float, post_s: float
    ) -> ClipRequest:
        return ClipRequest(
            camera_id, name, t_start, t_end, pre_s, post_s, stream=self.stream, offset=self.offset
        )


def clip_name(camera_id: str, kind: str, ref: str, ts: float, suffix: str = ".mp4") -> str:
    """``<camera>/<UTC time>_<kind>_<ref>.mp4``: sortable by time, unique by the event/object id. ``suffix``:
    the camera ring's (``PacketRing.suffix()``; ``.webm`` for a VP8 camera)."""
    if suffix not in SUFFIX_FORMATS:
        raise ValueError(f"clip suffix {suffix!r} is not one of {sorted(SUFFIX_FORMATS)}")
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(ts)) + f"{ts % 1:.3f}"[1:].replace(".", "_")
    camera_dir = _SAFE.sub("_", camera_id)
    if camera_dir.startswith("."):  # a camera id "." or ".." is valid, but must not name a parent directory
        camera_dir = "_" + camera_dir
    return f"{camera_dir}/{stamp}_{kind}_{_SAFE.sub('_', ref)[:32]}{suffix}"


def remux(snapshot: RingSnapshot, fmt: str | None = None) -> tuple[bytes, int]:
    """The snapshot's packets in container ``fmt`` (default: the template's; MP4 for most codecs) as bytes,
    and how many keyframes they hold. No decoding, no encoding."""
    buf = io.BytesIO()
    packets = snapshot.packets
    first = packets[0]
    base = first.dts if first.dts is not None else (first.pts or 0)
    base = min(base, min((p.pts for p in packets if p.pts is not None), default=base))
    tb = snapshot.template.time_base
    keyframes = 0
    with av.open(buf, "w", format=fmt or snapshot.template.format) as out:
        stream = out.add_stream_from_template(snapshot.template.stream)
        stream.time_base = tb
        for rp in packets:
            pkt = av.Packet(rp.data)
            pkt.pts = None if rp.pts is None else rp.pts - base
            pkt.dts = None if rp.dts is None else rp.dts - base
            pkt.duration = rp.duration
            pkt.time_base = tb
            pkt.is_keyframe = rp.keyframe
            keyframes += rp.keyframe
            pkt.stream = stream
            out.mux(pkt)
    return buf.getvalue(), keyframes


def write_private(path: Path, data: bytes) -> None:
    """``data`` into ``path`` (mode 0600, directory 0700), atomically: a temporary file renamed into place."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def enforce_quota(directory: Path, quota_bytes: int, keep: Path | None = None) -> list[Path]:
    """Delete the oldest clips (``*.mp4``, ``*.webm``, ``*.mkv``) in ``directory`` until the rest fit ``quota_bytes`` (``keep`` is never
    deleted, so the clip just written survives even when it alone is over). Returns what was deleted."""
    files = []
    for p in (p for suffix in SUFFIX_FORMATS for p in directory.glob(f"*{suffix}")):
        try:
            st = p.stat()
        except FileNotFoundError:
            continue
        files.append((st.st_mtime_ns, p.name, p, st.st_size))
    files.sort()
    total = sum(f[3] for f in files)
    removed = []
    for _, _, p, size in files:
        if total <= quota_bytes:
            break
        if keep is not None and p == keep:
            continue
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed.append(p)
        total -= size
    return removed


class ClipWriter(Stage):
    """Writes requested clips from ``rings`` (camera id -> ring; the runner adds and removes rings)."""

    def __init__(
        self,
        directory: str | Path,
        rings: dict[str, PacketRing],
        settings_for: Callable[[str], ClipSettings],
        emit: Callable[[Event], None],
        metrics: MetricsRegistry | None = None,
        queue_size: int = 64,
    ) -> None:
        super().__init__("clips", "", metrics)
        self.directory = Path(directory)
        self.rings = rings
        self.settings_for = settings_for
        self.emit = emit
        self._queue: queue.Queue[ClipRequest] = queue.Queue(queue_size)
        self._pending: list[ClipRequest] = []
        #: camera id -> its main stream reader (cameras with a record_source; the runner adds and removes)
        self.record_streams: dict[str, RecordStream] = {}
        self._max_pending = queue_size
        self.written = 0
        self.failed = 0
        self.dropped = 0
        self.metrics.queue_depth = lambda: self._queue.qsize() + len(self._pending)
        self.metrics.queue_drops = lambda: self.dropped

    def route(self, camera_id: str) -> ClipRoute:
        """Where a clip of ``camera_id`` asked for now is cut from: its main stream while that is healthy,
        else its detect stream (a fallback, counted for a camera that has a main stream)."""
        ring = self.rings.get(camera_id)
        detect = ClipRoute("detect", suffix=ring.suffix() if ring is not None else ".mp4")
        rec = self.record_streams.get(camera_id)
        if rec is None:
            return detect
        offset, scale = rec.clip_offset(), rec.scale()
        if rec.routable() and offset is not None and scale is not None:
            return ClipRoute("main", offset, rec.ring.suffix(), scale, has_main=True)
        rec.count_fallback()
        return ClipRoute("detect", suffix=detect.suffix, has_main=True)

    def _ring_of(self, req: ClipRequest) -> PacketRing | None:
        if req.stream == "main":
            rec = self.record_streams.get(req.camera_id)
            return rec.ring if rec is not None else None
        return self.rings.get(req.camera_id)

    def path_of(self, name: str) -> Path:
        return self.directory / name

    def request(self, req: ClipRequest) -> bool:
        """Queue a clip (never blocks). False: the queue is full and the clip will not be written."""
        req.deadline = time.monotonic() + req.post_s + max(0.0, req.t_end - req.t_start) + _GRACE_S
        try:
            self._queue.put_nowait(req)
            return True
        except queue.Full:
            self.dropped += 1
            log.warning("clips: queue full, clip %s dropped (the writer is behind)", req.name)
            return False

    # -- stage -------------------------------------------------------------------------------------------

    def loop(self) -> None:
        while True:
            stopping = self.stop_event.is_set()
            if len(self._pending) < self._max_pending:  # bounded: beyond it the queue fills and drops
                with contextlib.suppress(queue.Empty):
                    self._pending.append(self._queue.get(timeout=_POLL_S))
            else:
                time.sleep(_POLL_S)
            now = time.monotonic()
            drain = stopping and self._queue.empty()
            for req in list(self._pending):
                if drain or self._ready(req, now):
                    self._pending.remove(req)
                    self._write(req)
            if drain and not self._pending:
                return

    def finish(self, timeout: float = 30.0) -> bool:
        """Write every pending clip with what the rings hold now, then stop (the caller's shutdown)."""
        self.stop()
        return self.join(timeout)

    def _ready(self, req: ClipRequest, now: float) -> bool:
        ring = self._ring_of(req)
        if ring is None or ring.ended or now >= req.deadline:
            return True
        if req.stream == "main":
            rec = self.record_streams.get(req.camera_id)
            if rec is None or not rec.healthy():
                return True  # the main stream went down: the clip ends where it stopped
        newest = ring.newest_t()
        return newest is not None and newest >= req.t_end + req.offset + req.post_s

    def _write(self, req: ClipRequest) -> None:
        t0 = time.perf_counter()
        result: ClipResult | None = None
        error = ""
        try:
            result = self._cut(req)
        except Exception as exc:  # noqa: BLE001 - a bad clip is reported, the writer goes on
            error = f"{type(exc).__name__}: {exc}"
            log.warning("camera %s: clip %s not written: %s", req.camera_id, req.name, error)
        if result is None:
            self.failed += 1
            self.metrics.errors += 1
            error = error or "no packets for that time in the camera's ring"
        else:
            self.written += 1
            self.metrics.observe(latency_ms=(time.perf_counter() - t0) * 1000.0)
        if req.on_written is not None:
            try:
                events = req.on_written(result, error)
            except Exception:  # noqa: BLE001
                log.exception("camera %s: clip %s: follow-up failed", req.camera_id, req.name)
                events = []
            for ev in events:
                self.emit(ev)

    def _cut(self, req: ClipRequest) -> ClipResult | None:
        ring = self._ring_of(req)
        snap = None
        if ring is not None:
            snap = ring.snapshot(req.t_start + req.offset - req.pre_s, req.t_end + req.offset + req.post_s)
        if snap is None and req.stream == "main":  # its packets are gone (it reconnected): the detect ring's
            rec = self.record_streams.get(req.camera_id)
            if rec is not None:
                rec.count_fallback()
            log.warning("camera %s: clip %s: the main stream no longer holds that time; cut from the "
                        "detect stream", req.camera_id, req.name)  # fmt: skip
            req = ClipRequest(req.camera_id, req.name, req.t_start, req.t_end, req.pre_s, req.post_s)
            ring = self.rings.get(req.camera_id)
            snap = (
                ring.snapshot(req.t_start - req.pre_s, req.t_end + req.post_s) if ring is not None else None
            )
        if snap is None:
            return None
        path = self.path_of(req.name)
        base = self.directory.resolve()
        if path.resolve().parent.parent != base or path.suffix not in SUFFIX_FORMATS:
            raise ValueError(f"clip name {req.name!r} is not <camera>/<file>.mp4 under {base}")
        data, keyframes = remux(snap, SUFFIX_FORMATS[path.suffix])
        write_private(path, data)
        quota = int(self.settings_for(req.camera_id).quota_mb * 1024 * 1024)
        for gone in enforce_quota(path.parent, quota, keep=path):
            log.info("camera %s: clip %s deleted (quota %d MB)", req.camera_id, gone.name, quota >> 20)
        starts = [p.t for p in snap.packets]
        tb = float(snap.template.time_base)
        end_t = max(p.t + p.duration * tb for p in snap.packets)
        return ClipResult(
            name=req.name,
            path=path,
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            start_t=min(starts) - req.offset,  # back on the Frame.pts timeline
            end_t=end_t - req.offset,
            duration_s=end_t - min(starts),
            packets=len(snap.packets),
            keyframes=keyframes,
            stream=req.stream if req.camera_id in self.record_streams else None,
            width=snap.template.width,
            height=snap.template.height,
        )
