"""What a camera ``source`` string means to FFmpeg: its kind, how to open it, and how to show it safely."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

SourceKind = Literal["file", "rtsp", "http", "v4l2", "stream"]

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:@/\s'\"]*):(?P<pw>[^/\s'\"]*)@")
_QUERY_PASSWORD = re.compile(r"(?i)\b(password|passwd|pass|pwd)=[^&\s'\"]*")


def redact_url(text: str) -> str:
    """``rtsp://user:secret@host/x`` -> ``rtsp://user:***@host/x``, also inside longer text (error messages).

    Also hides ``password=``/``pass=``/``pwd=`` query values, which some cameras take instead.
    """
    out = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    return _QUERY_PASSWORD.sub(r"\1=***", out)


def source_kind(source: str) -> SourceKind:
    s = source.lower()
    if s.startswith(("rtsp://", "rtsps://")):
        return "rtsp"
    if s.startswith(("http://", "https://")):
        return "http"
    if s.startswith("/dev/video"):
        return "v4l2"
    if re.match(r"^[a-z][a-z0-9+.-]*://", s):
        return "stream"  # rtmp://, udp://, srt:// ...: live, opened with FFmpeg's defaults
    return "file"


@dataclass(frozen=True)
class OpenSpec:
    """Arguments for ``av.open``: ``url``, ``format`` (None = probe) and FFmpeg ``options``."""

    url: str
    format: str | None = None
    options: dict[str, str] = field(default_factory=dict)


def open_spec(source: str, *, rtsp_transport: str = "tcp", read_timeout_s: float = 5.0) -> OpenSpec:
    """FFmpeg options per source kind.

    The socket timeouts here are a second line of defence: the decoder also passes PyAV's own
    ``timeout=(open, read)``, which interrupts any blocking FFmpeg call.
    """
    kind = source_kind(source)
    timeout_us = str(int(read_timeout_s * 1_000_000))
    if kind == "rtsp":
        return OpenSpec(
            source,
            options={"rtsp_transport": rtsp_transport, "timeout": timeout_us},
        )
    if kind == "http":
        # We reconnect ourselves (with back-off and status events), so FFmpeg's own reconnect stays off.
        return OpenSpec(source, options={"timeout": timeout_us, "reconnect": "0"})
    if kind == "v4l2":
        return OpenSpec(source, format="v4l2")
    return OpenSpec(source)
