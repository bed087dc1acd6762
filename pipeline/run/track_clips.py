"""A clip per tracked object's life (``clips.tracks: true``): ``tracks.end`` names it, the writer cuts it.

The tracker's own times (``first_seen``/``last_seen``) run on its clock, not on the packets' timeline, so the
clip is placed by the frames the object's events came from: from its ``tracks.new`` frame (minus ``pre_s``)
to its ``tracks.end`` frame (plus ``post_s``). ``tracks.end`` gets ``data.clip`` (``<camera>/<file>.mp4``)
before it is delivered; the file appears once the post-roll has been recorded.

A camera with a ``record_source`` also gets ``data.clip_stream`` ("main", or "detect" while its main stream
is down) and ``data.clip_box``: the event's ``box`` (detect-stream pixels, unchanged) in the clip's pixels.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from pipeline.core.events import Event
from pipeline.ingest.clip_writer import ClipWriter, clip_name

_MAX_OPEN = 10_000  # objects whose start we remember (an object without tracks.end is forgotten past this)


class TrackClips:
    def __init__(self, writer: ClipWriter) -> None:
        self.writer = writer
        self._started: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._lock = threading.Lock()  # every camera's analytics thread emits

    def observe(self, event: Event) -> None:
        if not event.type.startswith("tracks.") or event.type not in ("tracks.new", "tracks.end"):
            return
        settings = self.writer.settings_for(event.camera_id)
        if not (settings.enabled and settings.tracks):
            return
        key = (event.camera_id, str(event.data.get("object_id", "")))
        with self._lock:
            if event.type == "tracks.new":
                if event.pts is not None:
                    self._started[key] = event.pts
                    while len(self._started) > _MAX_OPEN:
                        self._started.popitem(last=False)
                return
            start = self._started.pop(key, None)
        ring = self.writer.rings.get(event.camera_id)
        end = event.pts if event.pts is not None else (ring.newest_t() if ring is not None else None)
        if end is None:
            return
        start = end if start is None or start > end else start
        route = self.writer.route(event.camera_id)
        name = clip_name(event.camera_id, "track", key[1] or event.event_id, event.ts, route.suffix)
        if self.writer.request(
            route.request(event.camera_id, name, start, end, settings.pre_s, settings.post_s)
        ):
            event.data["clip"] = name
            if route.has_main:
                event.data["clip_stream"] = route.stream
                box = event.data.get("box")
                if isinstance(box, list) and len(box) == 4:
                    event.data["clip_box"] = route.scale.box(box)
