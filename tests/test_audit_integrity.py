"""The door audit log against an attacker who can edit the host's files but not read the audit key: every
case goes through the real ``faces verify-audit`` CLI, and the off-host checkpoints through the real
publisher and redis-server."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.analyze.doors.audit import CHECKPOINT_EVENT, AuditError, AuditLog, checkpoints_path
from pipeline.analyze.doors.signing import canonical, sign_event
from pipeline.config.schema import RedisConfig
from pipeline.core.events import Event
from pipeline.deliver.publisher import Publisher

AUDIT_KEY = "audit-key-for-these-tests-0123"
DOOR_KEY = "d" * 32
ROOT = Path(__file__).resolve().parents[1]


def verify(path: Path, *extra: str, key: str | None = AUDIT_KEY) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDPIPE_AUDIT_KEY")}
    if key is not None:
        env["VIDPIPE_AUDIT_KEY"] = key
    cmd = [sys.executable, str(ROOT / "run_pipeline.py"), "faces", "verify-audit", str(path), *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)


def decision(i: int, verdict: str = "denied") -> dict:
    data = {"door_id": "front", "decision": verdict, "person": "alice", "distance": 0.3, "frames": 3,
            "reason": f"case {i}"}  # fmt: skip
    ev = Event(type="doors.decision", camera_id="cam1", ts=1.0e9 + i, frame_seq=i, data=data)
    return sign_event(ev, "front", DOOR_KEY.encode()).model_dump(mode="json")


@pytest.fixture
def audit(tmp_path) -> tuple[Path, list[dict]]:
    """A 4-entry log written by the real writer; returns its path and the checkpoints it signed."""
    path = tmp_path / "doors_audit.jsonl"
    log = AuditLog(path, AUDIT_KEY.encode())
    cps = []
    for i, verdict in enumerate(["denied", "granted", "unknown", "denied"]):
        log.append(decision(i, verdict))
        assert log.last_checkpoint is not None
        cps.append(log.last_checkpoint)
    log.close()
    return path, cps


def test_intact_log_passes_and_names_its_checkpoints(audit):
    path, _ = audit
    r = verify(path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4 entries, chain intact" in r.stdout and "newest covers 4" in r.stdout
    assert AUDIT_KEY not in r.stdout + r.stderr


def test_missing_file_fails(tmp_path):
    r = verify(tmp_path / "nope.jsonl")
    assert r.returncode == 1 and "BROKEN" in r.stdout and "no such file" in r.stdout


def test_no_key_cannot_verify(audit):
    r = verify(audit[0], key=None)
    assert r.returncode == 2 and "VIDPIPE_AUDIT_KEY" in r.stderr


def test_wrong_key_fails(audit):
    r = verify(audit[0], key="some-other-audit-key-000")
    assert r.returncode == 1 and "wrong audit key" in r.stdout


def test_edited_line_fails_at_that_line(audit):
    path, _ = audit
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace('"granted"', '"denied"')
    path.write_text("\n".join(lines) + "\n")
    r = verify(path)
    assert r.returncode == 1 and "line 2: MAC does not match" in r.stdout, r.stdout


def _rechain_without_key(rows: list[dict]) -> list[str]:
    """What an attacker without the key can do best: renumber and re-hash with plain SHA-256 (the old,
    unkeyed scheme) or any key of their own."""
    out, prev = [], "0" * 64
    for seq, row in enumerate(rows, 1):
        h = hashlib.sha256(prev.encode() + canonical(row["record"]) + str(seq).encode()).hexdigest()
        out.append(json.dumps({"seq": seq, "prev": prev, "record": row["record"], "hash": h}, sort_keys=True))
        prev = h
    return out


def test_deleted_line_fails_even_when_rechained(audit):
    path, _ = audit
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    path.write_text("\n".join(json.dumps(r) for r in rows[:1] + rows[2:]) + "\n")
    r = verify(path)
    assert r.returncode == 1 and "line 2: entry 3 where 2 was expected" in r.stdout, r.stdout
    path.write_text("\n".join(_rechain_without_key(rows[:1] + rows[2:])) + "\n")
    r = verify(path)
    assert r.returncode == 1 and "line 1: MAC does not match" in r.stdout, r.stdout


def test_forged_append_fails(audit):
    path, _ = audit
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    forged = {"seq": 5, "prev": rows[-1]["hash"], "record": decision(9, "granted")}
    forged["hash"] = hashlib.sha256(forged["prev"].encode() + canonical(forged["record"]) + b"5").hexdigest()
    with open(path, "a") as fh:
        fh.write(json.dumps(forged, sort_keys=True) + "\n")
    r = verify(path)
    assert r.returncode == 1 and "line 5: MAC does not match" in r.stdout, r.stdout


def test_truncation_past_a_checkpoint_fails(audit):
    path, _ = audit
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2]) + "\n")
    r = verify(path)
    assert r.returncode == 1 and "line 3: missing" in r.stdout and "truncated log" in r.stdout, r.stdout
    # the writer refuses to continue a truncated log instead of re-growing it over the gap
    with pytest.raises(AuditError, match="truncated"):
        AuditLog(path, AUDIT_KEY.encode())


def test_truncating_log_and_side_file_is_caught_by_the_redis_checkpoints(audit, redis_server, tmp_path):
    path, cps = audit
    pub = Publisher(RedisConfig(prefix="vp", spool_path=str(tmp_path / "spool.sqlite")), url=redis_server.url)
    pub.start()
    for cp in cps:  # as the face analyzer emits them, one per audited decision
        pub.publish_event(Event(type=CHECKPOINT_EVENT, camera_id="cam1", data=cp))
    pub.stop()
    pub.join(10)
    r = verify(path, "--redis", redis_server.url, "--prefix", "vp")
    # every checkpoint in Redis is read: the whole history, not only the newest
    assert r.returncode == 0 and "4 in Redis vp:stream:audit" in r.stdout, r.stdout + r.stderr

    # the attacker cuts the newest entry off the log AND its local checkpoints
    path.write_text("\n".join(path.read_text().splitlines()[:3]) + "\n")
    side = checkpoints_path(path)
    side.write_text("\n".join(side.read_text().splitlines()[:3]) + "\n")
    assert verify(path).returncode == 0  # the host's files alone agree with each other ...
    r = verify(path, "--redis", redis_server.url, "--prefix", "vp")
    assert r.returncode == 1 and "line 4: missing" in r.stdout, r.stdout  # ... Redis does not

    # deleting the side file altogether is a failure by itself
    side.unlink()
    r = verify(path)
    assert r.returncode == 1 and "no checkpoint found" in r.stdout, r.stdout


def test_forged_checkpoint_fails(audit):
    path, cps = audit
    side = checkpoints_path(path)
    fake = {**cps[-1], "lines": 2, "head": cps[1]["head"]}
    side.write_text(json.dumps(fake) + "\n")
    r = verify(path)
    assert r.returncode == 1 and "checkpoint 1: bad MAC" in r.stdout, r.stdout


def test_log_rewritten_with_the_key_still_disagrees_with_its_checkpoints(audit):
    """Even someone holding the audit key who edits and re-chains the log cannot match the checkpoints
    already signed (and published) over the original lines."""
    import hmac as _hmac

    path, _ = audit
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    rows[1]["record"]["data"]["decision"] = "denied"
    prev, lines = "0" * 64, []
    for seq, row in enumerate(rows, 1):
        msg = prev.encode() + canonical(row["record"]) + str(seq).encode()
        h = _hmac.new(AUDIT_KEY.encode(), msg, hashlib.sha256).hexdigest()
        lines.append(
            json.dumps({"seq": seq, "prev": prev, "record": row["record"], "hash": h}, sort_keys=True)
        )
        prev = h
    path.write_text("\n".join(lines) + "\n")
    r = verify(path)
    assert r.returncode == 1 and "line 4: differs from the checkpoint" in r.stdout, r.stdout


def test_key_from_a_file(audit, tmp_path):
    key_file = tmp_path / "audit.key"
    key_file.write_text(AUDIT_KEY + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDPIPE_AUDIT_KEY")}
    env["VIDPIPE_AUDIT_KEY_FILE"] = str(key_file)
    cmd = [sys.executable, str(ROOT / "run_pipeline.py"), "faces", "verify-audit", str(audit[0])]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0 and "chain intact" in r.stdout, r.stdout + r.stderr
    env["VIDPIPE_AUDIT_KEY_FILE"] = str(tmp_path / "missing.key")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2 and "missing.key" in r.stderr
