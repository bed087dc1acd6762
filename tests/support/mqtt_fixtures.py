"""MQTT fixtures: a real Mosquitto broker (Debian's /usr/sbin/mosquitto) on a free 127.0.0.1 port per test.

make_mosquitto: a factory, e.g. ``make_mosquitto(users={"cam": "pw"})`` (then anonymous clients are refused);
                every broker it made is stopped after the test. Brokers persist their state to disk (saved
                every second), so a subscriber's session and its queued QoS 1 messages survive ``kill()`` +
                ``restart()`` as with a production broker.
mosquitto:      a started anonymous broker.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.deliver.redis_server import free_port

BINARY = "/usr/sbin/mosquitto"


class LocalMosquitto:
    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        users: dict[str, str] | None = None,
        tls: bool = False,
    ) -> None:
        """tls: also listen with TLS on ``tls_port`` (a self-signed certificate for localhost/127.0.0.1,
        made here with openssl; ``ca_file`` trusts it)."""
        if not os.access(BINARY, os.X_OK):
            pytest.skip(f"{BINARY} not installed (apt-get install mosquitto; scripts/setup.sh does)")
        self.data_dir = data_dir
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.proc: subprocess.Popen[bytes] | None = None
        self.tls_port: int | None = None
        self.ca_file: Path | None = None
        lines = [
            f"listener {self.port} {self.host}",
            f"allow_anonymous {'false' if users else 'true'}",
            "persistence true",
            f"persistence_location {data_dir}/",
            "autosave_interval 1",
            f"log_dest file {data_dir}/mosquitto.log",
            "user root",
        ]
        if users:
            pw_file = data_dir / "passwd"
            pw_file.touch()
            for user, password in users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(pw_file), user, password], check=True)
            lines.append(f"password_file {pw_file}")
        if tls:
            key, cert = data_dir / "key.pem", data_dir / "cert.pem"
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout", str(key),
                 "-out", str(cert), "-subj", "/CN=localhost",
                 "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                check=True, capture_output=True,
            )  # fmt: skip
            self.tls_port = free_port()
            self.ca_file = cert
            lines += [f"listener {self.tls_port} {self.host}", f"certfile {cert}", f"keyfile {key}"]
        self.conf = data_dir / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")

    def url(self, user: str | None = None, password: str | None = None, tls: bool = False) -> str:
        cred = f"{user}:{password}@" if user else ""
        if tls:
            return f"mqtts://{cred}localhost:{self.tls_port}"
        return f"mqtt://{cred}{self.host}:{self.port}"

    def start(self) -> LocalMosquitto:
        self.proc = subprocess.Popen(
            [BINARY, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: {err}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on port {self.port} within 10s")

    def _end(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: no clean shutdown; what it saved (every second) is all it keeps."""
        self._end(signal.SIGKILL)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> LocalMosquitto:
        self._end(signal.SIGTERM)
        return self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
        self._end(signal.SIGTERM)


@pytest.fixture
def make_mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., LocalMosquitto]]:
    brokers: list[LocalMosquitto] = []

    def factory(**kwargs: Any) -> LocalMosquitto:
        data_dir = tmp_path_factory.mktemp("mosquitto")
        broker = LocalMosquitto(data_dir, **kwargs).start()
        brokers.append(broker)
        return broker

    yield factory
    for broker in brokers:
        broker.stop()
        shutil.rmtree(broker.data_dir, ignore_errors=True)


@pytest.fixture
def mosquitto(make_mosquitto: Callable[..., LocalMosquitto]) -> LocalMosquitto:
    return make_mosquitto()
