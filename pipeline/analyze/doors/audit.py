"""Append-only, keyed, hash-chained JSONL audit log of door decisions, with signed checkpoints.

Each line is ``{"seq", "prev", "record", "hash"}`` with ``hash = HMAC-SHA256(audit key, prev + canonical(record)
+ seq)`` (hex) and ``prev`` the previous line's hash (64 zeros for the first). The key is the audit key
(``$VIDPIPE_AUDIT_KEY``, or the file named by ``$VIDPIPE_AUDIT_KEY_FILE``), never a door's secret: whoever can
read the door config or the controller's environment still cannot re-chain an edited log. Without the key,
an edited, deleted, reordered or appended line breaks the chain at that line.

What a chain cannot show is the newest lines being cut off: the shorter file is still a valid chain. So
after every append the writer signs a checkpoint ``{"log", "lines", "head", "time", "mac"}`` (same key) and
keeps it in ``<log>.checkpoints`` beside the log; the face analyzer also publishes it as an
``audit.checkpoint`` event (Redis stream ``{prefix}:stream:audit``), out of reach of whoever edits the host's
files. ``verify_log`` checks the file against every checkpoint it is given: fewer lines than a checkpoint
covers, or a different hash at that line, is a failure. Lines and checkpoints are flushed and fsynced one
by one. Several writers in one process share one ``AuditLog`` per path (``open_audit_log``): the chain has
a single writer.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from pipeline.analyze.doors.signing import canonical

GENESIS = "0" * 64
KEY_ENV = "VIDPIPE_AUDIT_KEY"
KEY_FILE_ENV = "VIDPIPE_AUDIT_KEY_FILE"
CHECKPOINT_EVENT = "audit.checkpoint"
_MIN_KEY_LEN = 16


class AuditError(Exception):
    pass


def audit_key(environ: Mapping[str, str] | None = None) -> bytes:
    """The audit key from ``$VIDPIPE_AUDIT_KEY`` or the file ``$VIDPIPE_AUDIT_KEY_FILE`` names (at least 16
    characters; surrounding whitespace of a file is ignored). Raises AuditError naming what is missing."""
    env = os.environ if environ is None else environ
    value = env.get(KEY_ENV, "")
    source = KEY_ENV
    if not value and env.get(KEY_FILE_ENV):
        source = f"{KEY_FILE_ENV} ({env[KEY_FILE_ENV]})"
        try:
            value = Path(env[KEY_FILE_ENV]).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise AuditError(f"cannot read the audit key file {env[KEY_FILE_ENV]}: {exc.strerror}") from None
    if not value:
        raise AuditError(
            f"no audit key: set {KEY_ENV} (or {KEY_FILE_ENV} to a file holding it); it keys the door audit "
            "chain and must differ from every door secret"
        )
    if len(value) < _MIN_KEY_LEN:
        raise AuditError(f"the audit key from {source} must be at least {_MIN_KEY_LEN} characters")
    return value.encode()


def _hash(key: bytes, prev: str, record: Any, seq: int) -> str:
    return hmac.new(key, prev.encode() + canonical(record) + str(seq).encode(), hashlib.sha256).hexdigest()


def _checkpoint_mac(key: bytes, cp: Mapping[str, Any]) -> str:
    body = {k: cp.get(k) for k in ("log", "lines", "head", "time")}
    return hmac.new(key, canonical(body), hashlib.sha256).hexdigest()


def checkpoints_path(path: str | Path) -> Path:
    p = Path(path)
    return p.with_name(p.name + ".checkpoints")


def iter_checkpoints(path: str | Path) -> Iterator[dict[str, Any]]:
    """The checkpoints kept beside a log, streamed (none if the side file does not exist). A line that is
    not a JSON object comes out as ``{"malformed": line number}`` so verification reports it."""
    try:
        fh = open(checkpoints_path(path), encoding="utf-8")  # noqa: SIM115
    except FileNotFoundError:
        return
    with fh:
        for i, line in enumerate(fh, 1):
            try:
                cp = json.loads(line)
            except ValueError:
                cp = None
            yield cp if isinstance(cp, dict) else {"malformed": i}


def read_checkpoints(path: str | Path) -> list[dict[str, Any]]:
    return list(iter_checkpoints(path))


class AuditLog:
    def __init__(self, path: str | Path, key: bytes | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._key = audit_key() if key is None else key
        self._lock = threading.Lock()
        ok, n, last, problem = verify_log(self.path, self._key, missing_ok=True)
        if not ok:
            raise AuditError(
                f"audit log {self.path} is damaged ({problem}); move it (and its .checkpoints) aside "
                "to start a new one"
            )
        self._seq, self._prev = n, last
        self.last_checkpoint: dict[str, Any] | None = None
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for appends
        self._cp = open(checkpoints_path(self.path), "a", encoding="utf-8")  # noqa: SIM115

    def append(self, record: dict[str, Any]) -> str:
        """Appends one line and signs a checkpoint over it (``last_checkpoint``); returns the line's hash."""
        with self._lock:
            seq = self._seq + 1
            h = _hash(self._key, self._prev, record, seq)
            line = json.dumps({"seq": seq, "prev": self._prev, "record": record, "hash": h}, sort_keys=True)
            self._fh.write(line + "\n")
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._seq, self._prev = seq, h
            cp: dict[str, Any] = {"log": self.path.name, "lines": seq, "head": h, "time": time.time()}
            cp["mac"] = _checkpoint_mac(self._key, cp)
            self._cp.write(json.dumps(cp, sort_keys=True) + "\n")
            self._cp.flush()
            os.fsync(self._cp.fileno())
            self.last_checkpoint = cp
            return h

    def close(self) -> None:
        with self._lock:
            self._fh.close()
            self._cp.close()


