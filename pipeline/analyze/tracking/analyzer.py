"""Per-camera tracking analyzer: filters -> ByteTracker -> zones/lines -> event lifecycle -> snapshots.

The runner calls ``process()`` once per detected frame (in order) and ``close()`` when the camera ends.
An object is published only once *confirmed* (``min_hits`` matches and median score >= its label's
``threshold``); it then yields exactly one ``tracks.new``, ``tracks.update`` at most every
``update_interval_s`` (or at once when its sub-label changes), and exactly one ``tracks.end``.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.analyze.tracking.geometry import anchor_points, iou_matrix, points_in_polygon, scale_points
from pipeline.analyze.tracking.snapshots import SnapshotStore
from pipeline.analyze.tracking.tracker import ByteTracker, Track
from pipeline.analyze.tracking.zones import CountingLine, LineCrossing, Zone, ZoneChange, ZoneSet
from pipeline.config.tracking import CameraZonesConfig, ObjectFilter, TrackingConfig
from pipeline.core.events import Event
from pipeline.core.types import Frame, FrameResult


def _r(v: float, nd: int = 4) -> float:
    return round(float(v), nd)


@dataclass(eq=False)
class TrackedObject:
    track: Track
    object_id: str
    first_seen: float
    last_seen: float
    last_seq: int
    confirmed: bool = False
    sub_label: str | None = None
    sub_label_changed: bool = False
    best_score: float = 0.0
    best_box: np.ndarray | None = None
    best_image: np.ndarray | None = None  # reference to the frame, not a copy (frames are never mutated)
    best_written: float = -1.0  # best_score of the snapshot on disk
    snapshot: str | None = None
    last_event_ts: float = 0.0
    seen_since_event: bool = False
    entered_zones: list[str] = field(default_factory=list)
    pending: list[Event] = field(default_factory=list)  # zone/line events from before confirmation
    pending_crossings: list[tuple[LineCrossing, Event]] = field(default_factory=list)


class VideoClock:
    """Seconds on the video's own timeline, anchored at wall time: ``base + pts``.

    A file decodes as fast as the detector allows (or slower than real time), so decode time stretches or
    squeezes durations; pts does not. ``base`` is the first frame's capture time minus its pts, so the values
    still read as epoch seconds. When pts jumps back (a looping file starting over, a reconnect), the clock
    re-anchors so it keeps running forward from where it was. Frames without pts use their capture time.

    Not ``pipeline.ingest.stream_clock.StreamClock``: that one maps a *live* stream's pts to when frames were
    captured and lets its offset follow the least-delayed arrival, so for a file decoded faster than real
    time it would track decode time again; here the anchor is fixed and only pts moves the clock.
    """

    def __init__(self) -> None:
        self._base: float | None = None
        self._last_pts: float | None = None
        self._last: float | None = None

    def at(self, frame: Frame) -> float:
        pts = frame.pts
        if pts is None:
            return frame.capture_time
        if self._base is None or self._last is None or self._last_pts is None:
            self._base = frame.capture_time - pts
        elif pts < self._last_pts:
            self._base = self._last - pts
        self._last_pts = pts
        self._last = self._base + pts
        return self._last


class TrackingAnalyzer:
    def __init__(
        self,
        camera_id: str,
        tracking: TrackingConfig,
        zones: CameraZonesConfig,
        snapshot_dir: Path,
        video_time: bool = False,
    ):
        """``video_time``: time tracks by the frames' pts (file sources, which decode faster or slower than
        real time), not by when frames were decoded; see :class:`VideoClock`."""
        self.camera_id = camera_id
        self.clock = VideoClock() if video_time else None
        self.cfg = tracking
        self.zcfg = zones
        self.tracker = ByteTracker(tracking)
        self.zoneset = ZoneSet(
            zones=[Zone(n, z) for n, z in zones.zones.items()],
            lines=[CountingLine(n, ln) for n, ln in zones.lines.items()],
        )
        self.snapshots = (
            SnapshotStore(Path(snapshot_dir), camera_id, tracking.snapshots)
            if tracking.snapshots.enabled
            else None
        )
        self.objects: dict[int, TrackedObject] = {}  # by track id
        self._filters: dict[str, ObjectFilter] = {}
        self._masks: dict[tuple[int, int], list[np.ndarray]] = {}
        self._last_frame: Frame | None = None
        self._prev_ts: float | None = None
        self._frame_ts: float | None = None  # track time of the frame being (or last) processed

    # -- public API --------------------------------------------------------------------------------
    def process(self, result: FrameResult) -> list[Event]:
        frame = result.frame
        self._last_frame = frame
        det = result.detections
        keep = self._keep(det, frame.width, frame.height)
        idx = np.flatnonzero(keep)
        out = self.tracker.update(
            det.boxes[idx], det.scores[idx], [det.labels[i] for i in idx], det.class_ids[idx]
        )
        events: list[Event] = []
        ts = self.clock.at(frame) if self.clock is not None else frame.capture_time
        self._frame_ts = ts
        seen: list[tuple[Track, TrackedObject]] = []
        for t in out.active:
            obj = self.objects.get(t.track_id)
            if obj is None:
                # a track gets its id on its second consecutive match, so it was first seen one frame ago
                first = self._prev_ts if t.hits >= 2 and self._prev_ts is not None else ts
                obj = TrackedObject(t, uuid.uuid4().hex, first, ts, frame.seq)
                self.objects[t.track_id] = obj
            if t.det_index < 0:
                continue
            t.det_index = int(idx[t.det_index])  # back to a row of result.detections
            obj.last_seen, obj.last_seq, obj.seen_since_event = ts, frame.seq, True
            if t.score > obj.best_score:
                obj.best_score, obj.best_box, obj.best_image = t.score, t.box.copy(), frame.image
            seen.append((t, obj))
        if seen:
            zone_out = self.zoneset.observe(
                [t.track_id for t, _ in seen], [t.label for t, _ in seen], np.stack([t.box for t, _ in seen]),
                ts, frame.width, frame.height,
            )  # fmt: skip
            for (_, obj), (changes, crossings) in zip(seen, zone_out, strict=True):
                if changes or crossings:
                    self._zone_events(obj, changes, crossings, frame, events)
        self._apply_identities(result, out.active)
        for t in out.active:
            obj = self.objects[t.track_id]
            if not obj.confirmed:
                if t.hits >= self.cfg.min_hits and t.median_score() >= self._filter(t.label).threshold:
                    self._confirm(obj, frame, events)
            elif obj.sub_label_changed or (
                obj.seen_since_event and ts - obj.last_event_ts >= self.cfg.update_interval_s
            ):
                events.append(self._lifecycle_event("tracks.update", obj, frame))
        for t in out.removed:
            events.extend(self._end(t.track_id, frame, "lost"))
        self._prev_ts = ts
        return events

    def on_camera_status(self, status: str) -> list[Event]:
        """Nothing to do: tracks coast through a short outage and end by ``max_age`` as usual."""
        return []

    def close(self) -> list[Event]:
        """End every object (camera stopped or shutdown)."""
        frame = self._last_frame
        events: list[Event] = []
        for t in self.tracker.end_all():
            events.extend(self._end(t.track_id, frame, "closed"))
        self.objects.clear()
        return events

    def set_sub_label(self, track_id: int, name: str | None) -> bool:
        """Attach an identity (e.g. a recognised face) to a track; published with its next event."""
        obj = self.objects.get(track_id)
        if obj is None:
            return False
        if obj.sub_label != name:
            obj.sub_label = name
            obj.sub_label_changed = True
        return True

    def line_counts(self) -> dict[str, dict]:
        """Crossings so far per line: {"line": {"forward": n, "backward": m, "by_label": {...}}}."""
        return {ln.name: {**ln.counts, "by_label": {k: dict(v) for k, v in ln.by_label.items()}}
                for ln in self.zoneset.lines}  # fmt: skip

    # -- filtering ---------------------------------------------------------------------------------
    def _filter(self, label: str) -> ObjectFilter:
        f = self._filters.get(label)
        if f is None:
            f = self.zcfg.filters.get(label) or self.cfg.filters.get(label) or self.cfg.default_filter
            self._filters[label] = f
        return f

    def _keep(self, det, width: int, height: int) -> np.ndarray:
        n = len(det)
        keep = np.ones(n, bool)
        if n == 0:
            return keep
        objects = self.cfg.objects
        boxes = det.boxes.astype(np.float64)
        area = (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)
        # a broken detector row (NaN/inf, empty or inverted box) must not poison the Kalman filter
        keep &= np.isfinite(boxes).all(axis=1) & np.isfinite(det.scores) & (area > 0)
        for i, label in enumerate(det.labels):
            if not keep[i]:
                continue
            if objects is not None and label not in objects:
                keep[i] = False
                continue
            f = self._filter(label)
            min_score = self.cfg.low_score if f.min_score is None else f.min_score
            if (
                det.scores[i] < min_score
                or area[i] < f.min_area
                or (f.max_area is not None and area[i] > f.max_area)
            ):
                keep[i] = False
        if self.cfg.dedupe_iou is not None and keep.sum() > 1:
            keep &= self._dedupe(boxes, det.scores, det.labels, keep)
        for mask_cfg, poly in zip(self.zcfg.masks, self._mask_polys(width, height), strict=True):
            if keep.any():
                keep &= ~points_in_polygon(anchor_points(boxes, mask_cfg.anchor), poly)
        return keep

    def _dedupe(
        self, boxes: np.ndarray, scores: np.ndarray, labels: list[str], keep: np.ndarray
    ) -> np.ndarray:
        """False for a detection that overlaps a better-scored one of the same label group (car vs truck)."""
        idx = np.flatnonzero(keep)
        keys = np.array([self.tracker.group(labels[i]) for i in idx], dtype=object)
        iou = iou_matrix(boxes[idx], boxes[idx])
        out = np.ones(len(boxes), bool)
        for a in np.argsort(-scores[idx], kind="stable"):
            if not out[idx[a]]:
                continue
            dup = (keys == keys[a]) & (iou[a] >= self.cfg.dedupe_iou)
            dup[a] = False
            out[idx[dup]] = False
        return out

    def _mask_polys(self, width: int, height: int) -> list[np.ndarray]:
        key = (width, height)
        if key not in self._masks:
            self._masks[key] = [scale_points(m.points, m.normalized, width, height) for m in self.zcfg.masks]
        return self._masks[key]

    # -- identities ----------------------------------------------------------------------------------
    def _apply_identities(self, result: FrameResult, active: list[Track]) -> None:
        """Give face identities found in this frame (``result.faces``, from the face stage) to the tracks
        they belong to, as sub-labels: the smallest person track seen this frame whose upper half holds the
        face's centre."""
        named = [(np.asarray(f.box, np.float64), f.identity) for f in result.faces or [] if f.identity]
        if not named:
            return
        seen = [t for t in active if t.det_index >= 0]
        for fbox, name in named:
            fx, fy = (fbox[0] + fbox[2]) / 2, (fbox[1] + fbox[3]) / 2
            best, best_area = None, np.inf
            for t in seen:
                if t.label != "person":
                    continue
                x1, y1, x2, y2 = t.box
                if x1 <= fx <= x2 and y1 <= fy <= (y1 + y2) / 2:
                    area = (x2 - x1) * (y2 - y1)
                    if area < best_area:
                        best, best_area = t, area
            if best is not None:
                self.set_sub_label(best.track_id, name)

    # -- lifecycle -------------------------------------------------------------------------------
    def _confirm(self, obj: TrackedObject, frame: Frame, events: list[Event]) -> None:
        obj.confirmed = True
        events.append(self._lifecycle_event("tracks.new", obj, frame))
        for c, ev in obj.pending_crossings:
            ev.data["counts"] = self._count(obj, c)
        events.extend(obj.pending)
        obj.pending.clear()
        obj.pending_crossings.clear()

    def _count(self, obj: TrackedObject, c: LineCrossing) -> dict[str, int]:
        """Count a crossing; returns the line's running totals per direction."""
        for ln in self.zoneset.lines:
            if ln.name == c.line:
                ln.count(c, obj.track.label)
                return dict(ln.counts)
        return {}

    def _zone_events(self, obj, changes: list[ZoneChange], crossings, frame: Frame, events: list[Event]):
        for ch in changes:
            if ch.kind == "enter" and ch.zone not in obj.entered_zones:
                obj.entered_zones.append(ch.zone)
            data: dict[str, object] = {"zone": ch.zone}
            if ch.kind != "enter":
                data["dwell_s"] = _r(ch.dwell_s, 3)
            kind = {"enter": "zone_enter", "exit": "zone_exit", "loitering": "loitering"}[ch.kind]
            ev = self._object_event(f"tracks.{kind}", obj, frame, data)
            (events if obj.confirmed else obj.pending).append(ev)
        for c in crossings:
            ev = self._crossing_event(obj, c, frame)
            if obj.confirmed:
                ev.data["counts"] = self._count(obj, c)
                events.append(ev)
            else:  # counted (and published) if and when the object is confirmed
                obj.pending_crossings.append((c, ev))
                obj.pending.append(ev)

    def _crossing_event(self, obj: TrackedObject, c: LineCrossing, frame: Frame) -> Event:
        return self._object_event("tracks.line_cross", obj, frame, {"line": c.line, "direction": c.direction})

    def _end(self, track_id: int, frame: Frame | None, reason: str) -> list[Event]:
        obj = self.objects.pop(track_id, None)
        ts = self._ts(frame)
        exits = self.zoneset.forget(track_id, ts)
        if obj is None or not obj.confirmed:
            return []
        events = [self._object_event("tracks.zone_exit", obj, frame, {"zone": ch.zone, "dwell_s": _r(ch.dwell_s, 3)})
                  for ch in exits]  # fmt: skip
        events.append(self._lifecycle_event("tracks.end", obj, frame, {"end_reason": reason}))
        return events

    def _ts(self, frame: Frame | None) -> float:
        """Track time of ``frame`` (the last processed one, or now at shutdown) on the analyzer's clock."""
        if (
            self.clock is not None
            and self._frame_ts is not None
            and (frame is None or frame is self._last_frame)
        ):
            return self._frame_ts
        return frame.capture_time if frame is not None else time.time()

    def _object_event(self, etype: str, obj: TrackedObject, frame: Frame | None, data: dict) -> Event:
        t = obj.track
        base = {
            "track_id": t.track_id,
            "object_id": obj.object_id,
            "label": t.label,
            "sub_label": obj.sub_label,
        }
        return Event.for_frame(etype, frame, {**base, **data}, camera_id=self.camera_id)

    def _lifecycle_event(self, etype: str, obj: TrackedObject, frame: Frame | None, extra=None) -> Event:
        t = obj.track
        self._write_snapshot(obj)
        data = {
            "score": _r(t.score),
            "best_score": _r(obj.best_score),
            "median_score": _r(t.median_score()),
            "box": [round(float(v), 1) for v in t.box],
            "first_seen": obj.first_seen,
            "last_seen": obj.last_seen,
            "duration_s": _r(obj.last_seen - obj.first_seen, 3),
            "frames": t.hits,
            "zones": self.zoneset.current(t.track_id),
            "entered_zones": list(obj.entered_zones),
            "snapshot": obj.snapshot,
            **(extra or {}),
        }
        obj.last_event_ts = self._ts(frame)
        obj.seen_since_event = False
        obj.sub_label_changed = False
        return self._object_event(etype, obj, frame, data)

    def _write_snapshot(self, obj: TrackedObject) -> None:
        if self.snapshots is None or obj.best_image is None:
            return
        if obj.snapshot is not None and obj.best_score < obj.best_written + self.cfg.snapshots.min_score_gain:
            return
        t = obj.track
        path = self.snapshots.path_for(t.track_id, obj.object_id)
        who = f" ({obj.sub_label})" if obj.sub_label else ""
        caption = f"{t.label} #{t.track_id}{who} {obj.best_score:.2f}"
        if self.snapshots.save(path, obj.best_image, obj.best_box, caption):
            obj.snapshot = str(path)
            obj.best_written = obj.best_score
            obj.best_image = None  # written; drop the frame reference until a better one arrives
