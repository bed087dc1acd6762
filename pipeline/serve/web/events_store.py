"""Reads events back from the Redis Streams the publisher writes (``{prefix}:stream:{family}``)."""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import redis

from pipeline.core.events import Event

FAMILIES = ("status", "detections", "tracks", "faces", "doors")


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
        """Newest first: up to ``limit`` matching events among the newest ``scan`` of each family."""
        hi = "+" if flt.until is None else str(int(flt.until * 1000))
        lo = "-" if flt.since is None else str(int(flt.since * 1000))
        per_family = []
        for fam in flt.families():
            rows = []
            for sid, fields in self.client.xrevrange(self.key(fam), hi, lo, count=scan):
                r = matching_row(sid, fields, flt)
                if r is not None:
                    rows.append(r)
            per_family.append(rows)
        merged = heapq.merge(
            *per_family, key=lambda r: tuple(int(x) for x in r["id"].split("-")), reverse=True
        )
        return [r for _, r in zip(range(limit), merged, strict=False)]

    def tail_ids(self, families: list[str]) -> dict[str, str]:
        out = {}
        for fam in families:
            last = self.client.xrevrange(self.key(fam), "+", "-", count=1)
            out[self.key(fam)] = last[0][0].decode() if last else "0-0"
        return out

    def read_new(self, ids: dict[str, str], flt: EventFilter, block_ms: int = 1000) -> list[dict[str, Any]]:
        """Entries after ``ids`` (updated in place), waiting up to ``block_ms``."""
        got = self.client.xread(dict(ids), count=100, block=block_ms) or []
        rows = []
        for key, entries in got:
            for sid, fields in entries:
                ids[key.decode()] = sid.decode()
                r = matching_row(sid, fields, flt)
                if r is not None:
                    rows.append(r)
        return rows
