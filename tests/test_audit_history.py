"""The door audit log's whole history against an attacker who can delete the host's files (log, side file,
archived generations) but cannot read the audit key nor reach Redis: every case through the real CLI
(``faces verify-audit``, ``faces audit-reset``, a pipeline run) with a real redis-server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.analyze.doors.audit import CHECKPOINT_EVENT, AuditLog, checkpoints_path
from pipeline.analyze.doors.audit_history import generation_path
from pipeline.config.schema import RedisConfig
from pipeline.core.events import Event
from pipeline.deliver.publisher import Publisher

AUDIT_KEY = "audit-key-for-the-history-tests-0123"
ROOT = Path(__file__).resolve().parents[1]
PREFIX = "vp"


def cli(*args: str, cwd: Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDPIPE_AUDIT_KEY")}
    env["VIDPIPE_AUDIT_KEY"] = AUDIT_KEY
    cmd = [sys.executable, str(ROOT / "run_pipeline.py"), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)


def verify(path: Path, redis_url: str | None = None) -> subprocess.CompletedProcess[str]:
    extra = ["--redis", redis_url, "--prefix", PREFIX] if redis_url else []
    return cli("faces", "verify-audit", str(path), *extra)


def write_entries(path: Path, n: int, redis_url: str | None, tmp_path: Path, tag: str = "") -> list[dict]:
    """``n`` entries by the real writer, its checkpoints published through the real publisher as the face
    analyzer does (when ``redis_url``); returns the checkpoints."""
    log = AuditLog(path, AUDIT_KEY.encode())
    cps = []
    for i in range(n):
        log.append(
            {"type": "doors.decision", "data": {"door_id": "front", "decision": "denied", "i": f"{tag}{i}"}}
        )
        assert log.last_checkpoint is not None
        cps.append(log.last_checkpoint)
    log.close()
    if redis_url:
        pub = Publisher(
            RedisConfig(prefix=PREFIX, spool_path=str(tmp_path / f"spool{tag}.sqlite")), url=redis_url
        )
        pub.start()
        for cp in cps:
            pub.publish_event(Event(type=CHECKPOINT_EVENT, camera_id="cam1", data=cp))
        pub.stop()
        pub.join(10)
    return cps


def delete_log_and_side_file(path: Path) -> None:
    path.unlink()
    checkpoints_path(path).unlink()


def test_deleted_log_and_checkpoints_then_a_new_chain_is_caught_by_redis(redis_server, tmp_path):
    """The attack of issue 18: delete the log with its .checkpoints; a writer that cannot see Redis (down
    at the restart) starts a new chain. Before: `verify-audit --redis` compared only the newest checkpoint
    in Redis, which was the new chain's, and said "intact"."""
    path = tmp_path / "doors_audit.jsonl"
    write_entries(path, 4, redis_server.url, tmp_path)
    assert verify(path, redis_server.url).returncode == 0

    delete_log_and_side_file(path)
    r = verify(path, redis_server.url)  # the Redis history shows a log that is gone
    assert r.returncode == 1 and "no such file, but its checkpoints show 4 entries" in r.stdout, r.stdout

    write_entries(path, 2, redis_server.url, tmp_path, tag="b")  # a new chain over the deleted one
    assert verify(path).returncode == 0  # the host's files alone look like a fresh install ...
    r = verify(path, redis_server.url)  # ... the history in Redis does not
    assert r.returncode == 1, r.stdout
    assert "restarted chain: two different checkpoints numbered 1" in r.stdout, r.stdout
    assert "log deleted together with its .checkpoints" in r.stdout


def test_redis_history_with_a_gap_fails(redis_server, tmp_path):
    """Checkpoints dropped from the middle of the history (side file rewritten, Redis missing some)."""
    path = tmp_path / "doors_audit.jsonl"
    cps = write_entries(path, 5, None, tmp_path)
    side = checkpoints_path(path)
    lines = side.read_text().splitlines()
    side.write_text("\n".join(lines[:2] + lines[3:]) + "\n")  # checkpoint 3 removed
    r = verify(path)
    assert r.returncode == 1 and "checkpoints 3-3 missing" in r.stdout, r.stdout
    assert cps[2]["cseq"] == 3