def verify_log(
    path: str | Path,
    key: bytes | None = None,
    checkpoints: Iterable[Mapping[str, Any]] | None = None,
    *,
    missing_ok: bool = False,
) -> tuple[bool, int, str, str]:
    """(ok, lines, last hash, problem). ``key``: the audit key (default: ``audit_key()``). ``checkpoints``
    (default: the ones kept beside the log) must each carry a valid MAC and match the file at the line
    count they cover. A missing file fails unless ``missing_ok`` (a writer starting a new log)."""
    key = audit_key() if key is None else key
    # Only the checkpoint covering the most lines is compared with the file (the chain vouches for the
    # lines below it), but every one must carry a valid MAC. Streamed: memory does not grow with the log.
    newest: Mapping[str, Any] | None = None
    for i, cp in enumerate(iter_checkpoints(path) if checkpoints is None else checkpoints, 1):
        if "malformed" in cp:
            return False, 0, GENESIS, f"checkpoint {cp['malformed']}: not a valid checkpoint"
        mac = cp.get("mac")
        if not isinstance(mac, str) or not hmac.compare_digest(mac, _checkpoint_mac(key, cp)):
            return False, 0, GENESIS, f"checkpoint {i}: bad MAC (forged checkpoint, or a wrong audit key)"
        if cp.get("log") != Path(path).name:
            return False, 0, GENESIS, f"checkpoint {i}: it is for log {cp.get('log')!r}"
        lines = cp.get("lines")
        if not isinstance(lines, int) or isinstance(lines, bool) or lines < 1:
            return False, 0, GENESIS, f"checkpoint {i}: bad line count {lines!r}"
        if newest is None or lines > newest["lines"]:
            newest = cp
    prev, n = GENESIS, 0
    try:
        fh = open(path, encoding="utf-8")  # noqa: SIM115
    except FileNotFoundError:
        if missing_ok and newest is None:
            return True, 0, GENESIS, ""
        return False, 0, GENESIS, f"{path}: no such file"
    with fh:
        for lineno, line in enumerate(fh, 1):
            try:
                row = json.loads(line)
                seq, p, rec, h = row["seq"], row["prev"], row["record"], row["hash"]
            except (ValueError, KeyError, TypeError):
                return False, n, prev, f"line {lineno}: not a valid audit entry"
            if seq != n + 1:
                return (
                    False,
                    n,
                    prev,
                    f"line {lineno}: entry {seq!r} where {n + 1} was expected (deleted or reordered entry)",
                )
            if p != prev:
                return (
                    False,
                    n,
                    prev,
                    f"line {lineno}: does not chain to line {n} (deleted or reordered entry)",
                )
            if not isinstance(h, str) or not hmac.compare_digest(_hash(key, p, rec, seq), h):
                return (
                    False,
                    n,
                    prev,
                    f"line {lineno}: MAC does not match (edited or forged entry, or a wrong audit key)",
                )
            prev, n = h, seq
            if newest is not None and n == newest["lines"] and newest.get("head") != h:
                return (
                    False,
                    n,
                    prev,
                    f"line {n}: differs from the checkpoint signed at {_when(newest)} (rewritten log)",
                )
    if newest is not None and n < newest["lines"]:
        return (
            False,
            n,
            prev,
            f"line {n + 1}: missing; the log ends after {n} entries but the checkpoint signed at "
            f"{_when(newest)} covers {newest['lines']} (truncated log)",
        )
    return True, n, prev, ""


def _when(cp: Mapping[str, Any]) -> str:
    t = cp.get("time")
    if not isinstance(t, int | float):
        return "?"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


_LOGS: dict[Path, AuditLog] = {}
_LOGS_LOCK = threading.Lock()


def open_audit_log(path: str | Path) -> AuditLog:
    """The process's one writer for ``path`` (key from the environment; raises AuditError if unset)."""
    key = Path(path).resolve()
    with _LOGS_LOCK:
        log = _LOGS.get(key)
        if log is None or log._fh.closed:
            log = _LOGS[key] = AuditLog(key)
        return log
