"""Login for the web app: one scrypt-hashed password, server-side sessions, CSRF tokens, rate limiting.

Why this shape: the app runs next to cameras and door locks, often on a box nobody hardens, so nothing
secret is ever rendered or logged, the password never lands on disk in clear, a stolen page cannot replay a
form (CSRF token bound to the session), and guessing is slowed per client. Sessions live in memory: a
restart logs everyone out, which is the safe failure.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

_N, _R, _P = 2**14, 8, 1  # scrypt cost: ~16 MiB and ~50 ms per check on a small CPU
PASSWORD_FILE = "password.scrypt"


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt or os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, maxmem=64 * 1024 * 1024)
    return f"scrypt${_N}${_R}${_P}${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.strip().split("$")
        if kind != "scrypt":
            return False
        got = hashlib.scrypt(
            password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), maxmem=64 * 1024 * 1024
        )
    except ValueError:
        return False
    return hmac.compare_digest(got.hex(), digest)


def load_or_create_password(web_dir: Path, env_name: str) -> tuple[str, str | None]:
    """(stored hash, new clear password or None). The password comes from ``env_name`` when set; else
    from ``web_dir/password.scrypt``; else one is generated, stored hashed (mode 0600) and returned once
    so the caller can print it on the terminal (never in a page or a log file)."""
    from_env = os.environ.get(env_name, "")
    if from_env:
        if len(from_env) < 12:
            raise ValueError(f"web: the password in ${env_name} must be at least 12 characters")
        return hash_password(from_env), None
    path = web_dir / PASSWORD_FILE
    if path.exists():
        stored = path.read_text(encoding="utf-8").strip()
        if not stored.startswith("scrypt$"):
            raise ValueError(f"web: {path} is not a password hash file (delete it to generate a new one)")
        return stored, None
    password = secrets.token_urlsafe(12)
    web_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(hash_password(password) + "\n")
    return path.read_text(encoding="utf-8").strip(), password


@dataclass
class Session:
    csrf: str
    expires: float


@dataclass
class Auth:
    """Sessions, CSRF and login rate limiting; ``api_token`` (optional) also admits ``/api`` calls."""

    password_hash: str
    session_ttl_s: float = 12 * 3600
    max_attempts: int = 5
    window_s: float = 60.0
    api_token: str | None = None
    max_sessions: int = 1000
    _sessions: dict[str, Session] = field(default_factory=dict)
    _failures: dict[str, deque[float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- login -------------------------------------------------------------------------------------------
    def retry_after(self, client: str, now: float | None = None) -> float:
        """Seconds until ``client`` may try again (0 = now)."""
        now = time.time() if now is None else now
        with self._lock:
            return self._retry_after_locked(client, now)

    def _retry_after_locked(self, client: str, now: float) -> float:
        q = self._failures.get(client)
        if not q:
            return 0.0
        while q and q[0] < now - self.window_s:
            q.popleft()
        if len(q) < self.max_attempts:
            return 0.0
        return max(0.0, q[0] + self.window_s - now)

    def login(self, client: str, password: str) -> str | None:
        """A new session id, or None (wrong password; counted against ``client``).

        The attempt counts as a failure from before the password check until it succeeds, so guesses
        running in parallel cannot all pass the rate limit before any of them is counted."""
        with self._lock:
            if self._retry_after_locked(client, time.time()) > 0:
                return None
            if len(self._failures) > 10_000:  # bounded memory under a spray of client addresses
                self._failures.clear()
            attempt = time.time()
            q = self._failures.setdefault(client, deque())
            q.append(attempt)
        if not check_password(password, self.password_hash):
            return None
        sid = secrets.token_urlsafe(32)
        with self._lock:
            with contextlib.suppress(ValueError):
                q.remove(attempt)
            self._prune()
            self._sessions[sid] = Session(secrets.token_urlsafe(32), time.time() + self.session_ttl_s)
        return sid

    def logout(self, sid: str | None) -> None:
        with self._lock:
            self._sessions.pop(sid or "", None)

    def session(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        with self._lock:
            s = self._sessions.get(sid)
            if s is None or s.expires < time.time():
                self._sessions.pop(sid, None)
                return None
            return s

    def check_csrf(self, sid: str | None, token: str | None) -> bool:
        s = self.session(sid)
        return bool(s and token and hmac.compare_digest(s.csrf.encode(), token.encode()))

    def bearer_ok(self, header: str) -> bool:
        if not self.api_token or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[7:].encode(), self.api_token.encode())

    def _prune(self) -> None:
        now = time.time()
        for sid in [k for k, s in self._sessions.items() if s.expires < now]:
            del self._sessions[sid]
        while len(self._sessions) >= self.max_sessions:
            self._sessions.pop(next(iter(self._sessions)))
