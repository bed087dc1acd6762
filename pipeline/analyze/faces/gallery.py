"""The face gallery: enrolled people and their template embeddings, in SQLite.

Each enrollment is one transaction (WAL journal, synchronous=FULL), so a crash leaves either the whole
enrollment or none of it, and nothing committed before is lost. Every template stores the id of the model
that made it: templates of another model are never compared (they are not in the same space).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_SCHEMA = """
CREATE TABLE IF NOT EXISTS persons (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS templates (
    id INTEGER PRIMARY KEY,
    person_id INTEGER NOT NULL REFERENCES persons(id) ON DELETE CASCADE,
    model_id TEXT NOT NULL,
    dim INTEGER NOT NULL,
    embedding BLOB NOT NULL,
    source TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS templates_person ON templates(person_id);
CREATE TABLE IF NOT EXISTS calibration (
    model_id TEXT PRIMARY KEY,
    threshold REAL NOT NULL,
    margin REAL NOT NULL,
    report TEXT NOT NULL,
    created REAL NOT NULL
);
"""


class GalleryError(ValueError):
    """A gallery operation was refused (unknown person, name taken, bad name)."""


@dataclass(frozen=True)
class PersonInfo:
    name: str
    templates: int
    model_ids: tuple[str, ...]
    created: float


MAX_NAME_LEN = 64


def check_name(name: str) -> str:
    """A person's name, stripped: 1-64 printable characters (no NUL, newline, tab or terminal escape), no
    path separator, not ``.`` or ``..``. Names end up in file names, logs, terminals and door events."""
    if not isinstance(name, str):
        raise GalleryError(f"invalid person name {name!r}: not a string")
    name = name.strip()
    if not name or len(name) > MAX_NAME_LEN:
        raise GalleryError(
            f"invalid person name {display_name(name)!r}: {len(name)} characters (1-{MAX_NAME_LEN} allowed)"
        )
    if not name.isprintable():
        raise GalleryError(
            f"invalid person name {display_name(name)!r}: control characters (NUL, newline, tab, escapes) "
            "are not allowed"
        )
    if any(c in name for c in "/\\") or name in (".", ".."):
        raise GalleryError(f"invalid person name {name!r}: no path separators (/ or \\), not . or ..")
    return name


def display_name(name: str) -> str:
    """``name`` with every non-printable character escaped (``\\x1b``, ``\\x00``): safe to print, also for
    names stored before ``check_name`` refused them."""
    if name.isprintable():
        return name
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in name)


class Gallery:
    """Thread-safe (one connection, one lock); cheap to open several times on one file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def exists(self, name: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM persons WHERE name = ?", (name,)).fetchone() is not None

    def enroll(
        self,
        name: str,
        embeddings: np.ndarray,
        sources: list[str],
        model_id: str,
        *,
        append: bool = False,
        before_commit: Callable[[int], None] | None = None,
    ) -> int:
        """Add templates to a person in one transaction; returns the person's template count.

        A new name creates the person. An existing one is refused unless ``append``: adding photos to a
        name silently would merge two people (and let anyone who can enroll join someone's allow list).
        ``before_commit(template count)`` runs inside the transaction (the audit entry): if it raises,
        nothing is stored."""
        name = check_name(name)
        emb = np.asarray(embeddings, np.float32)
        if emb.ndim != 2 or len(emb) != len(sources) or len(emb) == 0:
            raise GalleryError(f"enroll {name!r}: need N >= 1 embeddings (N, D) and N sources")
        if not np.all(np.isfinite(emb)):
            raise GalleryError(f"enroll {name!r}: embeddings contain NaN or inf")
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT id FROM persons WHERE name = ?", (name,)).fetchone()
                if row is not None and not append:
                    raise GalleryError(
                        f"{name!r} is already enrolled; adding photos to an existing person needs append "
                        "(CLI: --append)"
                    )
                if row is None:
                    self._db.execute("INSERT INTO persons(name, created) VALUES (?, ?)", (name, now))
                    row = self._db.execute("SELECT id FROM persons WHERE name = ?", (name,)).fetchone()
                (pid,) = row
                self._db.executemany(
                    "INSERT INTO templates(person_id, model_id, dim, embedding, source, created) VALUES (?,?,?,?,?,?)",
                    [
                        (pid, model_id, emb.shape[1], e.tobytes(), s, now)
                        for e, s in zip(emb, sources, strict=True)
                    ],
                )
                (count,) = self._db.execute(
                    "SELECT COUNT(*) FROM templates WHERE person_id = ?", (pid,)
                ).fetchone()
                if before_commit is not None:
                    before_commit(int(count))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return int(count)

    def persons(self) -> list[PersonInfo]:
        with self._lock:
            rows = self._db.execute(
                "SELECT p.name, p.created, COUNT(t.id), GROUP_CONCAT(DISTINCT t.model_id) FROM persons p "
                "LEFT JOIN templates t ON t.person_id = p.id GROUP BY p.id ORDER BY p.name"
            ).fetchall()
        return [
            PersonInfo(n, int(c), tuple(sorted((m or "").split(",")) if m else ()), cr)
            for n, cr, c, m in rows
        ]

    def remove(self, name: str) -> None:
        with self._lock:
            cur = self._db.execute("DELETE FROM persons WHERE name = ?", (name,))
        if cur.rowcount == 0:
            raise GalleryError(f"no enrolled person named {name!r}")

    def rename(self, old: str, new: str) -> None:
        new = check_name(new)
        with self._lock:
            try:
                cur = self._db.execute("UPDATE persons SET name = ? WHERE name = ?", (new, old))
            except sqlite3.IntegrityError:
                raise GalleryError(f"cannot rename {old!r}: {new!r} is already enrolled") from None
        if cur.rowcount == 0:
            raise GalleryError(f"no enrolled person named {old!r}")

    def templates(self, model_id: str) -> dict[str, np.ndarray]:
        """name -> (n, D) float32 templates made by ``model_id`` (people without any are left out)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT p.name, t.dim, t.embedding FROM templates t JOIN persons p ON p.id = t.person_id "
                "WHERE t.model_id = ? ORDER BY t.id",
                (model_id,),
            ).fetchall()
        out: dict[str, list[np.ndarray]] = {}
        for name, dim, blob in rows:
            out.setdefault(name, []).append(np.frombuffer(blob, np.float32, count=dim))
        return {k: np.stack(v) for k, v in out.items()}

    def version(self) -> tuple:
        """Changes whenever templates or names change (a cheap poll for reloading)."""
        with self._lock:
            t = self._db.execute("SELECT COUNT(*), COALESCE(MAX(id), 0) FROM templates").fetchone()
            p = self._db.execute("SELECT id, name FROM persons ORDER BY id").fetchall()
        return (tuple(t), tuple(p))

    # ---- calibration (written by `faces calibrate`, read by the face analyzer) -------------------------

    def set_calibration(self, model_id: str, threshold: float, margin: float, report: str) -> None:
        """Store the operating point chosen for ``model_id`` (one per model: distances of different models
        are not comparable), with the JSON report it was chosen from."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO calibration(model_id, threshold, margin, report, created) "
                "VALUES (?, ?, ?, ?, ?)",
                (model_id, float(threshold), float(margin), report, time.time()),
            )

    def calibration(self, model_id: str) -> tuple[float, float, str] | None:
        """(threshold, margin, report JSON) stored for ``model_id``, or None when never calibrated."""
        with self._lock:
            row = self._db.execute(
                "SELECT threshold, margin, report FROM calibration WHERE model_id = ?", (model_id,)
            ).fetchone()
        return None if row is None else (float(row[0]), float(row[1]), str(row[2]))
