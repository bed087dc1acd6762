"""One door's decision logic: k-frame votes, allow lists, schedule, cooldown, fail-closed cases.

Pure logic (no I/O), driven by the face analyzer with frame capture times, so it is easy to test.
A decision is a plain dict: {door_id, decision: granted|denied|unknown, person, distance, frames, reason}.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from pipeline.doors.config import DoorConfig

UNKNOWN = "__unknown__"
_ERROR = "__error__"


@dataclass(frozen=True)
class FaceVote:
    identity: str | None  # None = unknown face
    distance: float
    face_px: float


class DoorPolicy:
    def __init__(self, door: DoorConfig, groups: dict[str, list[str]] | None = None) -> None:
        self.door = door
        self.tz = ZoneInfo(door.timezone)
        groups = groups or {}
        missing = [g for g in door.allow_groups if g not in groups]
        if missing:
            raise ValueError(
                f"door {door.id!r}: allow_groups names unknown group(s) {missing} (define them in faces.groups)"
            )
        self.allowed: set[str] = set(door.allow_people)
        for g in door.allow_groups:
            self.allowed.update(groups[g])
        self._votes: dict[str, deque[tuple[float, float]]] = {}
        self._last: dict[str, float] = {}  # key -> time of its last decision (cooldown)
        self.offline = False
        self._outage_at = -float("inf")  # frames captured before the last outage never vote
        self.stale_frames = 0  # frames older than max_frame_age_s (capture_time from the stream clock)

    # ---- inputs ---------------------------------------------------------------------------------------

    def observe(self, capture_time: float, faces: list[FaceVote], now: float) -> list[dict]:
        """One analysed frame. Returns the decisions it completes (usually none)."""
        age = now - capture_time
        if age > self.door.max_frame_age_s:
            self.stale_frames += 1
            self._votes.clear()
            if any(f.face_px >= self.door.min_face_px for f in faces):
                return self._fail(f"stale frame ({age:.1f} s old > {self.door.max_frame_age_s} s)", now)
            return []
        if capture_time <= self._outage_at:  # queued from before the camera was lost
            return []
        self.offline = False
        out: list[dict] = []
        seen: set[str] = set()
        for f in faces:
            if f.face_px < self.door.min_face_px:
                continue
            key = f.identity or UNKNOWN
            if key in seen:  # one vote per identity per frame
                continue
            seen.add(key)
            votes = self._votes.setdefault(key, deque())
            votes.append((capture_time, f.distance))
        for key in list(self._votes):
            votes = self._votes[key]
            while votes and votes[0][0] < capture_time - self.door.window_s:
                votes.popleft()
            if not votes:
                del self._votes[key]
            elif len(votes) >= self.door.k_frames:
                decision = self._decide(key, votes, capture_time, now)
                del self._votes[key]
                if decision is not None:
                    out.append(decision)
        return out

    def error(self, reason: str, now: float) -> list[dict]:
        """Something failed while analysing (detector, embedder, gallery): fail closed."""
        self._votes.clear()
        return self._fail(f"error: {reason}", now)

    def camera_status(self, status: str, now: float) -> list[dict]:
        """Any status but "online" denies once; an outage (not the end of a file) also voids every frame
        captured before it, even ones still queued for analysis."""
        if status == "online":
            return []
        self._votes.clear()
        if status != "ended":
            self._outage_at = now
        if self.offline:
            return []
        self.offline = True
        return [self._decision("denied", None, None, 0, f"camera {status}")]

    # ---- internals -------------------------------------------------------------------------------------

    def _in_schedule(self, t: float) -> bool:
        local = datetime.fromtimestamp(t, self.tz)
        return any(w.contains(local.weekday(), local.time()) for w in self.door.schedule)

    def _cooling(self, key: str, now: float) -> bool:
        last = self._last.get(key)
        return last is not None and now - last < self.door.cooldown_s

    def _decide(
        self, key: str, votes: deque[tuple[float, float]], capture_time: float, now: float
    ) -> dict | None:
        if self._cooling(key, now):
            return None
        self._last[key] = now
        n = len(votes)
        dist = round(sum(d for _, d in votes) / n, 4)
        if key == UNKNOWN:
            return self._decision(
                "unknown", None, dist if dist != float("inf") else None, n, "face not in the gallery"
            )
        if key not in self.allowed:
            return self._decision("denied", key, dist, n, "person not allowed at this door")
        if not self._in_schedule(capture_time):
            return self._decision("denied", key, dist, n, "outside the door's schedule")
        return self._decision("granted", key, dist, n, f"{n} matching frames within {self.door.window_s} s")

    def _fail(self, reason: str, now: float) -> list[dict]:
        if self._cooling(_ERROR, now):
            return []
        self._last[_ERROR] = now
        return [self._decision("denied", None, None, 0, reason)]

    def _decision(
        self, decision: str, person: str | None, distance: float | None, frames: int, reason: str
    ) -> dict:
        return {
            "door_id": self.door.id,
            "decision": decision,
            "person": person,
            "distance": distance,
            "frames": frames,
            "reason": reason,
        }
