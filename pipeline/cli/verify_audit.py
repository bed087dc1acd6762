"""``faces verify-audit``: check a door audit log's whole history against its key and every checkpoint found;
``faces audit-reset``: an operator's audited reset of a door's log (the only way to start a new chain).

Checkpoints come from the side file the writer keeps (``<log>.checkpoints``) and, with ``--redis``, from the
``audit.checkpoint`` events in the stream ``{prefix}:stream:audit``: an attacker who cut or deleted the log and
its side file on the host cannot reach those. The checkpoints are one numbered, keyed chain across every
generation of the log, so a gap or a restarted chain fails, and so does an archived generation that is gone.
"""

from __future__ import annotations

import getpass
import logging
import os
import sys
from pathlib import Path
from typing import Any

from pipeline.analyze.doors.audit import AuditError, audit_key, checkpoints_path, verify_history
from pipeline.analyze.doors.audit_remote import (
    RemoteError,
    audit_stream,
    fetch_checkpoints,
    publish_checkpoint,
    read_stream,
)
from pipeline.core.sources import redact_url

log = logging.getLogger("pipeline.audit")


def redis_checkpoints(url: str, prefix: str, log_name: str) -> list[dict[str, Any]]:
    """Every ``audit.checkpoint`` for logs named ``log_name`` in the audit stream, newest first."""
    return read_stream(url, prefix, log_name)[::-1]


def verify_audit(path: str, redis_url: str | None, prefix: str) -> int:
    """Prints one line saying intact or where the history is broken (then notes); returns the exit code
    (0 intact, 1 broken, 2 cannot check: no key, Redis unreachable)."""
    try:
        key = audit_key()
    except AuditError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    remote: list[dict[str, Any]] = []
    others: set[str] = set()
    if redis_url:
        try:
            remote = fetch_checkpoints(redis_url, prefix, path)
            named = read_stream(redis_url, prefix, Path(path).name) if not remote else []
        except RemoteError as exc:
            print(f"error: cannot read checkpoints from {redact_url(redis_url)}: {exc}", file=sys.stderr)
            return 2
        others = {str(cp.get("path")) for cp in named if cp.get("path")}
    rep = verify_history(path, key, remote)
    hist = rep.history
    sources = [f"{hist.side} in {checkpoints_path(path)}"]
    if redis_url:
        sources.append(f"{hist.remote} in Redis {audit_stream(prefix)}")
    newest = max((int(cp["lines"]) for cp in hist.of_generation(hist.gen)), default=0)
    if not rep.problems:
        print(
            f"{path}: {rep.entries} entries, chain intact; generation {hist.gen}, "
            f"{len(hist.chain)} chained checkpoint(s); checkpoints {', '.join(sources)}, newest covers {newest}"
        )
    else:
        print(f"{path}: BROKEN: {rep.problems[0]}")
        for problem in rep.problems[1:]:
            print(f"  also: {problem}")
    for note in rep.notes:
        print(f"  note: {note}")
    if others:
        print(
            f"  note: Redis holds no checkpoint for this path, but some for logs of the same name at "
            f"{sorted(others)} (verify on the host that writes it, or a copy at that path)"
        )
    return 1 if rep.problems else 0


def audit_reset(
    path: Path, door_id: str, reason: str, redis_url: str | None, prefix: str, maxlen: int
) -> int:
    """``faces audit-reset``: archive what is left of ``path`` and start its next generation, recorded in the
    keyed history (and Redis when configured: unreachable is exit 2, nothing changed)."""
    from pipeline.analyze.doors.audit_reset import reset_log

    try:
        key = audit_key()
    except AuditError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    remote: list[dict[str, Any]] = []
    if redis_url:
        try:
            remote = fetch_checkpoints(redis_url, prefix, path)
        except RemoteError as exc:
            print(
                f"error: cannot read the history of {path} from {redact_url(redis_url)} ({exc}); nothing "
                "was changed (a reset must see the whole history)",
                file=sys.stderr,
            )
            return 2
    by = os.environ.get("SUDO_USER") or getpass.getuser()
    try:
        res = reset_log(path, key, by=by, reason=reason, remote=remote)
    except AuditError as exc:
        print(f"error: door {door_id}: {exc}", file=sys.stderr)
        return 1
    cp = res.checkpoint
    log.warning(
        "AUDIT RESET of door %s log %s by %s: %r; generation %d (%s%s) closed, generation %d started",
        door_id,
        path,
        by,
        reason,
        res.prior_gen,
        res.prior_log,
        f": {res.problem}" if res.problem else "",
        cp["gen"],
    )
    print(
        f"AUDIT RESET: door {door_id}, {path}: generation {res.prior_gen} closed ({res.prior_log}"
        + (f", archived as {res.archived_as}" if res.archived_as else "")
        + f"); generation {cp['gen']} started by {by!r}: {reason!r} (checkpoint {cp['cseq']})"
    )
    if redis_url:
        try:
            publish_checkpoint(redis_url, prefix, cp, f"audit-reset:{door_id}", maxlen)
        except RemoteError as exc:
            print(
                f"error: the reset is recorded in {checkpoints_path(path)} but not in Redis ({exc}); "
                f"publish it before the pipeline starts, or verify-audit --redis will show a gap",
                file=sys.stderr,
            )
            return 1
    return 0
