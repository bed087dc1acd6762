"""Door policy, signed door events, the audit log and the reference controller (with a real Redis)."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipeline.analyze.doors.audit import AuditError, AuditLog, verify_log
from pipeline.analyze.doors.policy import DoorPolicy, FaceVote
from pipeline.analyze.doors.signing import Verifier, VerifyError, sign_event
from pipeline.config.doors import DoorConfig, TimeWindow
from pipeline.config.schema import ConfigError, parse_config
from pipeline.core.events import Event
from pipeline.deliver.redis_transport import channel_for
from pipeline.doors.controller import DoorController

KEY = "k" * 32
T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC).timestamp()  # a Monday, 10:00 UTC


def door(**kw) -> DoorConfig:
    base = {
        "id": "front",
        "cameras": ["cam1"],
        "allow_people": ["alice"],
        "secret": KEY,
        "k_frames": 3,
        "window_s": 2.0,
        "cooldown_s": 5.0,
        "min_face_px": 50,
        "liveness": "off",  # these tests are about the vote; liveness has its own below
    }
    return DoorConfig.model_validate({**base, **kw})


def alice(px: float = 100) -> list[FaceVote]:
    return [FaceVote("alice", 0.3, px)]


def feed(policy: DoorPolicy, faces: list[FaceVote], n: int, t0: float = T0, dt: float = 0.1) -> list[dict]:
    out = []
    for i in range(n):
        t = t0 + i * dt
        out += policy.observe(t, faces, now=t + 0.05)
    return out


# ---- policy -------------------------------------------------------------------------------------------


def test_grant_needs_k_frames_within_window():
    p = DoorPolicy(door())
    assert feed(p, alice(), 2) == []
    d = feed(p, alice(), 1, t0=T0 + 0.2)
    assert [x["decision"] for x in d] == ["granted"] and d[0]["person"] == "alice" and d[0]["frames"] == 3
    # frames spread wider than the window never add up
    p = DoorPolicy(door())
    assert feed(p, alice(), 6, dt=1.5) == []


def test_cooldown_then_grant_again():
    p = DoorPolicy(door())
    assert len(feed(p, alice(), 3)) == 1
    assert feed(p, alice(), 9, t0=T0 + 0.5) == []  # within 5 s cooldown
    assert [d["decision"] for d in feed(p, alice(), 3, t0=T0 + 6)] == ["granted"]


def test_small_faces_do_not_vote_and_strangers_are_denied_or_unknown():
    assert feed(DoorPolicy(door()), alice(px=30), 10) == []
    d = feed(DoorPolicy(door()), [FaceVote("bob", 0.3, 100)], 3)
    assert d[0]["decision"] == "denied" and d[0]["person"] == "bob" and "not allowed" in d[0]["reason"]
    d = feed(DoorPolicy(door()), [FaceVote(None, 0.9, 100)], 3)
    assert d[0]["decision"] == "unknown" and d[0]["person"] is None


def test_groups_and_schedule():
    groups = {"staff": ["carol"]}
    p = DoorPolicy(door(allow_people=[], allow_groups=["staff"]), groups)
    assert feed(p, [FaceVote("carol", 0.2, 90)], 3)[0]["decision"] == "granted"
    weekend = door(schedule=[{"days": ["sat", "sun"], "start": "08:00", "end": "18:00"}])
    d = feed(DoorPolicy(weekend), alice(), 3)
    assert d[0]["decision"] == "denied" and "schedule" in d[0]["reason"]
    paris = door(schedule=[{"days": ["mon"], "start": "10:30", "end": "12:00"}], timezone="Europe/Paris")
    assert feed(DoorPolicy(paris), alice(), 3)[0]["decision"] == "granted"  # 10:00 UTC = 11:00 Paris
    with pytest.raises(ValueError, match="unknown group"):
        DoorPolicy(door(allow_groups=["nobody"]), groups)


def test_time_window_wraps_midnight():
    w = TimeWindow(days=["fri"], start="22:00", end="06:00")
    t = datetime(2026, 1, 1, 23, 0).time()
    assert w.contains(4, t) and not w.contains(3, t)  # Friday 23:00 yes, Thursday no
    assert w.contains(5, datetime(2026, 1, 1, 5, 59).time())  # Saturday early morning belongs to Friday
    assert not w.contains(5, datetime(2026, 1, 1, 6, 0).time())


def test_fail_closed_on_stale_frames_errors_and_offline():
    p = DoorPolicy(door(max_frame_age_s=1.0))
    feed(p, alice(), 2)
    d = p.observe(T0 + 0.2, alice(), now=T0 + 5)  # stale: clears votes and denies
    assert d[0]["decision"] == "denied" and "stale" in d[0]["reason"]
    assert feed(p, alice(), 1, t0=T0 + 5) == []  # the earlier votes are gone
    d = p.error("embedder crashed", now=T0 + 20)
    assert d[0]["decision"] == "denied" and "embedder crashed" in d[0]["reason"]
    assert p.error("again", now=T0 + 21) == []  # rate limited by the cooldown
    p = DoorPolicy(door())
    feed(p, alice(), 2)
    d = p.camera_status("offline", now=T0 + 1)
    assert d[0]["decision"] == "denied" and "offline" in d[0]["reason"]
    assert p.camera_status("offline", now=T0 + 2) == []
    assert feed(p, alice(), 1, t0=T0 + 3) == []  # votes before the outage do not count
    p = DoorPolicy(door())
    p.camera_status("reconnecting", now=T0 + 1)
    assert feed(p, alice(), 6, t0=T0 + 0.2) == []  # frames captured before it, analysed after: ignored
    assert [d["decision"] for d in feed(p, alice(), 3, t0=T0 + 2)] == ["granted"]


def test_door_config_errors_are_clear(monkeypatch):
    base = {"cameras": [{"id": "cam1", "source": "x.mp4"}]}
    with pytest.raises(ConfigError, match=r"doors\[0\].*exactly one of secret or secret_env"):
        parse_config({**base, "doors": [{"id": "d", "cameras": ["cam1"]}]})
    with pytest.raises(ConfigError, match=r"doors\[0\]\.timezone.*unknown timezone"):
        parse_config(
            {**base, "doors": [{"id": "d", "cameras": ["cam1"], "secret": KEY, "timezone": "Mars/Base"}]}
        )
    with pytest.raises(ConfigError, match=r"doors\[0\]\.schedule\[0\]\.start: .*HH:MM"):
        parse_config(
            {
                **base,
                "doors": [{"id": "d", "cameras": ["c"], "secret": KEY, "schedule": [{"start": "25:00"}]}],
            }
        )
    d = DoorConfig(id="d", cameras=["c"], secret_env="VIDPIPE_TEST_DOOR_SECRET")
    monkeypatch.delenv("VIDPIPE_TEST_DOOR_SECRET", raising=False)
    with pytest.raises(ValueError, match="VIDPIPE_TEST_DOOR_SECRET is not set") as exc:
        d.secret_bytes()
    monkeypatch.setenv("VIDPIPE_TEST_DOOR_SECRET", "s3cr3t-value-that-is-long")
    assert d.secret_bytes() == b"s3cr3t-value-that-is-long"
    assert "s3cr3t" not in repr(DoorConfig(id="d", cameras=["c"], secret="s3cr3t-value-that-is-long"))
    assert "s3cr3t" not in str(exc.value)


# ---- signing -----------------------------------------------------------------------------------------


def decision_event(decision: str = "granted", person: str = "alice", door_id: str = "front") -> Event:
    data = {
        "door_id": door_id,
        "decision": decision,
        "person": person,
        "distance": 0.31,
        "frames": 3,
        "reason": "test",
    }
    return Event(type="doors.decision", camera_id="cam1", ts=T0, frame_seq=7, data=data)


def test_signature_verifies_and_rejects_tampering_replay_staleness():
    now = 1_000_000.0
    ev = sign_event(decision_event(), "front", KEY.encode(), now=now)
    raw = ev.to_json()
    v = Verifier("front", KEY.encode(), max_age_s=5)
    assert v.verify(raw, now=now + 1).data["person"] == "alice"
    with pytest.raises(VerifyError, match="replayed"):
        v.verify(raw, now=now + 2)
    for field, value in [("person", "mallory"), ("decision", "granted "), ("distance", 0.1)]:
        bad = json.loads(raw)
        bad["data"][field] = value
        with pytest.raises(VerifyError, match="bad signature"):
            Verifier("front", KEY.encode()).verify(json.dumps(bad), now=now)
    bad = json.loads(raw)
    bad["ts"] += 60  # the envelope is signed too
    with pytest.raises(VerifyError, match="bad signature"):
        Verifier("front", KEY.encode()).verify(json.dumps(bad), now=now)
    with pytest.raises(VerifyError, match="bad signature"):
        Verifier("front", b"another-key-of-enough-length").verify(raw, now=now)
    with pytest.raises(VerifyError, match="stale"):
        Verifier("front", KEY.encode(), max_age_s=5).verify(raw, now=now + 6)
    with pytest.raises(VerifyError, match="not 'back'"):
        Verifier("back", KEY.encode()).verify(raw, now=now)
    unsigned = decision_event().to_json()
    with pytest.raises(VerifyError, match="unsigned"):
        Verifier("front", KEY.encode()).verify(unsigned, now=now)


# ---- audit log ---------------------------------------------------------------------------------------


def test_audit_log_chain_detects_tampering(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    for i, dec in enumerate(["granted", "denied", "unknown"]):
        log.append({"i": i, "decision": dec})
    log.close()
    log = AuditLog(path)  # reopening continues the chain
    log.append({"i": 3, "decision": "denied", "reason": "error: x"})
    log.close()
    ok, n, _, _ = verify_log(path)
    assert ok and n == 4
    lines = path.read_text().splitlines()
    for tampered in (
        lines[:1] + [lines[1].replace('"denied"', '"granted"')] + lines[2:],  # edited
        lines[:1] + lines[2:],  # deleted
        [lines[1], lines[0]] + lines[2:],  # reordered
    ):
        path.write_text("\n".join(tampered) + "\n")
        ok, _, _, problem = verify_log(path)
        assert not ok and "line" in problem
        with pytest.raises(AuditError, match="damaged"):
            AuditLog(path)


# ---- controller over a real Redis ----------------------------------------------------------------------


def test_controller_opens_only_for_fresh_signed_grants(redis_client):
    opened: list[Event] = []
    ctl = DoorController("front", KEY.encode(), opened.append, max_age_s=5)
    stop = threading.Event()
    th = threading.Thread(target=ctl.run, args=(redis_client, "vp", stop.is_set), daemon=True)
    th.start()
    time.sleep(0.3)  # let it subscribe

    def publish(raw: str, camera: str = "cam1") -> None:
        ev = Event.from_json(raw)
        redis_client.publish(channel_for("vp", ev), raw)

    good = sign_event(decision_event(), "front", KEY.encode()).to_json()
    tampered = json.loads(
        sign_event(decision_event(person="bob", decision="denied"), "front", KEY.encode()).to_json()
    )
    tampered["data"]["decision"] = "granted"
    forged = sign_event(decision_event(), "front", b"attacker-key-0123456789").to_json()
    stale = sign_event(decision_event(), "front", KEY.encode(), now=time.time() - 60).to_json()
    denied = sign_event(decision_event(decision="denied"), "front", KEY.encode()).to_json()
    other_door = sign_event(decision_event(door_id="back"), "back", KEY.encode()).to_json()
    for raw in (good, good, json.dumps(tampered), forged, stale, denied, other_door, "garbage"):
        publish(raw) if raw != "garbage" else redis_client.publish("vp:doors:cam1", raw)
    deadline = time.time() + 5
    while time.time() < deadline and ctl.rejected < 5:
        time.sleep(0.05)
    stop.set()
    th.join(5)
    assert [e.event_id for e in opened] == [Event.from_json(good).event_id]  # once: the replay was refused
    assert ctl.rejected == 5  # replay, tampered, forged, stale, garbage


def test_root_config_checks_doors_against_cameras():
    base = {"cameras": [{"id": "cam1", "source": "x.mp4"}], "faces": {"enabled": True}}
    door_cfg = {"id": "d", "cameras": ["cam1"], "secret": KEY}
    assert parse_config({**base, "doors": [door_cfg]}).doors[0].id == "d"
    with pytest.raises(ConfigError, match=r"doors\[0\] \(d\): unknown camera id\(s\) \['cam9'\]"):
        parse_config({**base, "doors": [{**door_cfg, "cameras": ["cam9"]}]})
    with pytest.raises(ConfigError, match="door id 'd' is used twice"):
        parse_config({**base, "doors": [door_cfg, door_cfg]})
    with pytest.raises(ConfigError, match="faces.enabled is false"):
        parse_config({**base, "faces": {}, "doors": [door_cfg]})


def test_controller_cli_prints_open_for_a_signed_grant(redis_server, redis_client, tmp_path):
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "pipeline.doors.controller", "--door", "front", "--redis", redis_server.url,
           "--secret-env", "TEST_DOOR_KEY", "--prefix", "vp", "--state", str(tmp_path / "front.counter")]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "TEST_DOOR_KEY"}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "TEST_DOOR_KEY is not set" in r.stderr
    (tmp_path / "front.counter").write_text(json.dumps({"door_id": "front", "counter": 0}))  # existing state
    out = tmp_path / "out.txt"
    with open(out, "w") as fh:
        proc = subprocess.Popen(cmd, env={**env, "TEST_DOOR_KEY": KEY}, stdout=fh, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 30
        while time.time() < deadline and redis_client.execute_command("PUBSUB", "NUMPAT") < 1:
            time.sleep(0.1)
        ev = sign_event(decision_event(), "front", KEY.encode())
        redis_client.publish(channel_for("vp", ev), ev.to_json())
        redis_client.publish(channel_for("vp", ev), ev.to_json())  # replay
        while time.time() < deadline and "replayed" not in out.read_text():
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(10)
    text = out.read_text()
    assert text.count("OPEN door=front person=alice") == 1 and "replayed" in text
    assert KEY not in text


# ---- replay state across a controller restart ------------------------------------------------------------


def _start_controller(redis_server, redis_client, state, hook_file, log_file, n_before: int = 0):
    import os
    import subprocess
    import sys

    hook = f"sh -c 'echo $VIDPIPE_EVENT_ID >> {hook_file}'"
    cmd = [sys.executable, "-m", "pipeline.doors.controller", "--door", "front", "--redis", redis_server.url,
           "--secret-env", "TEST_DOOR_KEY", "--prefix", "vp", "--max-age", "120", "--state", str(state),
           "--hook", hook]  # fmt: skip
    with open(log_file, "a") as fh:
        proc = subprocess.Popen(
            cmd, env={**os.environ, "TEST_DOOR_KEY": KEY}, stdout=fh, stderr=subprocess.STDOUT
        )
    deadline = time.time() + 30
    while time.time() < deadline and redis_client.execute_command("PUBSUB", "NUMPAT") <= n_before:
        assert proc.poll() is None, Path(log_file).read_text()
        time.sleep(0.1)
    return proc


def _wait_for(pred, timeout: float = 15.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return pred()


def test_replayed_and_reordered_grants_refused_after_controller_restart(redis_server, redis_client, tmp_path):
    """The attack: record a grant off the wire, wait for the controller to restart (its nonce cache is
    gone), replay it. Also: hold back an older grant and deliver it after a newer event. The hook that
    opens the door must run exactly once, for the first grant only."""
    state, hook_file, log_file = tmp_path / "front.counter", tmp_path / "opened.txt", tmp_path / "ctl.log"
    older = sign_event(decision_event(), "front", KEY.encode())  # signed first, held back by the attacker
    grant = sign_event(decision_event(), "front", KEY.encode())
    state.write_text(json.dumps({"door_id": "front", "counter": 0}))  # a state file with nothing accepted yet
    proc = _start_controller(redis_server, redis_client, state, hook_file, log_file)
    try:
        redis_client.publish(channel_for("vp", grant), grant.to_json())
        assert _wait_for(lambda: hook_file.exists() and hook_file.read_text().strip()), log_file.read_text()
    finally:
        proc.terminate()
        proc.wait(10)
    assert hook_file.read_text().split() == [grant.event_id]
    assert json.loads(state.read_text())["counter"] == grant.data["signature"]["counter"]

    proc = _start_controller(redis_server, redis_client, state, hook_file, log_file)
    try:
        redis_client.publish(channel_for("vp", grant), grant.to_json())  # replay after the restart
        redis_client.publish(channel_for("vp", older), older.to_json())  # reordered: older than accepted
        assert _wait_for(lambda: log_file.read_text().count("replayed or reordered") >= 2), (
            log_file.read_text()
        )
    finally:
        proc.terminate()
        proc.wait(10)
    assert hook_file.read_text().split() == [grant.event_id]  # the hook never ran again


def test_controller_refuses_to_start_with_unreadable_replay_state(redis_server, tmp_path):
    import os
    import subprocess
    import sys

    state = tmp_path / "front.counter"
    state.write_text("{not json")
    cmd = [sys.executable, "-m", "pipeline.doors.controller", "--door", "front", "--redis", redis_server.url,
           "--secret-env", "TEST_DOOR_KEY", "--state", str(state)]  # fmt: skip
    r = subprocess.run(
        cmd, env={**os.environ, "TEST_DOOR_KEY": KEY}, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2 and str(state) in r.stderr and "refusing to start" in r.stderr


def test_counter_store_refuses_reordered_events_in_process(tmp_path):
    from pipeline.analyze.doors.signing import CounterStore

    first = sign_event(decision_event(), "front", KEY.encode()).to_json()
    second = sign_event(decision_event(), "front", KEY.encode()).to_json()
    v = Verifier("front", KEY.encode(), counters=CounterStore(tmp_path / "c.json", "front"))
    v.verify(second)
    with pytest.raises(VerifyError, match="replayed or reordered"):
        v.verify(first)
    # a fresh verifier on the same file (a restart) still refuses both
    v2 = Verifier("front", KEY.encode(), counters=CounterStore(tmp_path / "c.json", "front"))
    for raw in (first, second):
        with pytest.raises(VerifyError, match="replayed or reordered"):
            v2.verify(raw)
    with pytest.raises(VerifyError, match="belongs to door 'front'"):
        CounterStore(tmp_path / "c.json", "back")


def test_signing_counter_keeps_increasing_across_a_pipeline_restart():
    from pipeline.analyze.doors import signing

    first = sign_event(decision_event(), "front", KEY.encode()).data["signature"]["counter"]
    burst = [signing.next_counter("front") for _ in range(1000)]
    assert burst == sorted(set(burst)) and burst[0] > first  # strictly increasing, even within 1 us
    signing._counters.clear()  # what a restarted pipeline process starts with
    time.sleep(0.01)  # a restart takes far longer than a burst's lead over the clock (1 us per event)
    again = sign_event(decision_event(), "front", KEY.encode()).data["signature"]["counter"]
    assert again > burst[-1] > first
