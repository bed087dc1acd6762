"""Checks that run before the model loads, so a setting to fix is reported in seconds, not after 30-60 s.

Ports (the web app's; the metrics server is simply started before the model), and file sources (a missing
file or a text file is known at once). Live sources are not judged here: they reconnect on their own.
"""

from __future__ import annotations

import socket

from pipeline.config.schema import PipelineConfig
from pipeline.ingest.decoder import probe_file_source


def port_problem(host: str, port: int) -> str | None:
    """None if ``host:port`` can be listened on now (port 0 always can); else the OS's reason.

    Binds with SO_REUSEADDR like the servers do, then closes: a port another server holds is refused, a
    port in TIME_WAIT is not."""
    if port == 0:
        return None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return f"cannot resolve {host!r} ({exc})"
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def source_failures(cfg: PipelineConfig) -> dict[str, str]:
    """Enabled file cameras whose source cannot be opened as a video: camera id -> reason."""
    failures: dict[str, str] = {}
    for cam in cfg.cameras:
        if cam.enabled and (reason := probe_file_source(cam)) is not None:
            failures[cam.id] = reason
    return failures
