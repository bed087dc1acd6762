"""The second factor against someone who can publish to Redis but holds no reader's key: every attack on a
real redis-server, through the real listener (and the reader CLI for what an integrator sends)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.analyze.doors.reader_messages import DoorReaders, sign_reader_message
from pipeline.analyze.doors.second_factor import SecondFactorListener, door_readers
from pipeline.config.doors import DoorConfig

FRONT_KEY = b"front-badge-reader-key-0123"
BACK_KEY = b"back-badge-reader-key-45678"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def listener(redis_server):
    readers = {
        "front": DoorReaders({"badge-front": FRONT_KEY}),
        "back": DoorReaders({"badge-back": BACK_KEY}),
    }
    lst = SecondFactorListener(redis_server.url, ["badges"], readers)
    yield lst
    lst.close()


def settle(lst: SecondFactorListener, n_events: int, timeout: float = 5.0) -> None:
    """Wait until the listener has taken ``n_events`` messages (accepted or refused)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(lst.refused.values()) + len(lst._events) >= n_events:
            return
        time.sleep(0.05)


def accepted(lst: SecondFactorListener, person: str = "alice", door_id: str = "front") -> bool:
    now = time.time()
    return lst.check(door_id, person, now - 30, now + 1)


def test_each_attack_is_refused_and_counted(listener, redis_client):
    good = sign_reader_message(FRONT_KEY, "badge-front", "front", "alice")
    attacks = {
        "unsigned": {"door_id": "front", "person": "alice"},  # what was accepted before: plain JSON
        "forged": sign_reader_message(b"attacker-guessed-key-000000", "badge-front", "front", "alice"),
        "edited": {**good, "person": "mallory"},
        "stale": sign_reader_message(FRONT_KEY, "badge-front", "front", "alice", now=time.time() - 30),
        "future": sign_reader_message(FRONT_KEY, "badge-front", "front", "alice", now=time.time() + 30),
        "unknown reader": sign_reader_message(FRONT_KEY, "badge-lobby", "front", "alice"),
        # the back door's reader (key and all) cannot give the front door its second factor
        "other door": sign_reader_message(BACK_KEY, "badge-back", "front", "alice"),
        # captured before this listener started (a pipeline restart empties the nonce cache)
        "pre-start": sign_reader_message(FRONT_KEY, "badge-front", "front", "alice", now=listener.verifier.not_before - 1),
    }  # fmt: skip
    for msg in attacks.values():
        redis_client.publish("badges", json.dumps(msg))
    settle(listener, len(attacks))
    assert not accepted(listener), "an attack message was accepted"
    assert listener.refused == {
        "unsigned": 1, "bad signature": 2, "stale": 1, "future": 1, "unknown reader": 1, "other door": 1,
        "replayed": 1,
    }  # fmt: skip

    # the genuine message is taken once; the same bytes replayed are refused
    redis_client.publish("badges", json.dumps(good))
    redis_client.publish("badges", json.dumps(good))
    settle(listener, len(attacks) + 2)
    assert listener.refused["replayed"] == 2
    assert accepted(listener) and not accepted(listener)


def test_a_badge_for_one_person_does_not_serve_another(listener, redis_client):
    redis_client.publish("badges", json.dumps(sign_reader_message(FRONT_KEY, "badge-front", "front", "bob")))
    settle(listener, 1)
    assert not accepted(listener, "alice") and accepted(listener, "bob")


def test_reader_cli_signs_and_publishes_what_the_listener_accepts(listener, redis_server, tmp_path):
    key_file = tmp_path / "reader.key"
    key_file.write_text(FRONT_KEY.decode() + "\n")
    cmd = [sys.executable, "-m", "pipeline.doors.reader", "--reader", "badge-front", "--door", "front",
           "--person", "alice", "--key-file", str(key_file), "--publish", redis_server.url, "--channel", "badges"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    msg = json.loads(r.stdout)
    assert set(msg) == {"v", "reader", "door_id", "person", "ts", "nonce", "mac"} and "1 listener" in r.stderr
    settle(listener, 1)
    assert accepted(listener) and listener.refused == {}

    env = {**os.environ, "RK": "short"}
    cmd = [
        sys.executable,
        "-m",
        "pipeline.doors.reader",
        "--reader",
        "r",
        "--door",
        "front",
        "--key-env",
        "RK",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert r.returncode == 2 and "at least 16 characters" in r.stderr


def test_a_second_factor_door_needs_reader_keys(monkeypatch, tmp_path):
    base = {"id": "front", "cameras": ["cam1"], "secret": "s" * 32}
    no_readers = DoorConfig.model_validate({**base, "second_factor": {"channel": "badges"}})
    with pytest.raises(ValueError, match="door 'front': second_factor.readers is empty"):
        door_readers([no_readers])
    d = DoorConfig.model_validate(
        {**base, "second_factor": {"channel": "badges", "readers": {"badge-1": {"secret_env": "RDR_KEY"}}}}
    )
    monkeypatch.delenv("RDR_KEY", raising=False)
    with pytest.raises(ValueError, match="door 'front' reader 'badge-1': environment variable RDR_KEY"):
        door_readers([d])
    monkeypatch.setenv("RDR_KEY", "r" * 20)
    assert door_readers([d])["front"].keys == {"badge-1": b"r" * 20}
    f = tmp_path / "k"
    f.write_text("x" * 20)
    d = DoorConfig.model_validate(
        {
            **base,
            "second_factor": {"channel": "b", "readers": {"pin-1": {"secret_file": str(f)}}, "max_age_s": 3},
        }
    )
    readers = door_readers([d])["front"]
    assert readers.keys == {"pin-1": b"x" * 20} and readers.max_age_s == 3
    with pytest.raises(ValueError, match="exactly one of secret_env or secret_file"):
        DoorConfig.model_validate({**base, "second_factor": {"channel": "b", "readers": {"r": {}}}})
