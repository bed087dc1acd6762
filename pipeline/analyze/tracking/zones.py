"""Zone membership with inertia and loitering, and direction-aware line-crossing counts, per track."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.analyze.tracking.geometry import (
    anchor_points,
    points_in_polygon,
    scale_points,
    segments_intersect,
)
from pipeline.config.tracking import LineConfig, ZoneConfig


@dataclass
class _ZoneMembership:
    inside: bool = False
    streak: int = 0  # consecutive frames disagreeing with ``inside``
    entered_ts: float = 0.0
    loiter_reported: bool = False


@dataclass
class ZoneChange:
    zone: str
    kind: str  # "enter" | "exit" | "loitering"
    dwell_s: float = 0.0


class Zone:
    def __init__(self, name: str, cfg: ZoneConfig):
        self.name = name
        self.cfg = cfg
        self._poly_cache: dict[tuple[int, int], np.ndarray] = {}
        self._state: dict[int, _ZoneMembership] = {}

    def polygon(self, width: int, height: int) -> np.ndarray:
        key = (width, height)
        if key not in self._poly_cache:
            self._poly_cache[key] = scale_points(self.cfg.points, self.cfg.normalized, width, height)
        return self._poly_cache[key]

    def applies_to(self, label: str) -> bool:
        return self.cfg.objects is None or label in self.cfg.objects

    def observe(self, track_id: int, inside_now: bool, ts: float) -> list[ZoneChange]:
        """One observation of a track; entering/exiting needs ``inertia`` frames in a row."""
        st = self._state.setdefault(track_id, _ZoneMembership())
        out: list[ZoneChange] = []
        if inside_now != st.inside:
            st.streak += 1
            if st.streak >= self.cfg.inertia:
                st.inside, st.streak = inside_now, 0
                if inside_now:
                    st.entered_ts, st.loiter_reported = ts, False
                    out.append(ZoneChange(self.name, "enter"))
                else:
                    out.append(ZoneChange(self.name, "exit", ts - st.entered_ts))
        else:
            st.streak = 0
        loiter = self.cfg.loiter_time_s
        if st.inside and loiter is not None and not st.loiter_reported and ts - st.entered_ts >= loiter:
            st.loiter_reported = True
            out.append(ZoneChange(self.name, "loitering", ts - st.entered_ts))
        return out

    def inside(self, track_id: int) -> bool:
        st = self._state.get(track_id)
        return bool(st and st.inside)

    def forget(self, track_id: int, ts: float) -> list[ZoneChange]:
        st = self._state.pop(track_id, None)
        if st and st.inside:
            return [ZoneChange(self.name, "exit", ts - st.entered_ts)]
        return []


@dataclass
class _LineSide:
    side: int  # -1 / +1, last side seen farther than the hysteresis
    point: np.ndarray


@dataclass
class LineCrossing:
    line: str
    direction: str  # the configured forward/backward name


class CountingLine:
    def __init__(self, name: str, cfg: LineConfig):
        self.name = name
        self.cfg = cfg
        self.counts: dict[str, int] = {cfg.forward_name: 0, cfg.backward_name: 0}
        self._ends: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self._state: dict[int, _LineSide] = {}
        self.by_label: dict[str, dict[str, int]] = {}

    def ends(self, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        key = (width, height)
        if key not in self._ends:
            pts = scale_points(self.cfg.points, self.cfg.normalized, width, height)
            self._ends[key] = (pts[0], pts[1])
        return self._ends[key]

    def applies_to(self, label: str) -> bool:
        return self.cfg.objects is None or label in self.cfg.objects

    def distances(self, points: np.ndarray, width: int, height: int) -> np.ndarray:
        """Signed distances (pixels) of (N, 2) points; positive = the forward side."""
        a, b = self.ends(width, height)
        d = b - a
        return (d[0] * (points[:, 1] - a[1]) - d[1] * (points[:, 0] - a[0])) / np.hypot(d[0], d[1])

    def observe(self, track_id: int, point: np.ndarray, dist: float, width: int, height: int):
        """Whether this track just crossed the segment (jitter within ``hysteresis_px`` is ignored)."""
        if abs(dist) <= self.cfg.hysteresis_px:
            return None
        side = 1 if dist > 0 else -1
        prev = self._state.get(track_id)
        self._state[track_id] = _LineSide(side, point)
        if prev is None or prev.side == side:
            return None
        a, b = self.ends(width, height)
        if not segments_intersect(prev.point, point, a, b):
            return None
        return LineCrossing(self.name, self.cfg.forward_name if side > 0 else self.cfg.backward_name)

    def count(self, crossing: LineCrossing, label: str) -> None:
        self.counts[crossing.direction] += 1
        per = self.by_label.setdefault(label, {self.cfg.forward_name: 0, self.cfg.backward_name: 0})
        per[crossing.direction] += 1

    def forget(self, track_id: int) -> None:
        self._state.pop(track_id, None)


@dataclass
class ZoneSet:
    zones: list[Zone] = field(default_factory=list)
    lines: list[CountingLine] = field(default_factory=list)

    def observe(
        self, track_ids: list[int], labels: list[str], boxes: np.ndarray, ts: float, width: int, height: int
    ) -> list[tuple[list[ZoneChange], list[LineCrossing]]]:
        """Zone changes and line crossings caused by one observation of each track (vectorised per zone)."""
        n = len(track_ids)
        out: list[tuple[list[ZoneChange], list[LineCrossing]]] = [([], []) for _ in range(n)]
        if n == 0 or not (self.zones or self.lines):
            return out
        boxes = np.asarray(boxes, np.float64).reshape(n, 4)
        anchors = {a: anchor_points(boxes, a) for a in ("bottom_center", "center")}
        for z in self.zones:
            inside = points_in_polygon(anchors[z.cfg.anchor], z.polygon(width, height))
            for i, tid in enumerate(track_ids):
                if z.applies_to(labels[i]):
                    out[i][0].extend(z.observe(tid, bool(inside[i]), ts))
        for ln in self.lines:
            pts = anchors[ln.cfg.anchor]
            dist = ln.distances(pts, width, height)
            for i, tid in enumerate(track_ids):
                if ln.applies_to(labels[i]):
                    c = ln.observe(tid, pts[i], float(dist[i]), width, height)
                    if c is not None:
                        out[i][1].append(c)
        return out

    def current(self, track_id: int) -> list[str]:
        return [z.name for z in self.zones if z.inside(track_id)]

    def forget(self, track_id: int, ts: float) -> list[ZoneChange]:
        out: list[ZoneChange] = []
        for z in self.zones:
            out.extend(z.forget(track_id, ts))
        for ln in self.lines:
            ln.forget(track_id)
        return out