def _door_config(tmp_path: Path, redis_url: str, clip: Path | None = None) -> Path:
    data = {
        "cameras": [{"id": "cam1", "source": str(clip or tmp_path / "none.mp4")}],
        "detector": {"model": "none"},
        "redis": {"url": redis_url, "prefix": PREFIX, "spool_path": str(tmp_path / "spool.sqlite")},
        "faces": {"enabled": True, "unknown_crops": {"cooldown_s": 0}},
        "doors": [
            {
                "id": "front",
                "cameras": ["cam1"],
                "allow_people": ["eileen"],
                "secret": "s" * 32,
                "liveness": "off",
                "audit_log": str(tmp_path / "doors_audit.jsonl"),
            }
        ],
    }
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(data))
    return cfg


def reset(cfg: Path, reason: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return cli("faces", "--config", str(cfg), "audit-reset", "--door", "front", "--reason", reason, *extra)


def test_deleted_middle_generation_fails(redis_server, tmp_path):
    """Three generations (two audited resets); the archived middle one deleted: verify-audit names it, with
    and without Redis (the side file's chain still lists its checkpoints)."""
    path = tmp_path / "doors_audit.jsonl"
    cfg = _door_config(tmp_path, redis_server.url)
    write_entries(path, 3, redis_server.url, tmp_path, tag="g1")
    r = reset(cfg, "yearly rotation")
    assert r.returncode == 0 and "AUDIT RESET" in r.stdout, r.stdout + r.stderr
    write_entries(path, 2, redis_server.url, tmp_path, tag="g2")
    r = reset(cfg, "yearly rotation 2")
    assert r.returncode == 0, r.stdout + r.stderr
    write_entries(path, 2, redis_server.url, tmp_path, tag="g3")
    assert generation_path(path, 1).is_file() and generation_path(path, 2).is_file()
    r = verify(path, redis_server.url)
    assert r.returncode == 0 and "generation 3" in r.stdout, r.stdout

    generation_path(path, 2).unlink()
    for url in (None, redis_server.url):
        r = verify(path, url)
        assert r.returncode == 1, r.stdout
        assert "generation 2 (doors_audit.jsonl.gen2)" in r.stdout and "no such file" in r.stdout, r.stdout
        assert "3 entries" in r.stdout  # what the checkpoints say it held (reset entry + 2)


def test_pipeline_refuses_a_new_chain_over_a_deleted_log_until_an_audited_reset(
    redis_server, demo_mp4, tmp_path
):
    path = tmp_path / "doors_audit.jsonl"
    cfg = _door_config(tmp_path, redis_server.url, demo_mp4.path)
    write_entries(path, 4, redis_server.url, tmp_path)
    delete_log_and_side_file(path)

    run = cli("--config", str(cfg), "--no-web", "--var-dir", str(tmp_path / "var"), cwd=tmp_path, timeout=300)
    assert run.returncode != 0, run.stderr[-3000:]
    assert "is missing, but its checkpoints" in run.stderr and "4 entries" in run.stderr, run.stderr[-3000:]
    assert "faces audit-reset" in run.stderr
    assert not path.exists()  # no new chain was started

    r = reset(cfg, "")  # an empty reason is refused
    assert r.returncode != 0 and not path.exists()
    r = reset(cfg, "disk replaced, ticket 4711")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "generation 1 closed (missing)" in r.stdout and "AUDIT RESET of door front" in r.stderr
    first = json.loads(path.read_text().splitlines()[0])["record"]
    assert first["type"] == "audit.reset" and first["reason"] == "disk replaced, ticket 4711"
    assert first["prior_log"] == "missing" and first["prior_gen"] == 1 and first["by"]

    run = cli("--config", str(cfg), "--no-web", "--var-dir", str(tmp_path / "var"), cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    r = verify(path, redis_server.url)
    assert r.returncode == 0, r.stdout
    assert "generation 2" in r.stdout and "generation 1: missing when an operator reset it" in r.stdout
    assert "disk replaced, ticket 4711" in r.stdout

    # the reset is in the chain: dropping it (or the history before it) from the host is still caught
    delete_log_and_side_file(path)
    r = verify(path, redis_server.url)
    assert r.returncode == 1 and "no such file" in r.stdout, r.stdout


def test_reset_refuses_a_forked_history(redis_server, tmp_path):
    """A restarted chain is evidence: the reset does not paper over it."""
    path = tmp_path / "doors_audit.jsonl"
    cfg = _door_config(tmp_path, redis_server.url)
    write_entries(path, 2, redis_server.url, tmp_path)
    delete_log_and_side_file(path)
    write_entries(path, 1, redis_server.url, tmp_path, tag="b")
    r = reset(cfg, "cover up")
    assert r.returncode == 1 and "restarted chain" in r.stderr, r.stdout + r.stderr
    assert not generation_path(path, 1).exists()


@pytest.mark.parametrize("where", ["side", "redis"])
def test_writer_continues_the_history_across_restarts(redis_server, tmp_path, where):
    """No false alarm: a writer re-opened (pipeline restart) continues the numbering."""
    path = tmp_path / "doors_audit.jsonl"
    write_entries(path, 2, redis_server.url if where == "redis" else None, tmp_path)
    cps = write_entries(path, 2, redis_server.url if where == "redis" else None, tmp_path, tag="b")
    assert [cp["cseq"] for cp in cps] == [3, 4] and cps[0]["lines"] == 3
    r = verify(path, redis_server.url if where == "redis" else None)
    assert r.returncode == 0 and "4 entries, chain intact" in r.stdout, r.stdout


def test_a_log_deleted_while_written_is_reported(tmp_path, caplog):
    path = tmp_path / "doors_audit.jsonl"
    log = AuditLog(path, AUDIT_KEY.encode())
    log.append({"type": "doors.decision", "i": 1})
    delete_log_and_side_file(path)
    with caplog.at_level("ERROR"):
        log.append({"type": "doors.decision", "i": 2})
        log.append({"type": "doors.decision", "i": 3})
    log.close()
    assert caplog.text.count("was DELETED while the pipeline writes it") == 1
    assert log.last_checkpoint is not None and log.last_checkpoint["cseq"] == 3  # the history goes on


def test_logs_with_old_format_checkpoints_go_on_and_still_verify(tmp_path):
    """A log written before the checkpoint chain (checkpoints without cseq) continues after the upgrade."""
    from pipeline.analyze.doors.audit_history import checkpoint_mac

    path = tmp_path / "doors_audit.jsonl"
    cps = write_entries(path, 3, None, tmp_path)
    legacy = []
    for cp in cps:  # what the previous writer kept: {log, lines, head, time, mac}
        old = {k: cp[k] for k in ("log", "lines", "head", "time")}
        legacy.append(json.dumps({**old, "mac": checkpoint_mac(AUDIT_KEY.encode(), old)}))
    checkpoints_path(path).write_text("\n".join(legacy) + "\n")
    assert verify(path).returncode == 0
    new = write_entries(path, 2, None, tmp_path, tag="new")
    assert [cp["cseq"] for cp in new] == [1, 2] and new[-1]["lines"] == 5
    r = verify(path)
    assert r.returncode == 0 and "5 entries, chain intact" in r.stdout, r.stdout
    path.write_text("\n".join(path.read_text().splitlines()[:4]) + "\n")  # cut: still caught
    r = verify(path)
    assert r.returncode == 1 and "truncated log" in r.stdout, r.stdout
