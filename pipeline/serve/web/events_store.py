"""Reads events back from the Redis Streams the publisher writes (``{prefix}:stream:{family}``)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import redis

from pipeline.core.events import Event

FAMILIES = ("status", "detections", "tracks", "faces", "doors")
LAG_S = 300.0  # how late after its time an event may still reach its stream (publisher back-log, spool)


@dataclass
class EventFilter:
    camera: str = ""
    type: str = ""  # an event type (tracks.new) or a family (tracks)
    label: str = ""  # label, sub_label or person
    since: float | None = None
    until: float | None = None

    def families(self) -> list[str]:
        if self.type:
            fam = self.type.split(".", 1)[0]
            return [fam] if fam in FAMILIES else []
        return [f for f in FAMILIES if f != "detections"]  # one per frame: only when asked for

    def matches(self, ev: Event) -> bool:
        if self.camera and ev.camera_id != self.camera:
            return False
        if (self.since is not None and ev.ts < self.since) or (self.until is not None and ev.ts > self.until):
            return False
        if self.type and ev.type != self.type and ev.family != self.type:
            return False
        if self.label:
            d = ev.data
            names = {str(d.get(k)) for k in ("label", "sub_label", "person") if d.get(k)}
            names |= {str(x.get("label")) for x in d.get("detections") or [] if isinstance(x, dict)}
            if self.label not in names:
                return False
        return True


CLIP_TYPES = (".mp4", ".webm", ".mkv")


def clip_url(name: object) -> str:
    """The web app's URL of a clip named by an event (``data.clip``: ``<camera>/<file>.mp4``), or ""."""
    if not isinstance(name, str) or not name.endswith(CLIP_TYPES) or "/." in name or name.startswith("/"):
        return ""
    return "/clips/" + quote(name)


def row(ev: Event, stream_id: str) -> dict[str, Any]:
    d = ev.data
    return {
        "id": stream_id,
        "event_id": ev.event_id,
        "type": ev.type,
        "camera": ev.camera_id,
        "ts": ev.ts,
        "frame_seq": ev.frame_seq,
        "pts": ev.pts,
        "label": d.get("label") or d.get("person") or d.get("status") or "",
        "sub_label": d.get("sub_label") or "",
        "detail": d.get("reason") or d.get("decision") or d.get("zone") or "",
        "snapshot": d.get("snapshot") or "",
        "clip_url": clip_url(d.get("clip")),
        "data": d,
    }


def matching_row(stream_id: bytes, fields: dict[bytes, bytes], flt: EventFilter) -> dict[str, Any] | None:
    """The timeline row of one stream entry, or None when it is not an event or the filter rejects it."""
    try:
        ev = Event.from_json(fields[b"event"])
    except (KeyError, ValueError):
        return None
    return row(ev, stream_id.decode()) if flt.matches(ev) else None


class EventStore:
    def __init__(self, url: str, prefix: str) -> None:
        # Any: redis-py's stubs type replies as unions of every RESP shape
        self.client: Any = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
        self.prefix = prefix

    def key(self, family: str) -> str:
        return f"{self.prefix}:stream:{family}"

    def recent(self, flt: EventFilter, limit: int = 200, scan: int = 2000) -> list[dict[str, Any]]:
        """Newest first by event time (``ts``, when it happened; not when Redis got it, which lags under
        load and differs between cameras): up to ``limit`` matching events among the newest ``scan`` of
        each family. An event reaches its stream at or after its time, so the stream range starts at
        ``since`` and runs ``LAG_S`` past ``until``; ``ts`` decides."""
        hi = "+" if flt.until is None else str(int((flt.until + LAG_S) * 1000))
        lo = "-" if flt.since is None else str(int(flt.since * 1000))
        rows = []
        for fam in flt.families():
            for sid, fields in self.client.xrevrange(self.key(fam), hi, lo, count=scan):
                r = matching_row(sid, fields, flt)
                if r is not None:
                    rows.append(r)
        rows.sort(key=lambda r: (r["ts"], tuple(int(x) for x in r["id"].split("-"))), reverse=True)
        return rows[:limit]


@dataclass(eq=False)  # hashed by identity: a set of the open streams
class Subscriber:
    """One live-event stream (an SSE response): its filter, its families and the rows waiting for it."""

    flt: EventFilter
    families: frozenset[str]
    queue: asyncio.Queue[dict[str, Any]]
    lost: int = 0  # rows dropped because this client read too slowly (its queue was full)


class EventHub:
    """One Redis reader for every live-event stream of the app, on the event loop (``redis.asyncio``).

    Why: a stream per viewer each blocking on ``XREAD`` held a worker thread (and a Redis connection) per
    open page: 12 quiet streams slowed every page to a second, 40 to ten. Here one task blocks on XREAD for
    the families anyone is watching and hands each matching row to the subscribers' bounded queues; an
    open stream costs a queue, not a thread. The task ends when the last subscriber leaves."""

    QUEUE = 1000

    def __init__(self, url: str, prefix: str, block_ms: int = 1000) -> None:
        self.url, self.prefix, self.block_ms = url, prefix, block_ms
        self._subs: set[Subscriber] = set()
        self._task: asyncio.Task[None] | None = None
        self.problem = ""  # why Redis is not being read, while it is not

    def key(self, family: str) -> str:
        return f"{self.prefix}:stream:{family}"

    def subscribe(self, flt: EventFilter) -> Subscriber:
        sub = Subscriber(flt, frozenset(flt.families()), asyncio.Queue(self.QUEUE))
        self._subs.add(sub)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="events-hub")
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subs.discard(sub)

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    async def _run(self) -> None:
        import redis.asyncio as aioredis

        client: Any = aioredis.Redis.from_url(
            self.url, socket_timeout=self.block_ms / 1000 + 5, socket_connect_timeout=2
        )
        ids: dict[str, str] = {}
        try:
            while self._subs:
                try:
                    for fam in {f for s in self._subs for f in s.families}:
                        if self.key(fam) not in ids:  # from now on: the newest entry so far
                            last = await client.xrevrange(self.key(fam), "+", "-", count=1)
                            ids[self.key(fam)] = last[0][0].decode() if last else "0-0"
                    got = await client.xread(dict(ids), count=500, block=self.block_ms) or []
                    self.problem = ""
                except redis.RedisError as exc:
                    self.problem = f"Redis is not reachable ({exc})"
                    await asyncio.sleep(1.0)
                    continue
                for key, entries in got:
                    for sid, fields in entries:
                        ids[key.decode()] = sid.decode()
                        self._fan_out(sid, fields)
        finally:
            await client.aclose()

    def _fan_out(self, sid: bytes, fields: dict[bytes, bytes]) -> None:
        try:
            ev = Event.from_json(fields[b"event"])
        except (KeyError, ValueError):
            return
        r: dict[str, Any] | None = None
        for sub in list(self._subs):
            if ev.family in sub.families and sub.flt.matches(ev):
                r = r or row(ev, sid.decode())
                try:
                    sub.queue.put_nowait(r)
                except asyncio.QueueFull:
                    sub.lost += 1
