"""The off-host copy of a door audit log's checkpoint history: ``audit.checkpoint`` events in Redis.

The face analyzer publishes every checkpoint through the pipeline's publisher (stream
``{prefix}:stream:audit``, spooled while Redis is down). This module reads that history back (for the writer
at start and for ``faces verify-audit``) and adds the one checkpoint an audited reset signs outside a run.
Streams are trimmed (``redis.stream_maxlen``), so Redis may hold only the newest part of a long history;
the side file beside the log holds all of it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import redis

from pipeline.analyze.doors.audit_history import CHECKPOINT_EVENT
from pipeline.core.events import Event

_SCAN = 1000  # stream entries read per round trip


class RemoteError(Exception):
    """Redis could not be read or written."""


def audit_stream(prefix: str) -> str:
    return f"{prefix}:stream:audit"


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=10, socket_connect_timeout=5)


def read_stream(url: str, prefix: str, log_name: str, limit: int = 1_000_000) -> list[dict[str, Any]]:
    """Every checkpoint of logs named ``log_name`` in the audit stream, oldest first (whatever path)."""
    client = _client(url)
    out: list[dict[str, Any]] = []
    start, seen = "-", 0
    try:
        while seen < limit:
            rows = cast(
                "list[tuple[str, dict[str, str]]]",
                client.xrange(audit_stream(prefix), min=start, max="+", count=_SCAN),
            )
            for _entry_id, fields in rows:
                try:
                    event = Event.from_json(fields["event"])
                except (KeyError, ValueError):
                    continue
                if event.type == CHECKPOINT_EVENT and event.data.get("log") == log_name:
                    out.append(event.data)
            if len(rows) < _SCAN:
                break
            seen += len(rows)
            start = "(" + rows[-1][0]
    except redis.RedisError as exc:
        raise RemoteError(str(exc)) from None
    finally:
        client.close()
    return out


def for_path(cps: list[dict[str, Any]], path: str | Path) -> list[dict[str, Any]]:
    """The checkpoints written for the log at ``path`` (and old ones that name no path)."""
    where = str(Path(path).resolve())
    return [cp for cp in cps if cp.get("path", where) == where]


def fetch_checkpoints(url: str, prefix: str, path: str | Path) -> list[dict[str, Any]]:
    """The history Redis holds for the log at ``path``, oldest first."""
    return for_path(read_stream(url, prefix, Path(path).name), path)


def publish_checkpoint(url: str, prefix: str, cp: dict[str, Any], camera_id: str, maxlen: int) -> None:
    """Adds one checkpoint to the audit stream (and its pub/sub channel), as the publisher would."""
    event = Event(type=CHECKPOINT_EVENT, camera_id=camera_id, data=json.loads(json.dumps(cp)))
    raw = event.to_json()
    client = _client(url)
    try:
        client.xadd(
            audit_stream(prefix),
            {"event": raw, "type": event.type, "camera": camera_id, "event_id": event.event_id},
            maxlen=maxlen,
            approximate=True,
        )
        client.publish(f"{prefix}:audit:{camera_id}", raw)
    except redis.RedisError as exc:
        raise RemoteError(str(exc)) from None
    finally:
        client.close()
