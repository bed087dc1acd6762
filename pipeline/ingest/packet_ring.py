"""A camera's recent compressed packets, kept so a clip can be cut later without re-encoding.

The decoder pushes every demuxed video packet here *before* decoding, so frames the pipeline thins out
(``detect_fps``) or drops (a ``latest`` queue) are still in the ring and in the clips cut from it. The ring
is bounded by seconds (``max_s`` of stream time, counted from a keyframe: whole GOPs are dropped, so it holds
``max_s`` plus at most one GOP) and by bytes (``max_bytes``, a hard cap); the oldest packets go first.
At 4 Mbit/s a 30 s ring holds about 15 MB (BENCHMARKS.md, issue 22).

Times (``RingPacket.t``) are on the same timeline as ``Frame.pts``: stream seconds, plus the loop offset for
a looping file. So a door decision's ``pts`` finds its packets directly.

A new connection (or a new pass over a file) starts a new *segment*: its codec parameters may differ, so
the old packets are dropped and a codec template is taken from the newly opened stream. The template is a
never-started in-memory MP4 output stream whose codec parameters were copied from the input; it stays
valid after the input container is closed, which is what lets another thread remux later.
"""

from __future__ import annotations

import io
import logging
import threading
from collections import deque
from dataclasses import dataclass
from fractions import Fraction

import av
import av.error

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RingPacket:
    data: bytes
    pts: int | None
    dts: int | None
    duration: int
    keyframe: bool
    t: float  # seconds on the Frame.pts timeline


# Clip containers by preference: MP4 (H.264, H.265, MPEG-4, MJPEG, AV1, VP9 ...), else WebM (VP8), else
# Matroska; every one plays in a browser's <video> for the codecs it is chosen for here.
CONTAINERS: tuple[tuple[str, str], ...] = (("mp4", ".mp4"), ("webm", ".webm"), ("matroska", ".mkv"))
SUFFIX_FORMATS = {suffix: fmt for fmt, suffix in CONTAINERS}


class StreamTemplate:
    """Codec parameters of one segment's video stream, usable as ``add_stream_from_template`` input, and the
    first container of ``CONTAINERS`` that can carry the codec (``format``, ``suffix``)."""

    def __init__(self, stream: av.video.stream.VideoStream) -> None:
        for fmt, suffix in CONTAINERS:
            holder = av.open(io.BytesIO(), "w", format=fmt)  # never started: only holds codecpar
            try:
                self.stream = holder.add_stream_from_template(stream)
            except ValueError:
                continue
            self._holder, self.format, self.suffix = holder, fmt, suffix
            break
        else:
            raise ValueError(f"no clip container ({', '.join(f for f, _ in CONTAINERS)}) carries this codec")
        self.time_base: Fraction = stream.time_base or Fraction(1, 90_000)
        self.codec = stream.codec_context.name
        self.width = stream.codec_context.width
        self.height = stream.codec_context.height


@dataclass(frozen=True)
class RingSnapshot:
    template: StreamTemplate
    packets: list[RingPacket]
    segment: int


