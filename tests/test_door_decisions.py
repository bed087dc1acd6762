"""The door's decision rule around the match: votes per tracked face with no conflicting identity, the
liveness each door asks for, the second factor (a real redis-server carrying badge events), the matcher's
margin, the face tracker, and the once-a-minute "why not voting" log."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime

import numpy as np
import pytest

from pipeline.analyze.doors.policy import DoorPolicy, FaceVote
from pipeline.analyze.doors.reader_messages import DoorReaders, sign_reader_message
from pipeline.analyze.doors.second_factor import SecondFactorListener
from pipeline.analyze.faces.matcher import REASON_MARGIN, REASON_THRESHOLD, Matcher
from pipeline.analyze.faces.tracks import FaceTracker
from pipeline.config.doors import DoorConfig

KEY = "k" * 32
READER_KEY = b"reader-key-for-these-tests-01"
T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC).timestamp()  # a Monday, 10:00 UTC


def door(**kw) -> DoorConfig:
    base = {"id": "front", "cameras": ["cam1"], "allow_people": ["alice", "bob"], "secret": KEY, "k_frames": 3,
            "window_s": 2.0, "cooldown_s": 5.0, "min_face_px": 50}  # fmt: skip
    return DoorConfig.model_validate({**base, **kw})


def vote(who: str | None = "alice", track: int | None = 1, **kw) -> FaceVote:
    return FaceVote(who, 0.3, 100.0, track_id=track, **kw)


def feed(p: DoorPolicy, frames: list[list[FaceVote]], t0: float = T0, dt: float = 0.1) -> list[dict]:
    out = []
    for i, faces in enumerate(frames):
        t = t0 + i * dt
        out += p.observe(t, faces, now=t + 0.05)
    return out


def test_vote_needs_one_track_and_no_conflicting_identity():
    p = DoorPolicy(door(liveness="off"))
    # alice on three different tracks (three people who each look like her for one frame): no grant
    assert feed(p, [[vote(track=1)], [vote(track=2)], [vote(track=3)]]) == []
    # one track naming alice, bob, alice, alice: the track is voided, then needs 3 fresh frames
    p = DoorPolicy(door(liveness="off"))
    assert feed(p, [[vote("alice")], [vote("bob")], [vote("alice")], [vote("alice")]]) == []
    d = feed(p, [[vote("alice")]] * 3, t0=T0 + 0.5)
    assert [(x["decision"], x["person"]) for x in d] == [("granted", "alice")]
    # unknown frames (below threshold / margin) inside a track do not void it, and do not count for her
    p = DoorPolicy(door(liveness="off"))
    assert feed(p, [[vote("alice")], [vote(None)], [vote("alice")]]) == []
    assert [x["decision"] for x in feed(p, [[vote("alice")]], t0=T0 + 0.3)] == ["granted"]


@pytest.mark.parametrize(
    ("mode", "blink", "motion", "grants"),
    [
        ("off", False, False, True),
        ("blink", False, True, False),
        ("blink", True, False, True),
        ("motion", True, False, False),
        ("motion", False, True, True),
        ("any", False, False, False),
        ("any", True, False, True),
        ("all", True, False, False),
        ("all", True, True, True),
    ],
)
def test_liveness_modes_fail_closed(mode, blink, motion, grants):
    p = DoorPolicy(door(liveness=mode))
    ev = {"blink_at": T0 if blink else None, "motion_at": T0 + 0.1 if motion else None}
    d = feed(p, [[vote(**ev)]] * 3)
    assert [x["decision"] for x in d] == (["granted"] if grants else [])


def test_liveness_evidence_must_be_inside_the_window():
    p = DoorPolicy(door(liveness="blink"))
    old = T0 - 10  # a blink long before this vote's window
    assert feed(p, [[vote(blink_at=old)]] * 5) == []


def test_strangers_are_decided_without_liveness():
    # a completed vote for someone not allowed, or unknown, is denied/unknown at once (nothing to protect)
    d = feed(DoorPolicy(door(liveness="all")), [[vote("mallory")]] * 3)
    assert [x["decision"] for x in d] == ["denied"]
    d = feed(DoorPolicy(door(liveness="all")), [[vote(None)]] * 3)
    assert [x["decision"] for x in d] == ["unknown"]


def test_why_not_voting_is_logged_once_a_minute_per_reason(caplog):
    caplog.set_level(logging.INFO, "pipeline.analyze.doors.policy")
    p = DoorPolicy(door(liveness="any", min_sharpness=20))
    small = FaceVote("alice", 0.3, 30.0, track_id=1)
    blurry = FaceVote("alice", 0.3, 100.0, track_id=2, sharpness=3.0)
    margin = FaceVote(None, 0.3, 100.0, track_id=3, reason=REASON_MARGIN)
    feed(p, [[small, blurry, margin, vote(track=4)]] * 30, dt=1.0)  # 30 s of frames
    lines = [r.getMessage() for r in caplog.records]
    for reason in ("too small", "too blurry", "below margin", "not live"):
        assert sum(f"faces not voting: {reason} " in m for m in lines) == 1, (reason, lines)
    assert p.why_not_counts["too small"] == 30
    caplog.clear()
    feed(p, [[small]], t0=T0 + 61)  # a minute later: logged again
    assert sum("too small" in r.getMessage() for r in caplog.records) == 1
    # a stale frame says so too
    caplog.clear()
    p.observe(T0 + 100, [vote()], now=T0 + 200)
    assert any("faces not voting: stale" in r.getMessage() for r in caplog.records)


def test_matcher_margin_to_second_best():
    a = np.zeros((2, 4), np.float32)
    b = np.zeros((2, 4), np.float32)
    b[:, 0] = 0.5
    m = Matcher({"alice": a, "bob": b}, threshold=0.6, margin=0.1)
    assert m.identify(np.array([0.05, 0, 0, 0])).identity == "alice"  # 0.05 vs 0.45
    between = m.identify(np.array([0.22, 0, 0, 0]))  # 0.22 vs 0.28: within threshold, too close to bob
    assert between.identity is None and between.nearest == "alice" and between.reason == REASON_MARGIN
    far = m.identify(np.array([0, 0, 0, 3.0]))
    assert far.identity is None and far.reason == REASON_THRESHOLD


def test_face_tracker_keeps_ids_and_splits_jumps():
    tr = FaceTracker(max_gap_s=1.0)
    a, b = [100, 100, 180, 180], [400, 100, 480, 180]
    assert tr.assign(np.array([a, b]), 0.0) == [1, 2]
    # one second later (a slow CPU): both moved most of a face width, and came in the other order
    assert tr.assign(np.array([[460, 110, 540, 190], [160, 100, 240, 180]]), 1.0) == [2, 1]
    assert tr.assign(np.array([[300, 300, 380, 380]]), 1.2) == [3]  # far from both: a new face
    assert tr.assign(np.array([[160, 100, 400, 340]]), 1.3) == [4]  # 3x larger where face 1 was: not it
    assert tr.assign(np.array([[302, 300, 382, 380]]), 2.5) == [5]  # lost for longer than max_gap_s


def test_second_factor_badge_on_redis(redis_server, redis_client):
    readers = {"front": DoorReaders({"badge-1": READER_KEY}), "other": DoorReaders({"badge-9": READER_KEY})}
    listener = SecondFactorListener(redis_server.url, ["badges"], readers)

    def badge(door_id: str = "front", person: str | None = "alice", reader: str = "badge-1") -> str:
        return json.dumps(sign_reader_message(READER_KEY, reader, door_id, person))

    try:
        p = DoorPolicy(door(liveness="off", second_factor={"channel": "badges", "within_s": 5}))
        p.second_factor = listener.check
        now = time.time()
        assert feed(p, [[vote()]] * 3, t0=now) == []  # no badge: held back
        assert p.why_not_counts["waiting for second factor"] == 1
        redis_client.publish("badges", badge("other", reader="badge-9"))  # another door
        redis_client.publish("badges", badge(person="bob"))  # bob's badge
        redis_client.publish("badges", "not json")
        time.sleep(0.5)
        assert feed(p, [[vote()]] * 3, t0=time.time()) == []
        redis_client.publish("badges", badge())
        time.sleep(0.5)
        d = feed(p, [[vote()]] * 3, t0=time.time())
        assert [(x["decision"], x["person"]) for x in d] == [("granted", "alice")]
        assert "second factor" in d[0]["reason"]
        # the badge event is used up: after the cooldown, alice needs a new one
        assert feed(p, [[vote()]] * 3, t0=time.time() + 6) == []
        # a PIN pad (no person) at this door works for whoever matched, once
        redis_client.publish("badges", badge(person=None))
        time.sleep(0.5)
        d = feed(p, [[vote("bob", track=9)]] * 3, t0=time.time())
        assert [(x["decision"], x["person"]) for x in d] == [("granted", "bob")]
        assert listener.refused == {"malformed": 1}
    finally:
        listener.close()


def test_second_factor_without_a_listener_never_grants():
    p = DoorPolicy(door(liveness="off", second_factor={"channel": "badges"}))
    assert feed(p, [[vote()]] * 10) == []


def test_second_factor_not_used_up_by_a_person_in_cooldown():
    # a PIN pad (no person) event is meant for the next person; alice, still in front of the door in her
    # cooldown after being let in, must not consume it
    pins: list[float] = []

    def check(door_id: str, person: str, since: float, until: float) -> bool:
        for i, t in enumerate(pins):
            if since <= t <= until:
                del pins[i]
                return True
        return False

    p = DoorPolicy(door(liveness="off", second_factor={"channel": "pins", "within_s": 5}))
    p.second_factor = check
    pins.append(T0)
    assert [x["person"] for x in feed(p, [[vote()]] * 3)] == ["alice"]
    pins.append(T0 + 1.0)  # bob types the PIN while alice (cooling down) is still seen
    assert feed(p, [[vote()]] * 3, t0=T0 + 1.0) == []
    assert pins == [T0 + 1.0]
    d = feed(p, [[vote("bob", track=2)]] * 3, t0=T0 + 1.5)
    assert [(x["decision"], x["person"]) for x in d] == [("granted", "bob")]
