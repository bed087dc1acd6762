"""Append-only, hash-chained JSONL audit log of door decisions.

Each line is ``{"seq", "prev", "record", "hash"}`` with ``hash = sha256(prev + canonical(record) + seq)``
(hex) and ``prev`` the previous line's hash (64 zeros for the first). Editing, deleting or reordering any
line breaks the chain from there on, which ``verify_log`` reports. Lines are flushed and fsynced one by
one. Several writers in one process share one ``AuditLog`` per path (``open_audit_log``).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

from pipeline.doors.signing import canonical

GENESIS = "0" * 64


def _hash(prev: str, record: dict[str, Any], seq: int) -> str:
    return hashlib.sha256(prev.encode() + canonical(record) + str(seq).encode()).hexdigest()


class AuditError(Exception):
    pass


class AuditLog:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        ok, n, last, problem = verify_log(self.path)
        if not ok:
            raise AuditError(
                f"audit log {self.path} is damaged ({problem}); move it aside to start a new one"
            )
        self._seq, self._prev = n, last
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for appends

    def append(self, record: dict[str, Any]) -> str:
        with self._lock:
            seq = self._seq + 1
            h = _hash(self._prev, record, seq)
            line = json.dumps({"seq": seq, "prev": self._prev, "record": record, "hash": h}, sort_keys=True)
            self._fh.write(line + "\n")
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._seq, self._prev = seq, h
            return h

    def close(self) -> None:
        with self._lock:
            self._fh.close()


def verify_log(path: str | Path) -> tuple[bool, int, str, str]:
    """(ok, lines, last hash, problem). A missing file is an empty, valid log."""
    prev, n = GENESIS, 0
    try:
        fh = open(path, encoding="utf-8")  # noqa: SIM115
    except FileNotFoundError:
        return True, 0, GENESIS, ""
    with fh:
        for lineno, line in enumerate(fh, 1):
            try:
                row = json.loads(line)
                seq, p, rec, h = row["seq"], row["prev"], row["record"], row["hash"]
            except (ValueError, KeyError, TypeError):
                return False, n, prev, f"line {lineno}: not a valid audit entry"
            if seq != n + 1 or p != prev or _hash(p, rec, seq) != h:
                return (
                    False,
                    n,
                    prev,
                    f"line {lineno}: hash chain broken (edited, removed or reordered entry)",
                )
            prev, n = h, seq
    return True, n, prev, ""


_LOGS: dict[Path, AuditLog] = {}
_LOGS_LOCK = threading.Lock()


def open_audit_log(path: str | Path) -> AuditLog:
    key = Path(path).resolve()
    with _LOGS_LOCK:
        log = _LOGS.get(key)
        if log is None or log._fh.closed:
            log = _LOGS[key] = AuditLog(key)
        return log