class PacketRing:
    """Thread-safe: the decoder thread pushes, the clip writer thread takes snapshots."""

    def __init__(self, camera_id: str, max_s: float = 30.0, max_bytes: int = 32 * 1024 * 1024) -> None:
        self.camera_id = camera_id
        self.max_s = float(max_s)
        self.max_bytes = int(max_bytes)
        self._packets: deque[RingPacket] = deque()
        self._keys: deque[RingPacket] = deque()  # the keyframes among them, oldest first
        self._bytes = 0
        self._lock = threading.Lock()
        self._template: StreamTemplate | None = None
        self._offset = 0.0
        self.segment = 0  # bumps with every new connection / file pass
        self.ended = False  # the decoder stopped: nothing newer will come
        self.evicted = 0

    # -- decoder side -------------------------------------------------------------------------------------

    def start_segment(self, stream: av.video.stream.VideoStream, offset_s: float = 0.0) -> None:
        """A new connection or file pass: drop the old packets, take the new codec parameters. A codec MP4
        cannot carry leaves the ring empty (logged): the camera runs on, without clips."""
        try:
            template: StreamTemplate | None = StreamTemplate(stream)
        except (av.error.FFmpegError, ValueError) as exc:
            log.warning(
                "camera %s: no clips for this stream (%s): %s", self.camera_id, stream.codec_context.name, exc
            )
            template = None
        with self._lock:
            self._packets.clear()
            self._keys.clear()
            self._bytes = 0
            self._template = template
            self._offset = float(offset_s)
            self.segment += 1
            self.ended = False

    def push(self, packet: av.Packet, t: float | None = None) -> None:
        """Keep ``packet``; ``t``: its time on the ring's timeline when the caller places it (a main stream's
        ring runs on the wall clock, pipeline/ingest/record_stream.py), else its pts plus the segment offset."""
        if packet.size == 0 or self._template is None:
            return
        tb = packet.time_base or self._template.time_base
        ts = packet.pts if packet.pts is not None else packet.dts
        if ts is None:
            return  # no timestamp: it could not be placed in a clip's timeline
        item = RingPacket(
            bytes(packet),
            packet.pts,
            packet.dts,
            int(packet.duration or 0),
            bool(packet.is_keyframe),
            float(ts * tb) + self._offset if t is None else float(t),
        )
        with self._lock:
            self._packets.append(item)
            self._bytes += len(item.data)
            if item.keyframe:
                self._keys.append(item)
            # By time, whole GOPs go: a GOP leaves only once the next one starts max_s or more before the
            # newest packet, so the ring always holds max_s seconds *from a keyframe* (plus up to one GOP)
            # and a clip's pre-roll can start at one.
            while len(self._keys) >= 2 and item.t - self._keys[1].t >= self.max_s:
                self._keys.popleft()
                while self._packets[0] is not self._keys[0]:
                    self._drop_oldest()
            # By bytes, a hard cap, packet by packet.
            while self._bytes > self.max_bytes and len(self._packets) > 1:
                self._drop_oldest()

    def _drop_oldest(self) -> None:
        old = self._packets.popleft()
        self._bytes -= len(old.data)
        self.evicted += 1
        if self._keys and old is self._keys[0]:
            self._keys.popleft()

    def end(self) -> None:
        """The decoder stopped (end of file, stop, failure): waiting for more packets is pointless."""
        with self._lock:
            self.ended = True

    # -- reader side --------------------------------------------------------------------------------------

    @property
    def nbytes(self) -> int:
        return self._bytes

    def span(self) -> tuple[float, float] | None:
        """(oldest t, newest t) held, or None when empty."""
        with self._lock:
            if not self._packets:
                return None
            return self._packets[0].t, max(self._packets[-1].t, self._packets[0].t)

    def suffix(self) -> str:
        """The file suffix clips of the current segment get (``.mp4`` unless its codec needs another)."""
        template = self._template
        return template.suffix if template is not None else ".mp4"

    def frame_size(self) -> tuple[int, int] | None:
        """(width, height) of the current segment's pictures, None before the first connection."""
        template = self._template
        return (template.width, template.height) if template is not None and template.width else None

    def newest_t(self) -> float | None:
        with self._lock:
            return self._packets[-1].t if self._packets else None

    def snapshot(self, t0: float, t1: float) -> RingSnapshot | None:
        """Packets from the last keyframe at or before ``t0`` (or the oldest keyframe held, when the ring no
        longer reaches back that far) through the last packet at or before ``t1``, in decode order."""
        with self._lock:
            if self._template is None or not self._packets:
                return None
            packets = list(self._packets)
            template, segment = self._template, self.segment
        start = None
        for i, p in enumerate(packets):
            if p.keyframe and (p.t <= t0 or start is None):
                start = i
            if p.t > t0 and start is not None:
                break
        if start is None:
            return None  # no keyframe held: nothing decodable
        # decode order: a B-frame's pts may lie below a packet before it, so keep a prefix up to the last
        # packet at or before t1 (never a hole the decoder would trip over)
        last = max((i for i, p in enumerate(packets[start:]) if p.t <= t1), default=-1)
        out = packets[start : start + last + 1]
        if not out:
            return None
        return RingSnapshot(template, out, segment)
