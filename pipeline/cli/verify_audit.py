"""``faces verify-audit``: check a door audit log against its key and every checkpoint that can be found.

Checkpoints come from the side file the writer keeps (``<log>.checkpoints``) and, with ``--redis``, from the
``audit.checkpoint`` events in the stream ``{prefix}:stream:audit``: an attacker who cut the newest lines off
the log and its side file on the host cannot reach those. A log with entries but no checkpoint anywhere is
a failure too (the writer signs one after every append, so they were removed).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, cast

import redis

from pipeline.analyze.doors.audit import (
    CHECKPOINT_EVENT,
    AuditError,
    audit_key,
    checkpoints_path,
    iter_checkpoints,
    verify_log,
)
from pipeline.core.events import Event
from pipeline.core.sources import redact_url
from pipeline.deliver.redis_transport import stream_for

_SCAN = 1000  # stream entries read per round trip, newest first


def redis_checkpoints(url: str, prefix: str, log_name: str, limit: int = 100_000) -> list[dict[str, Any]]:
    """The newest ``audit.checkpoint`` for ``log_name`` in the audit stream (a list of 0 or 1). Only the
    newest is needed: it covers the most lines, and the chain below it is checked line by line."""
    client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=10)
    stream = stream_for(prefix, CHECKPOINT_EVENT.split(".")[0])
    end, seen = "+", 0
    try:
        while seen < limit:
            rows = cast(
                "list[tuple[str, dict[str, str]]]", client.xrevrange(stream, max=end, min="-", count=_SCAN)
            )
            for _entry_id, fields in rows:
                try:
                    event = Event.from_json(fields["event"])
                except (KeyError, ValueError):
                    continue
                if event.type == CHECKPOINT_EVENT and event.data.get("log") == log_name:
                    return [event.data]
            if len(rows) < _SCAN:
                return []
            seen += len(rows)
            end = "(" + rows[-1][0]
    finally:
        client.close()
    return []


def verify_audit(path: str, redis_url: str | None, prefix: str) -> int:
    """Prints one line saying intact or where the log is broken; returns the exit code (0 intact, 1 broken,
    2 cannot check: no key, Redis unreachable)."""
    try:
        key = audit_key()
    except AuditError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    remote: list[dict[str, Any]] = []
    if redis_url:
        try:
            remote = redis_checkpoints(redis_url, prefix, Path(path).name)
        except redis.RedisError as exc:
            print(f"error: cannot read checkpoints from {redact_url(redis_url)}: {exc}", file=sys.stderr)
            return 2
    seen = {"side": 0, "newest": 0}
    ok, n, _, problem = verify_log(path, key, _tally(iter_checkpoints(path), remote, seen))
    sources = [f"{seen['side']} in {checkpoints_path(path)}"]
    if redis_url:
        sources.append(f"{len(remote)} in Redis {stream_for(prefix, 'audit')}")
    if ok and n and not seen["side"] + len(remote):
        ok, problem = False, f"no checkpoint found ({', '.join(sources)}) although the log has {n} entries"
    if ok:
        print(
            f"{path}: {n} entries, chain intact; checkpoints {', '.join(sources)}, newest covers {seen['newest']}"
        )
        return 0
    print(f"{path}: BROKEN: {problem}")
    return 1


def _tally(
    side: Iterable[dict[str, Any]], remote: list[dict[str, Any]], seen: dict[str, int]
) -> Iterator[dict[str, Any]]:
    """The side file's checkpoints then Redis's, counting the former and the most lines any covers."""
    for cp in side:
        seen["side"] += 1
        _newest(cp, seen)
        yield cp
    for cp in remote:
        _newest(cp, seen)
        yield cp


def _newest(cp: dict[str, Any], seen: dict[str, int]) -> None:
    lines = cp.get("lines")
    if isinstance(lines, int):
        seen["newest"] = max(seen["newest"], lines)
