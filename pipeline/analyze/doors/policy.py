"""One door's decision logic: k-frame votes per tracked face, allow lists, schedule, liveness, second
factor, cooldown, fail-closed cases.

Pure logic (no I/O besides logging), driven by the face analyzer with frame capture times, so it is easy to
test. A decision is a plain dict: {door_id, decision: granted|denied|unknown, person, distance, frames,
reason}.

The vote: frames of **one tracked face** (one track id) inside ``window_s``; ``k_frames`` of them naming the
same person, and no frame of that track naming anyone else inside the window (a track that flips between two
people is voided). A grant further needs liveness evidence of the kind the door asks for, seen on that track
inside the window, and the door's second factor when it has one. Faces that cannot vote, and grants held
back, are logged at most once a minute per door and reason ("why not").

Presentation-attack detection (liveness ``pad``, ``pad+...``): every frame of the track must score at least
``pad_threshold`` (probability of a real face). A frame below it voids the track's window (the votes start
again), so an attack has to pass on k frames in a row; a face with ``ATTACK_FRAMES_TO_REFUSE`` refused
frames (``FaceVote.attacks``, kept by the face tracker at its spot) cannot vote while it stays in view; a
frame without a score does not vote (fail closed).
A track that replaced a matched face at the same spot (``FaceVote.follows``: the person turned away) makes
no ``unknown`` decision: it is not a stranger.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from pipeline.config.doors import DoorConfig

log = logging.getLogger(__name__)

UNKNOWN = "__unknown__"
_ERROR = "__error__"
WHY_NOT_EVERY_S = 60.0
# a face (tracked, inherited at its spot) with this many frames refused by PAD cannot vote while in view: one
# refused frame may be a genuine user's motion blur (it only restarts the vote), two are an attack
ATTACK_FRAMES_TO_REFUSE = 2


@dataclass(frozen=True)
class FaceVote:
    identity: str | None  # None = unknown face (or rejected by the matcher's rule: see ``reason``)
    distance: float
    face_px: float
    track_id: int | None = None  # None: keyed by identity (callers without a face tracker)
    sharpness: float | None = None  # None = not measured
    blink_at: float | None = None  # capture time of the track's last blink (None: never)
    motion_at: float | None = None  # capture time of the track's last non-planar head motion
    reason: str | None = None  # the matcher's reason for no identity ("above threshold", "below margin")
    pad: float | None = None  # presentation-attack detection: probability the face is real (None: not scored)
    follows: str | None = None  # the name matched at this spot by the track this one replaced (turned away)
    attacks: int = 0  # frames of this face (and the faces it replaced at its spot) refused by PAD

    @property
    def track_key(self) -> int | str:
        """What the vote is keyed by: the track id, else the identity (``UNKNOWN`` for an unknown face)."""
        return self.track_id if self.track_id is not None else (self.identity or UNKNOWN)


# (door_id, person) -> whether a second-factor event arrived in [since, until] (see doors/second_factor.py)
SecondFactorCheck = Callable[[str, str, float, float], bool]


class DoorPolicy:
    def __init__(
        self, door: DoorConfig, groups: dict[str, list[str]] | None = None, pad_threshold: float = 0.5
    ) -> None:
        self.door = door
        self.pad_threshold = pad_threshold
        self.uses_pad = door.liveness.startswith("pad")
        self._motion_mode = door.liveness.removeprefix("pad").removeprefix("+") or None
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
        # track key -> (capture time, identity key, distance, PAD score) of the frames it voted in the window
        self._votes: dict[int | str, deque[tuple[float, str, float, float | None]]] = {}
        self._last: dict[str, float] = {}  # key -> time of its last decision (cooldown)
        self.offline = False
        self._outage_at = -float("inf")  # frames captured before the last outage never vote
        self._why_logged: dict[str, float] = {}
        self.why_not_counts: dict[str, int] = {}
        self.second_factor: SecondFactorCheck | None = None
        self.stale_frames = 0  # frames older than max_frame_age_s (capture_time from the stream clock)

    # ---- inputs ---------------------------------------------------------------------------------------

    def observe(self, capture_time: float, faces: list[FaceVote], now: float) -> list[dict]:
        """One analysed frame. Returns the decisions it completes (usually none)."""
        age = now - capture_time
        if age > self.door.max_frame_age_s:
            self.stale_frames += 1
            self._votes.clear()
            if any(f.face_px >= self.door.min_face_px for f in faces):
                self.why_not(
                    "stale", f"frame {age:.1f} s old > max_frame_age_s {self.door.max_frame_age_s}", now
                )
                return self._fail(f"stale frame ({age:.1f} s old > {self.door.max_frame_age_s} s)", now)
            return []
        if capture_time <= self._outage_at:  # queued from before the camera was lost
            return []
        self.offline = False
        out: list[dict] = []
        seen: set[int | str] = set()
        for f in faces:
            if f.face_px < self.door.min_face_px:
                self.why_not(
                    "too small", f"{f.face_px:.0f} px < min_face_px {self.door.min_face_px:.0f}", now
                )
                continue
            if f.sharpness is not None and f.sharpness < self.door.min_sharpness:
                self.why_not(
                    "too blurry",
                    f"sharpness {f.sharpness:.1f} < min_sharpness {self.door.min_sharpness}",
                    now,
                )
                continue
            if f.reason is not None:
                self.why_not(f.reason, f"nearest distance {f.distance:.3f}", now)
            ident = f.identity or UNKNOWN
            track = f.track_key
            if track in seen:  # one vote per track per frame
                continue
            seen.add(track)
            if self.uses_pad and ident != UNKNOWN:
                if f.pad is None:
                    self.why_not("no attack score", "presentation-attack detection did not run", now)
                    continue
                if f.pad < self.pad_threshold or f.attacks >= ATTACK_FRAMES_TO_REFUSE:
                    self._votes.pop(track, None)  # the window starts again: k real-looking frames in a row
                    self.why_not(
                        "presentation attack",
                        f"{ident}: probability real {f.pad:.2f} (pad_threshold {self.pad_threshold}); "
                        f"{f.attacks} frame(s) of this face refused so far",
                        now,
                    )
                    continue
            self._votes.setdefault(track, deque()).append((capture_time, ident, f.distance, f.pad))
        live_by_track = {f.track_key: f for f in faces}
        for track in list(self._votes):
            votes = self._votes[track]
            while votes and votes[0][0] < capture_time - self.door.window_s:
                votes.popleft()
            if not votes:
                del self._votes[track]
                continue
            named = {ident for _, ident, _, _ in votes if ident != UNKNOWN}
            if len(named) > 1:
                self.why_not(
                    "conflicting identities", f"one face matched {sorted(named)} within the window", now
                )
                del self._votes[track]
                continue
            key = next(iter(named)) if named else UNKNOWN
            mine = [(t, d) for t, ident, d, _ in votes if ident == key]
            if len(mine) < self.door.k_frames:
                continue
            face = live_by_track.get(track)
            if key == UNKNOWN and face is not None and face.follows is not None:
                self.why_not("turned away", f"a face that matched {face.follows} is now unknown", now)
                del self._votes[track]
                continue
            pads = [p for _, ident, _, p in votes if ident == key and p is not None]
            # in cooldown _decide returns None: do not use up a second-factor event meant for someone else
            if key != UNKNOWN and key in self.allowed and not self._cooling(key, now):
                hold = self._hold_back(key, face, capture_time, now)
                if hold is not None:
                    self.why_not(hold, f"{key} matched on {len(mine)} frames", now)
                    continue
            decision = self._decide(key, mine, capture_time, now)
            del self._votes[track]
            if decision is not None:
                if self.uses_pad and pads:
                    decision["pad_min"] = round(min(pads), 4)
                out.append(decision)
        return out

    def why_not(self, reason: str, detail: str, now: float) -> None:
        """Count a reason a face did not vote or a grant was held back; log it at most once a minute."""
        self.why_not_counts[reason] = self.why_not_counts.get(reason, 0) + 1
        last = self._why_logged.get(reason)
        if last is None or now - last >= WHY_NOT_EVERY_S:
            self._why_logged[reason] = now
            log.info(
                "door %s: faces not voting: %s (%s; %d time(s) so far, logged at most once a minute)",
                self.door.id,
                reason,
                detail,
                self.why_not_counts[reason],
            )

    def _hold_back(self, person: str, face: FaceVote | None, capture_time: float, now: float) -> str | None:
        """Why an allowed person's completed vote may not grant yet (None: it may)."""
        mode = self._motion_mode
        if mode is not None and mode != "off":
            since = capture_time - self.door.window_s
            blink = face is not None and face.blink_at is not None and face.blink_at >= since
            motion = face is not None and face.motion_at is not None and face.motion_at >= since
            live = {"blink": blink, "motion": motion, "any": blink or motion, "all": blink and motion}[mode]
            if not live:
                return "not live"
        sf = self.door.second_factor
        check = self.second_factor
        if sf is not None and (check is None or not check(self.door.id, person, now - sf.within_s, now)):
            return "waiting for second factor"
        return None

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
        self, key: str, votes: list[tuple[float, float]], capture_time: float, now: float
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
        extra = "" if self.door.liveness == "off" else f", liveness {self.door.liveness}"
        extra += "" if self.door.second_factor is None else ", second factor"
        return self._decision(
            "granted", key, dist, n, f"{n} matching frames of one face within {self.door.window_s} s{extra}"
        )

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
