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
import json
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


SECRET_FILE = "secret.key"
SESSIONS_FILE = "sessions.json"


def load_or_create_secret(web_dir: Path) -> bytes:
    """The app's signing key (device cookies), 32 random bytes in ``web_dir/secret.key`` (mode 0600)."""
    path = web_dir / SECRET_FILE
    if not path.exists():
        web_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(secrets.token_hex(32) + "\n")
    try:
        return bytes.fromhex(path.read_text(encoding="utf-8").strip())
    except ValueError:
        raise ValueError(f"web: {path} is not a key file (delete it to generate a new one)") from None


@dataclass
class Session:
    csrf: str
    expires: float


@dataclass
class _Source:
    """Failed logins of one source (a client address, or a browser that logged in here before)."""

    failures: deque[float] = field(default_factory=deque)
    locked_until: float = 0.0
    lockouts: int = 0  # each lock-out lasts twice as long as the previous one


def _sid_key(sid: str) -> str:
    """How a session id is kept on disk: its hash, so the file alone logs nobody in."""
    return hashlib.sha256(sid.encode()).hexdigest()


@dataclass
class Auth:
    """Sessions, CSRF and login rate limiting; ``api_token`` (optional) also admits ``/api`` calls.

    Guessing is slowed two ways. Per source: ``max_attempts`` failures within ``window_s`` lock that source
    out for ``window_s``, and each further lock-out doubles (up to ``lockout_max_s``). Per account (there
    is one password): while failures from everywhere run above ``max_attempts`` per window, a login from a
    browser without a device cookie waits before its check, up to ``slowdown_max_s``; it never locks. A
    browser that logged in before carries a device cookie (signed with ``secret``) and is counted as
    itself, not as its address: a stranger guessing from the same address (every client of an app bound to
    127.0.0.1 is 127.0.0.1) cannot lock the operator out.

    Sessions are server-side; with ``store_path`` they are kept there (hashed ids, mode 0600) and survive a
    restart.
    """

    password_hash: str
    session_ttl_s: float = 12 * 3600
    max_attempts: int = 5
    window_s: float = 60.0
    api_token: str | None = None
    max_sessions: int = 1000
    lockout_max_s: float = 3600.0
    slowdown_max_s: float = 5.0
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    store_path: Path | None = None
    _sessions: dict[str, Session] = field(default_factory=dict)
    _sources: dict[str, _Source] = field(default_factory=dict)
    _global: deque[float] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._load_sessions()

    # -- login -------------------------------------------------------------------------------------------
    def retry_after(self, client: str, now: float | None = None) -> float:
        """Seconds until ``client`` (an address or ``device:<id>``) may try again (0 = now)."""
        now = time.time() if now is None else now
        with self._lock:
            return self._retry_after_locked(client, now)

    def _retry_after_locked(self, client: str, now: float) -> float:
        st = self._sources.get(client)
        if st is None:
            return 0.0
        if st.locked_until > now:
            return st.locked_until - now
        while st.failures and st.failures[0] < now - self.window_s:
            st.failures.popleft()
        if len(st.failures) < self.max_attempts:
            return 0.0
        st.locked_until = now + min(self.lockout_max_s, self.window_s * 2**st.lockouts)
        st.lockouts += 1
        st.failures.clear()
        return st.locked_until - now

    def slowdown(self, now: float | None = None) -> float:
        """Seconds a login without a device cookie waits now: grows with failures from all sources above
        ``max_attempts`` per window (0.5 s each), capped at ``slowdown_max_s``."""
        now = time.time() if now is None else now
        with self._lock:
            while self._global and self._global[0] < now - self.window_s:
                self._global.popleft()
            excess = len(self._global) - self.max_attempts
        return 0.0 if excess <= 0 else min(self.slowdown_max_s, 0.5 * excess)

    def device_token(self) -> str:
        """A new device cookie value: a random id signed with the app's key."""
        dev = secrets.token_urlsafe(16)
        return f"{dev}.{self._sign(dev)}"

    def device_id(self, token: str | None) -> str | None:
        """The device id of a valid device cookie, else None."""
        if not token or token.count(".") != 1:
            return None
        dev, sig = token.split(".")
        return dev if hmac.compare_digest(sig, self._sign(dev)) else None

    def _sign(self, value: str) -> str:
        return hmac.new(self.secret, value.encode(), hashlib.sha256).hexdigest()[:32]

    def login(self, client: str, password: str) -> str | None:
        """A new session id, or None (wrong password, or ``client`` locked out; counted against it).

        The attempt counts as a failure from before the password check until it succeeds, so guesses
        running in parallel cannot all pass the rate limit before any of them is counted."""
        with self._lock:
            now = time.time()
            if self._retry_after_locked(client, now) > 0:
                return None
            if len(self._sources) > 10_000:  # bounded memory under a spray of client addresses
                for key in [k for k, st in self._sources.items() if st.locked_until <= now]:
                    del self._sources[key]
            st = self._sources.setdefault(client, _Source())
            st.failures.append(now)
            self._global.append(now)
            if len(self._global) > 100_000:
                self._global.popleft()
        if not check_password(password, self.password_hash):
            return None
        sid = secrets.token_urlsafe(32)
        with self._lock:
            with contextlib.suppress(ValueError):
                self._global.remove(now)
            if self._sources.get(client) is st and st.locked_until <= time.time():
                del self._sources[client]  # a success from this source forgives its past failures
            self._prune()
            self._sessions[sid] = Session(secrets.token_urlsafe(32), time.time() + self.session_ttl_s)
            self._save_sessions()
        return sid

    def logout(self, sid: str | None) -> None:
        with self._lock:
            if self._sessions.pop(sid or "", None) is not None:
                self._save_sessions()

    def session(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        with self._lock:
            s = self._sessions.get(sid)
            if s is None and self.store_path is not None:
                s = self._sessions.get(_sid_key(sid))  # a session from before a restart
                if s is not None:
                    del self._sessions[_sid_key(sid)]
                    self._sessions[sid] = s
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

    # -- sessions on disk --------------------------------------------------------------------------------
    def _save_sessions(self) -> None:
        """Write the sessions (hashed ids, CSRF token, expiry) atomically, mode 0600. Called locked."""
        if self.store_path is None:
            return
        now = time.time()
        data = {
            (k if len(k) == 64 and all(c in "0123456789abcdef" for c in k) else _sid_key(k)): {
                "csrf": s.csrf,
                "expires": s.expires,
            }
            for k, s in self._sessions.items()
            if s.expires > now
        }
        self.store_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.store_path.with_name(f".{self.store_path.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.store_path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _load_sessions(self) -> None:
        if self.store_path is None or not self.store_path.exists():
            return
        try:
            data = json.loads(self.store_path.read_text(encoding="utf-8"))
            now = time.time()
            for key, s in data.items():
                if float(s["expires"]) > now:
                    self._sessions[str(key)] = Session(str(s["csrf"]), float(s["expires"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            self._sessions.clear()  # an unreadable store logs everyone out: the safe failure
