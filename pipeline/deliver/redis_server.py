"""A private redis-server on 127.0.0.1 for when no ``redis.url`` is configured, and for tests.

``LocalRedis`` runs Debian's ``/usr/bin/redis-server`` as a child process on a free port, in its own data
directory, without persistence unless asked (``persistence=True`` turns on the append-only file, so data
written before a SIGKILL is still there after ``restart()``). ``start()`` returns once the server answers
PING; ``restart()`` brings it back on the same port, so clients configured with ``.url`` reconnect.

The server never outlives its parent and never sees the terminal's Ctrl-C:
  * it runs in its own session (``start_new_session``), so the SIGINT a terminal sends to the foreground
    process group does not stop it before the pipeline has drained into it; the pipeline stops it last;
  * ``PR_SET_PDEATHSIG`` (Linux ``prctl``, set between fork and exec) makes the kernel send it SIGTERM when
    the parent dies, even by SIGKILL, so no redis-server is orphaned.

The password is never on redis-server's command line (``/proc/<pid>/cmdline`` is world-readable): it goes
in a 0600 config file, ``<data_dir>/redis.conf``, whose path is the only argument that mentions it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

DEFAULT_BINARY = "/usr/bin/redis-server"
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def die_with_parent(parent_pid: int, sig: int = signal.SIGTERM) -> None:
    """In a child between fork and exec: have the kernel send ``sig`` when the parent dies (even by SIGKILL).

    If the parent already died between fork and this call, exit at once (the kernel would not tell us)."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


class RedisServerError(RuntimeError):
    """redis-server is missing, would not start, or did not answer in time."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it; a race with another process is possible)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _find_binary(binary: str | None) -> str:
    candidates: list[str | None] = [binary] if binary else [DEFAULT_BINARY, shutil.which("redis-server")]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    wanted = binary or DEFAULT_BINARY
    raise RedisServerError(
        f"redis-server not found at {wanted} (nor on PATH); install it: apt-get install redis-server, "
        "or set redis.url in the config to an existing Redis"
    )


def _server_pid(host: str, port: int, password: str | None, timeout: float = 0.5) -> int | None:
    """The process id of the redis-server answering on host:port (from INFO), or None if none answers.

    Raw RESP over a socket, no client library. Comparing the pid tells our child from another server that
    already had the port.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            if password:
                pw = password.encode()
                s.sendall(b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(pw), pw))
                s.recv(256)
            s.sendall(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")
            reply = b""
            while b"process_id:" not in reply or not reply.split(b"process_id:", 1)[1].count(b"\r\n"):
                chunk = s.recv(8192)
                reply += chunk
                if not chunk or reply.startswith(b"-"):  # closed, or an error such as NOAUTH
                    return None
    except OSError:
        return None
    m = re.search(rb"process_id:(\d+)", reply)
    return int(m.group(1)) if m else None


class LocalRedis:
    """A redis-server child process. Use as a context manager or call ``start()`` / ``stop()``.

    data_dir: where redis writes its log (and the AOF with ``persistence=True``); a temporary directory,
      removed on ``stop()``, when None.
    port: fixed port, or None to pick a free one (retried on a bind race).
    password: sets ``requirepass``; ``.url`` then carries it.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        port: int | None = None,
        host: str = "127.0.0.1",
        password: str | None = None,
        persistence: bool = False,
        binary: str | None = None,
        startup_timeout_s: float = 10.0,
    ) -> None:
        self.binary = _find_binary(binary)
        self.host = host
        self._fixed_port = port is not None
        self.port: int = port if port is not None else free_port(host)
        self.password = password
        self.persistence = persistence
        self.startup_timeout_s = startup_timeout_s
        self._own_dir = data_dir is None
        self.data_dir = (
            Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="vidpipe-redis-"))
        )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _args(self) -> list[str]:
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(self.data_dir),
            "--daemonize", "no",
            "--save", "",
            "--logfile", "",
            "--appendonly", "yes" if self.persistence else "no",
        ]  # fmt: skip
        if self.password:
            # a config file (0600) rather than "--requirepass": argv is readable by every local user
            return [self.binary, str(self._write_secret_conf()), *args[1:]]
        return args

    @property
    def conf_path(self) -> Path:
        return self.data_dir / "redis.conf"

    def _write_secret_conf(self) -> Path:
        """``requirepass`` in ``<data_dir>/redis.conf``, created 0600 (replaced atomically if present)."""
        assert self.password is not None
        if any(c in self.password for c in '"\\\r\n'):
            raise RedisServerError("the redis password must not contain quotes, backslashes or newlines")
        tmp = self.conf_path.with_suffix(".conf.tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f'requirepass "{self.password}"\n')
        os.replace(tmp, self.conf_path)
        return self.conf_path

    def start(self) -> LocalRedis:
        if self.running:
            return self
        attempts = 1 if self._fixed_port else 5
        last = ""
        for _ in range(attempts):
            try:
                self._spawn_and_wait()
                return self
            except RedisServerError as exc:
                last = str(exc)
                if "in use" not in last or self._fixed_port:
                    raise
                self.port = free_port(self.host)  # lost a race for the port: try another one
        raise RedisServerError(last)

    def _spawn_and_wait(self) -> None:
        with open(self.log_path, "ab") as log:
            parent = os.getpid()
            self.proc = subprocess.Popen(
                self._args(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # the terminal's Ctrl-C is for the pipeline, which stops us last
                preexec_fn=lambda: die_with_parent(parent),  # noqa: PLW1509 - only prctl and getppid
            )
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self._log_tail()
                self.proc = None
                reason = "port in use" if "Address already in use" in tail else "exited"
                raise RedisServerError(
                    f"redis-server on {self.host}:{self.port} {reason} at startup; log {self.log_path}:\n{tail}"
                )
            pid = _server_pid(self.host, self.port, self.password)
            if pid == self.proc.pid:
                return
            if pid is not None:  # someone else's server holds the port; ours will fail to bind
                self.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            time.sleep(0.02)
        self.kill()
        raise RedisServerError(
            f"redis-server on {self.host}:{self.port} did not answer PING within {self.startup_timeout_s}s; "
            f"log {self.log_path}:\n{self._log_tail()}"
        )

    def _log_tail(self, n: int = 10) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def _end(self, sig: int, timeout: float) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: a crash. Unless ``persistence=True``, the data is gone."""
        self._end(signal.SIGKILL, 5.0)

    def pause(self) -> None:
        """SIGSTOP: the server hangs (accepts TCP, never answers) until ``resume()``."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> LocalRedis:
        """Stop (if running) and start again on the same port and data dir."""
        self._end(signal.SIGTERM, 5.0)
        self._fixed_port = True
        return self.start()

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM and wait up to ``timeout`` (then SIGKILL); removes the data dir if this object created it."""
        if self.proc is not None:
            self.resume()  # a stopped process would not handle SIGTERM
        self._end(signal.SIGTERM, max(0.1, timeout))
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"LocalRedis({self.host}:{self.port}, {state}, dir={self.data_dir})"
