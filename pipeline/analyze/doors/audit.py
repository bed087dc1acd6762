"""Append-only, keyed, hash-chained JSONL audit log of door decisions, with signed checkpoints.

Each line is ``{"seq", "prev", "record", "hash"}`` with ``hash = HMAC-SHA256(audit key, prev + canonical(record)
+ seq)`` (hex) and ``prev`` the previous line's hash (64 zeros for the first). The key is the audit key
(``$VIDPIPE_AUDIT_KEY``, or the file named by ``$VIDPIPE_AUDIT_KEY_FILE``), never a door's secret: whoever can
read the door config or the controller's environment still cannot re-chain an edited log. Without the key,
an edited, deleted, reordered or appended line breaks the chain at that line.

What a chain cannot show is the newest lines being cut off: the shorter file is still a valid chain. So
after every append the writer signs a checkpoint (same key) and keeps it in ``<log>.checkpoints`` beside
the log; the face analyzer also publishes it as an ``audit.checkpoint`` event (Redis stream
``{prefix}:stream:audit``), out of reach of whoever edits the host's files. The checkpoints form their own
numbered chain across every generation of the log (:mod:`pipeline.analyze.doors.audit_history`), so deleting
the log with its side file, or an archived generation, shows as a gap or a restarted chain.
``verify_log`` checks one file against checkpoints; ``verify_history`` checks the whole history. Lines and
checkpoints are flushed and fsynced one by one. Several writers in one process share one ``AuditLog`` per path (``open_audit_log``): the chain has
a single writer.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.analyze.doors.audit_history import (
    CHECKPOINT_EVENT,
    GENESIS,
    History,
    check_history,
    checkpoint_mac,
    checkpoints_path,
    generation_path,
    iter_checkpoints,
    read_checkpoints,
    sign_checkpoint,
    when,
)
from pipeline.analyze.doors.signing import canonical

__all__ = ["CHECKPOINT_EVENT", "GENESIS", "checkpoints_path", "iter_checkpoints", "read_checkpoints"]
_log = logging.getLogger(__name__)
KEY_ENV = "VIDPIPE_AUDIT_KEY"
KEY_FILE_ENV = "VIDPIPE_AUDIT_KEY_FILE"
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


class AuditLog:
    """The single writer of one audit log: appends entries and signs the next checkpoint of the history.

    It starts only over a whole history (:func:`check_history` of the side file's checkpoints and, when
    given, Redis's): a missing log whose checkpoints show entries, a log with entries but no checkpoint, a
    damaged or truncated log, or a broken checkpoint chain is an ``AuditError``, never a silent new chain.
    The way out is an operator's audited reset (``faces audit-reset``, :mod:`pipeline.analyze.doors.audit_reset`).
    """

    def __init__(
        self, path: str | Path, key: bytes | None = None, remote: Iterable[Mapping[str, Any]] = ()
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._key = audit_key() if key is None else key
        self._lock = threading.Lock()
        hist = check_history(self.path.name, self._key, iter_checkpoints(self.path), remote)
        if hist.problems:
            raise AuditError(
                f"audit log {self.path}: its checkpoint history is broken ({hist.problems[0]}); "
                f"check it with `faces verify-audit`; {RESET_HINT}"
            )
        gen = hist.gen
        current = hist.of_generation(gen)
        if current and not self.path.exists():
            newest = max(current, key=lambda cp: cp["lines"])
            raise AuditError(
                f"audit log {self.path} is missing, but its checkpoints ({_sources(hist)}) show "
                f"{newest['lines']} entries of generation {gen}, the newest signed at {when(newest)}: a new "
                f"chain is not started over it. Restore the log, or if it is really lost, {RESET_HINT}"
            )
        ok, n, last, problem = verify_log(self.path, self._key, current, missing_ok=True)
        if not ok:
            raise AuditError(f"audit log {self.path} is damaged ({problem}); {RESET_HINT}")
        if n and not current:
            raise AuditError(
                f"audit log {self.path} has {n} entries but no checkpoint covers them (its .checkpoints "
                f"file was removed?); {RESET_HINT}"
            )
        self._seq, self._prev = n, last
        self._gen = gen
        self._cseq = int(hist.last["cseq"]) if hist.last else 0
        self._cprev = str(hist.last["mac"]) if hist.last else GENESIS
        self._abs = str(self.path.resolve())
        self.last_checkpoint: dict[str, Any] | None = None
        self._deleted_logged = False
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for appends
        self._cp = open(checkpoints_path(self.path), "a", encoding="utf-8")  # noqa: SIM115

    def append(self, record: dict[str, Any]) -> str:
        """Appends one line and signs the next checkpoint over it (``last_checkpoint``); returns the line's
        hash."""
        with self._lock:
            seq = self._seq + 1
            h = _hash(self._key, self._prev, record, seq)
            line = json.dumps({"seq": seq, "prev": self._prev, "record": record, "hash": h}, sort_keys=True)
            self._fh.write(line + "\n")
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._seq, self._prev = seq, h
            cp = sign_checkpoint(
                self._key,
                {
                    "log": self.path.name,
                    "path": self._abs,
                    "gen": self._gen,
                    "cseq": self._cseq + 1,
                    "prev": self._cprev,
                    "lines": seq,
                    "head": h,
                    "time": time.time(),
                },
            )
            self._cp.write(json.dumps(cp, sort_keys=True) + "\n")
            self._cp.flush()
            os.fsync(self._cp.fileno())
            self._cseq, self._cprev = cp["cseq"], cp["mac"]
            self.last_checkpoint = cp
            self._check_not_deleted()
            return h

    def _check_not_deleted(self) -> None:
        """Logs (once) when the log or its side file was deleted while being written: the entries go on
        into the unlinked files and to Redis, where ``verify-audit --redis`` shows what is missing."""
        if self._deleted_logged:
            return
        if os.fstat(self._fh.fileno()).st_nlink == 0 or os.fstat(self._cp.fileno()).st_nlink == 0:
            self._deleted_logged = True
            _log.error(
                "audit log %s (or its .checkpoints) was DELETED while the pipeline writes it; entries since "
                "are only in the deleted file and the Redis checkpoints: investigate, `faces verify-audit "
                "--redis` shows the gap, and the next start is refused until an audited reset",
                self.path,
            )

    def close(self) -> None:
        with self._lock:
            self._fh.close()
            self._cp.close()


RESET_HINT = (
    "to start a new generation an operator must run `faces audit-reset --door DOOR --reason TEXT` "
    "(audited: it archives what is left and records who and why)"
)


def _sources(hist: History) -> str:
    return f"{hist.side} in the side file, {hist.remote} in Redis"


def verify_log(
    path: str | Path,
    key: bytes | None = None,
    checkpoints: Iterable[Mapping[str, Any]] | None = None,
    *,
    missing_ok: bool = False,
    log_name: str | None = None,
) -> tuple[bool, int, str, str]:
    """(ok, lines, last hash, problem) of one log file. ``key``: the audit key (default: ``audit_key()``).
    ``checkpoints`` (default: the ones kept beside the log) must each carry a valid MAC and be for
    ``log_name`` (default: the file's name); the newest of the newest generation among them must match the
    file. A missing file fails unless ``missing_ok`` and no checkpoint covers it (a writer starting a new
    log). The whole history (every generation, the checkpoint chain) is :func:`verify_history`'s job."""
    key = audit_key() if key is None else key
    name = Path(path).name if log_name is None else log_name
    # Only the checkpoint covering the most lines is compared with the file (the chain vouches for the
    # lines below it), but every one must carry a valid MAC. Streamed: memory does not grow with the log.
    newest: dict[int, Mapping[str, Any]] = {}
    for i, cp in enumerate(iter_checkpoints(path) if checkpoints is None else checkpoints, 1):
        if "malformed" in cp:
            return False, 0, GENESIS, f"checkpoint {cp['malformed']}: not a valid checkpoint"
        mac = cp.get("mac")
        if not isinstance(mac, str) or not hmac.compare_digest(mac, checkpoint_mac(key, cp)):
            return False, 0, GENESIS, f"checkpoint {i}: bad MAC (forged checkpoint, or a wrong audit key)"
        if cp.get("log") != name:
            return False, 0, GENESIS, f"checkpoint {i}: it is for log {cp.get('log')!r}"
        lines = cp.get("lines")
        if not isinstance(lines, int) or isinstance(lines, bool) or lines < 1:
            return False, 0, GENESIS, f"checkpoint {i}: bad line count {lines!r}"
        gen = cp.get("gen", 1)
        gen = gen if isinstance(gen, int) else 1
        if gen not in newest or lines > newest[gen]["lines"]:
            newest[gen] = cp
    top = newest[max(newest)] if newest else None
    prev, n = GENESIS, 0
    try:
        fh = open(path, encoding="utf-8")  # noqa: SIM115
    except FileNotFoundError:
        if missing_ok and top is None:
            return True, 0, GENESIS, ""
        if top is None:
            return False, 0, GENESIS, f"{path}: no such file"
        return (
            False,
            0,
            GENESIS,
            f"{path}: no such file, but its checkpoints show {top['lines']} entries, the newest signed at "
            f"{when(top)} (deleted log)",
        )
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
            if top is not None and n == top["lines"] and top.get("head") != h:
                return (
                    False,
                    n,
                    prev,
                    f"line {n}: differs from the checkpoint signed at {when(top)} (rewritten log)",
                )
    if top is not None and n < top["lines"]:
        return (
            False,
            n,
            prev,
            f"line {n + 1}: missing; the log ends after {n} entries but the checkpoint signed at "
            f"{when(top)} covers {top['lines']} (truncated log)",
        )
    return True, n, prev, ""


@dataclass
class HistoryReport:
    """:func:`verify_history`'s answer: ``problems`` empty means the whole history holds."""

    problems: list[str]
    notes: list[str]
    entries: int  # entries in the current generation's log
    history: History


def verify_history(path: str | Path, key: bytes, remote: Iterable[Mapping[str, Any]] = ()) -> HistoryReport:
    """Checks every generation of a log against the whole checkpoint history (side file + ``remote``):
    the chain itself (gaps, restarts), the current log, and each archived generation's file, which must
    still be there unless the reset that closed it recorded it as missing or damaged."""
    path = Path(path)
    hist = check_history(path.name, key, iter_checkpoints(path), remote)
    problems, notes = list(hist.problems), []
    entries = 0
    gens = hist.generations() or [1]
    for gen in gens:
        cps = hist.of_generation(gen)
        if gen == hist.gen:
            ok, n, _, problem = verify_log(path, key, cps, log_name=path.name)
            entries = n
            if ok and n and not cps:
                ok, problem = (
                    False,
                    f"no checkpoint found ({_sources(hist)}) although the log has {n} entries",
                )
            if not ok:
                problems.append(problem if len(gens) == 1 else f"generation {gen}: {problem}")
            continue
        archived = generation_path(path, gen)
        closed = hist.closed_as(gen)
        if closed in ("missing", "damaged"):
            notes.append(f"generation {gen}: {closed} when an operator reset it (audited)")
            continue
        ok, n, _, problem = verify_log(archived, key, cps, log_name=path.name)
        if not ok:
            problems.append(f"generation {gen} ({archived.name}): {problem}")
    for cp in hist.chain:
        reset = cp.get("reset")
        if isinstance(reset, dict):
            notes.append(
                f"generation {cp['gen']} started by an audited reset at {when(cp)} by {reset.get('by')!r}: "
                f"{reset.get('reason')!r} (generation {reset.get('prior_gen')}: {reset.get('prior_log')})"
            )
    return HistoryReport(problems, notes, entries, hist)


_LOGS: dict[Path, AuditLog] = {}
_LOGS_LOCK = threading.Lock()


def open_audit_log(path: str | Path, redis_url: str | None = None, prefix: str = "vidpipe") -> AuditLog:
    """The process's one writer for ``path`` (key from the environment; raises AuditError if unset).
    With ``redis_url``, the checkpoints published there join the history it must continue: a log deleted
    together with its side file is then refused too. Redis unreachable: a warning, the local history only
    (``faces verify-audit --redis`` still sees a chain restarted meanwhile)."""
    key = Path(path).resolve()
    with _LOGS_LOCK:
        log = _LOGS.get(key)
        if log is None or log._fh.closed:
            remote: list[dict[str, Any]] = []
            if redis_url:
                from pipeline.analyze.doors.audit_remote import RemoteError, fetch_checkpoints

                try:
                    remote = fetch_checkpoints(redis_url, prefix, key)
                except RemoteError as exc:
                    _log.warning("audit log %s: cannot read its checkpoint history from Redis (%s)", key, exc)
            log = _LOGS[key] = AuditLog(key, remote=remote)
        return log
