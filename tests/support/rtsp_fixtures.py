"""A real RTSP server (GStreamer gst-rtsp-server, tests/support/rtsp_server.py) on 127.0.0.1 for tests.

The server runs under Debian's /usr/bin/python3 because PyGObject is not installable in the venv. The fixture
``rtsp_server`` gives an ``RtspServer`` already serving the demo clip at ``url``; tests may ``stop()`` it
(SIGTERM, then SIGKILL), ``start()`` it again on the same port, ``pause()`` it (SIGSTOP: the socket stays
open but nothing is sent, like a hung camera) and ``resume()`` it (SIGCONT). It is always killed at the end.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.deliver.redis_server import free_port
from tests.support.media_fixtures import Clip

SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")
SYSTEM_PYTHON = "/usr/bin/python3"


def gst_rtsp_available() -> str | None:
    """None when the server can run here, else why not."""
    if not os.path.exists(SYSTEM_PYTHON):
        return f"{SYSTEM_PYTHON} not found"
    probe = (
        "import gi; gi.require_version('Gst','1.0'); gi.require_version('GstRtspServer','1.0'); "
        "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
        "assert Gst.ElementFactory.find('h264parse') and Gst.ElementFactory.find('rtph264pay')"
    )
    r = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=30)
    if r.returncode:
        return "GStreamer RTSP server not usable: " + (r.stderr.strip().splitlines() or ["?"])[-1]
    return None


class RtspServer:
    def __init__(self, h264_file: Path, port: int | None = None, mount: str = "/test", fps: int = 25) -> None:
        self.h264_file = Path(h264_file)
        self.port = port or free_port()
        self.mount = mount
        self.fps = fps
        self.proc: subprocess.Popen[str] | None = None
        self.paused = False

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}{self.mount}"

    def start(self, timeout: float = 20.0) -> None:
        """Start (or restart, on the same port) and wait until it accepts connections."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("RTSP server already running")
        deadline = time.monotonic() + timeout
        while True:  # the port can linger for a moment after a kill: retry until it binds
            self.proc = subprocess.Popen(
                [SYSTEM_PYTHON, str(SERVER_SCRIPT), "--file", str(self.h264_file), "--port", str(self.port),
                 "--mount", self.mount, "--fps", str(self.fps)],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
            self.paused = False
            line = self._read_line(deadline)
            if line.startswith("READY") and self._port_open(deadline):
                return
            self._kill()
            if time.monotonic() > deadline:
                raise RuntimeError(f"RTSP server on port {self.port} did not start: {line!r}")
            time.sleep(0.2)

    def _read_line(self, deadline: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                return self.proc.stdout.readline().strip()
            if self.proc.poll() is not None:
                return f"exited with {self.proc.returncode}"
        return "timed out waiting for READY"

    def _port_open(self, deadline: float) -> bool:
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                time.sleep(0.05)
        return False

    def pause(self) -> None:
        """SIGSTOP: connections stay open but go silent (a hung camera)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 3 s); connections drop."""
        if self.proc is None:
            return
        if self.proc.poll() is not None:
            self._kill()
            return
        if self.paused:
            self.resume()
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(3)
        self._kill()  # SIGKILL if still alive; closes the pipe either way

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc is not None and self.proc.stdout is not None and not self.proc.stdout.closed:
            self.proc.stdout.close()


@pytest.fixture(scope="session")
def rtsp_support() -> None:
    why = gst_rtsp_available() if shutil.which(SYSTEM_PYTHON) else f"{SYSTEM_PYTHON} not found"
    if why:
        pytest.skip(f"RTSP tests need Debian's python3-gi + gir1.2-gst-rtsp-server-1.0: {why}")


@pytest.fixture
def rtsp_server(rtsp_support: None, demo_h264: Clip) -> Iterator[RtspServer]:
    server = RtspServer(demo_h264.path, fps=demo_h264.fps)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        server._kill()
