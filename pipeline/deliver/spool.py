"""A bounded on-disk FIFO of events waiting for their sink (SQLite, WAL); one file per sink.

Rows get an AUTOINCREMENT id, so ids only grow (even after deletes) and ``ORDER BY id`` is production
order. ``peek_batch`` reads the oldest rows without removing them; ``ack(upto_id)`` removes them once they
reached Redis, so a crash between the two replays them (at-least-once), never loses them.

The spool holds at most ``max_events`` rows: appending to a full spool deletes the OLDEST rows and adds
their number to a drop counter that is stored in the same database (it survives restarts).

Durability: WAL with ``synchronous=NORMAL``: a committed append survives a process crash (kill -9); after a
power loss the last few commits may be missing. One process at a time may open a spool file (a lock file
next to it enforces that), so two pipelines never replay the same events.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO


class SpoolError(RuntimeError):
    """The spool file cannot be opened or written. The message names the file."""


@dataclass(frozen=True)
class SpoolRecord:
    """One event as the publisher sends it: the JSON plus where it goes."""

    stream: str
    channel: str
    event_id: str
    type: str
    camera_id: str
    event_json: str


@dataclass(frozen=True)
class SpooledEvent(SpoolRecord):
    id: int = 0
    spooled_at: float = 0.0


_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    spooled_at REAL NOT NULL,
    stream TEXT NOT NULL,
    channel TEXT NOT NULL,
    event_id TEXT NOT NULL,
    type TEXT NOT NULL,
    camera_id TEXT NOT NULL,
    event TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('dropped', 0);
"""


class Spool:
    """Thread-safe bounded FIFO. ``path`` may be ``":memory:"`` (tests; nothing survives)."""

    def __init__(
        self, path: str | os.PathLike[str], max_events: int = 1_000_000, *, key: str = "redis.spool_path"
    ) -> None:
        """key: the config key the path came from, named in errors (each sink has its own spool)."""
        if max_events < 1:
            raise ValueError(f"spool {path}: max_events must be >= 1, got {max_events}")
        self.path = str(path)
        self.max_events = max_events
        self.key = key
        self._lock = threading.Lock()
        self._lock_file: IO[bytes] | None = None
        if self.path != ":memory:":
            self._take_file_lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._make_private()
            (self._count,) = self._db.execute("SELECT COUNT(*) FROM events").fetchone()
            (self._dropped,) = self._db.execute("SELECT value FROM meta WHERE key='dropped'").fetchone()
        except sqlite3.Error as exc:
            self._release_file_lock()
            raise SpoolError(
                f"cannot open spool {self.path} ({self.key}): {exc}; move the file away to start afresh"
            ) from None

    def _make_private(self) -> None:
        """Events name people and doors: the spool and its WAL files are 0600 whatever the umask."""
        if self.path == ":memory:":
            return
        for suffix in ("", "-wal", "-shm", ".lock"):
            with contextlib.suppress(OSError):
                os.chmod(f"{self.path}{suffix}", 0o600)

    def _take_file_lock(self) -> None:
        p = Path(self.path)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            lock_file = open(f"{self.path}.lock", "ab")  # noqa: SIM115 - held open while the spool is
        except OSError as exc:
            raise SpoolError(f"cannot create spool {self.path} ({self.key}): {exc}") from None
        try:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock_file.close()
            raise SpoolError(
                f"spool {self.path} ({self.key}) is in use by another process; "
                "give each pipeline its own spool_path"
            ) from None
        self._lock_file = lock_file  # a file object: released by close() or, if forgotten, by the GC

    def _release_file_lock(self) -> None:
        if self._lock_file is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
                self._lock_file.close()
            self._lock_file = None

    # -- writing ---------------------------------------------------------------------------------------

    def append(self, record: SpoolRecord) -> int:
        """Add one event; returns how many old events were dropped to make room."""
        return self.append_many([record])

    def append_many(self, records: Iterable[SpoolRecord]) -> int:
        """Add events in order (one transaction); returns how many old events were dropped for room."""
        rows = [
            (time.time(), r.stream, r.channel, r.event_id, r.type, r.camera_id, r.event_json) for r in records
        ]
        if not rows:
            return 0
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany(
                    "INSERT INTO events (spooled_at, stream, channel, event_id, type, camera_id, event) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                count = self._count + len(rows)
                overflow = max(0, count - self.max_events)
                if overflow:
                    self._db.execute(
                        "DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY id LIMIT ?)",
                        (overflow,),
                    )
                    self._db.execute("UPDATE meta SET value = value + ? WHERE key='dropped'", (overflow,))
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise SpoolError(f"cannot write to spool {self.path}: {exc}") from None
            self._count = count - overflow
            self._dropped += overflow
            return overflow

    def ack(self, upto_id: int) -> int:
        """Remove every event with id <= ``upto_id`` (they reached Redis); returns how many."""
        with self._lock:
            try:
                cur = self._db.execute("DELETE FROM events WHERE id <= ?", (upto_id,))
            except sqlite3.Error as exc:
                raise SpoolError(f"cannot delete from spool {self.path}: {exc}") from None
            self._count -= cur.rowcount
            return cur.rowcount

    # -- reading ---------------------------------------------------------------------------------------

    def peek_batch(self, n: int) -> list[SpooledEvent]:
        """The ``n`` oldest events, oldest first, left in place until ``ack``."""
        with self._lock:
            try:
                rows = self._db.execute(
                    "SELECT id, spooled_at, stream, channel, event_id, type, camera_id, event "
                    "FROM events ORDER BY id LIMIT ?",
                    (n,),
                ).fetchall()
            except sqlite3.Error as exc:
                raise SpoolError(f"cannot read spool {self.path}: {exc}") from None
        return [
            SpooledEvent(
                id=r[0],
                spooled_at=r[1],
                stream=r[2],
                channel=r[3],
                event_id=r[4],
                type=r[5],
                camera_id=r[6],
                event_json=r[7],
            )
            for r in rows
        ]

    def count(self) -> int:
        with self._lock:
            return self._count

    @property
    def dropped(self) -> int:
        """Events dropped on overflow over the spool file's whole life."""
        with self._lock:
            return self._dropped

    def close(self) -> None:
        with self._lock:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._release_file_lock()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Spool({self.path!r}, count={self._count}, max={self.max_events}, dropped={self._dropped})"
