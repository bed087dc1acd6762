"""Per-door lock-down: while a door is locked down it grants nobody, whatever the faces say.

The state is a small JSON file (``doors_lockdown.json`` beside the door audit log) so that the web app, the
CLI and the decision path agree across threads and processes. The decision path asks ``is_locked`` before
it signs a grant and fails closed: a file that exists but cannot be read or parsed counts as *every door
locked*. Each change is appended to the door's audit chain (``doors.lockdown`` records), so who locked or
unlocked a door, and when, is as tamper-evident as the decisions themselves.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.analyze.doors.audit import open_audit_log

FILE_NAME = "doors_lockdown.json"


def lockdown_path(audit_log: str | Path) -> Path:
    """Where the lock-down state of the doors auditing into ``audit_log`` lives."""
    return Path(audit_log).with_name(FILE_NAME)


class LockdownError(Exception):
    """The lock-down state could not be read (the caller fails closed) or written."""


class Lockdown:
    """Reads and writes the lock-down file. Read afresh on every question: it is asked once per grant (and
    per web request), and a cache keyed by the file's mtime could miss a change made in the same clock
    tick (file timestamps are coarse) and let a locked-down door grant."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise LockdownError(f"{self.path}: unreadable lock-down state ({exc})") from None
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise LockdownError(f"{self.path}: expected an object of door id -> state")
        return data

    def is_locked(self, door_id: str) -> bool:
        """True while ``door_id`` is locked down, and also when the state cannot be read (fail closed)."""
        try:
            return bool(self._read().get(door_id, {}).get("locked", False))
        except LockdownError:
            return True

    def states(self) -> dict[str, dict[str, Any]]:
        """door id -> {locked, by, reason, ts}; raises LockdownError when the file is damaged."""
        return self._read()

    def set(self, door_id: str, locked: bool, *, by: str, reason: str, audit_log: str | Path) -> None:
        """Lock or unlock ``door_id``: audited first (so no unaudited change can take effect), then an
        atomic rewrite of the file. A damaged file is never overwritten (LockdownError: every door stays
        locked until it is repaired or removed). Changes are serialized (``flock`` on ``<file>.lock``, across threads and
        processes), so two at once, for doors sharing the file, cannot lose one."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock_fh:
            fcntl.flock(lock_fh, fcntl.LOCK_EX)  # released when the file is closed
            self._set(door_id, locked, by=by, reason=reason, audit_log=audit_log)

    def _set(self, door_id: str, locked: bool, *, by: str, reason: str, audit_log: str | Path) -> None:
        # A damaged file locks every door (``is_locked``). Rewriting it from an empty state would silently
        # lift that for every door but this one, so no change is made until an operator repairs or removes
        # the file (raises LockdownError).
        current = self._read()
        state = {"locked": bool(locked), "by": by, "reason": reason, "ts": time.time()}
        open_audit_log(audit_log).append({"type": "doors.lockdown", "door_id": door_id, **state})
        data = {**current, door_id: state}
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".lockdown-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=1, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
