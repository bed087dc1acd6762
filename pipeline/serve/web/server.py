"""Runs the web app on uvicorn in a background thread of the pipeline process.

Bounds at the HTTP level (besides the body checks in ``app.BodyLimits``): idle keep-alive connections are
closed after ``web.idle_timeout_s``; a request body must arrive within ``web.body_timeout_s`` (408); one
client address holds at most ``web.max_connections_per_client`` connections; more than
``web.max_connections`` concurrent connections or requests get 503; blocking work runs on at most
``web.worker_threads`` threads; headers are capped by h11. uvicorn's own X-Forwarded-* handling is off
(it trusts 127.0.0.1): ``net.ProxyAndHost`` believes only ``web.trusted_proxies``. With ``web.tls_cert``
and ``web.tls_key`` it serves HTTPS.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from pipeline.config.doors import DoorConfig
from pipeline.config.faces import FacesConfig
from pipeline.config.web import WebConfig
from pipeline.serve.web.auth import SESSIONS_FILE, Auth, load_or_create_password, load_or_create_secret
from pipeline.serve.web.context import WebContext
from pipeline.serve.web.net import ClientLimits

if TYPE_CHECKING:
    from pipeline.config.schema import PipelineConfig
    from pipeline.run.runner import Pipeline

log = logging.getLogger(__name__)


def _raw_response(status: str, text: str) -> bytes:
    body = text.encode() + b"\n"
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    ).encode() + body


_TOO_MANY = _raw_response("503 Service Unavailable", "too many connections from this address")
_BODY_TIMEOUT = _raw_response("408 Request Timeout", "the request body did not arrive in time")


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus a request-head deadline: a connection that has no request in flight and
    has not completed a request's head within ``timeout_keep_alive`` seconds of opening (or of its last
    response) is closed. uvicorn's own keep-alive timer is cancelled by any received byte, so without this
    a client that connects and sends nothing, or dribbles a header a byte at a time, holds a slot forever."""

    _head_timer: asyncio.TimerHandle | None = None
    _body_timer: asyncio.TimerHandle | None = None
    _body_cycle: object = None
    _client_key: str | None = None
    #: set per server (``WebServer``): the per-client connection cap and the body deadline
    client_limits: ClientLimits | None = None
    body_timeout_s: float = 30.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        if self.client_limits is not None:
            self._client_key = self.client_limits.acquire(transport.get_extra_info("peername"))
            if self._client_key is None:  # this client holds its share of the connections already
                transport.write(_TOO_MANY)  # type: ignore[attr-defined]
                transport.close()
                return
        self._arm_head_timer()

    def handle_events(self) -> None:
        super().handle_events()
        cycle = self.cycle
        if cycle is not None and cycle is not self._body_cycle and cycle.more_body:
            self._body_cycle = cycle  # a new request whose body is still coming: it has a deadline
            if self._body_timer is not None:
                self._body_timer.cancel()
            self._body_timer = self.loop.call_later(self.body_timeout_s, self._body_timeout, cycle)

    def _body_timeout(self, cycle: object) -> None:
        """The body did not arrive in time: 408 if nothing was answered yet, and the connection is closed
        (the handler waiting for the body sees a disconnect), so a body that never comes holds no slot."""
        self._body_timer = None
        if cycle is not self.cycle or not getattr(cycle, "more_body", False) or self.transport.is_closing():
            return
        if not getattr(cycle, "response_started", True):
            self.transport.write(_BODY_TIMEOUT)
        self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        if self.client_limits is not None and self._client_key is not None:
            self.client_limits.release(self._client_key)
            self._client_key = None
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = self.loop.call_later(self.timeout_keep_alive, self._head_timeout)

    def _head_timeout(self) -> None:
        self._head_timer = None
        in_flight = self.cycle is not None and not self.cycle.response_complete
        if not in_flight and not self.transport.is_closing():
            self.transport.close()


class WebServer:
    def __init__(self, ctx: WebContext) -> None:
        from pipeline.serve.web.app import create_app
        from pipeline.serve.web.routes_live import LiveEncoder

        self.ctx = ctx
        self.app = create_app(ctx)
        self.app.state.live = LiveEncoder()
        web = ctx.web
        try:
            self.sock = socket.create_server((web.host, web.port), reuse_port=False)
        except OSError as exc:
            raise OSError(
                f"web: cannot listen on {web.host}:{web.port} ({exc.strerror or exc}); set web.port"
            ) from None
        self.port = int(self.sock.getsockname()[1])
        protocol = type(
            "ServerH11Protocol",
            (GuardedH11Protocol,),
            {
                "client_limits": ClientLimits(web.max_connections_per_client, web.trusted_proxies),
                "body_timeout_s": web.body_timeout_s,
            },
        )
        self.config = uvicorn.Config(
            self.app,
            http=protocol,
            proxy_headers=False,  # uvicorn would trust X-Forwarded-For from 127.0.0.1; net.py decides
            ssl_certfile=web.tls_cert,
            ssl_keyfile=web.tls_key,
            log_level="warning",
            access_log=False,
            timeout_keep_alive=max(1, int(round(web.idle_timeout_s))),
            limit_concurrency=web.max_connections + 1,  # uvicorn refuses at >= limit, counting the new one
            h11_max_incomplete_event_size=16 * 1024,
            lifespan="off",
            server_header=False,
        )
        try:
            self.config.load()  # reads the certificate now: a wrong path stops the start with its name
        except (OSError, ssl.SSLError) as exc:
            self.sock.close()
            raise OSError(f"web: cannot use tls_cert {web.tls_cert} / tls_key {web.tls_key}: {exc}") from None
        self.server = uvicorn.Server(self.config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = self.ctx.web.host
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
        scheme = "https" if self.ctx.web.tls_cert else "http"
        return f"{scheme}://{shown}:{self.port}/"

    def _run(self) -> None:
        async def main() -> None:
            import anyio.to_thread

            anyio.to_thread.current_default_thread_limiter().total_tokens = self.ctx.web.worker_threads
            await self.server.serve(sockets=[self.sock])

        asyncio.run(main())

    def start(self) -> WebServer:
        self._thread = threading.Thread(target=self._run, name="web", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self.sock.close()


def make_context(
    web: WebConfig,
    faces: FacesConfig,
    var_dir: Path,
    *,
    pipeline: Pipeline | None = None,
    cfg: PipelineConfig | None = None,
    config_path: Path | None = None,
    doors: list[DoorConfig] | None = None,
) -> tuple[WebContext, str | None]:
    """(context, a newly generated password to print once, or None)."""
    stored, new_password = load_or_create_password(var_dir / "web", web.password_env)
    secret = load_or_create_secret(var_dir / "web")
    import os

    from pipeline.analyze.faces.api import api_token

    configured = faces.api.token is not None or bool(os.environ.get(faces.api.token_env or "", ""))
    token = api_token(faces) if configured else None  # none: the API takes the login session only
    auth = Auth(
        stored,
        session_ttl_s=web.session_ttl_s,
        max_attempts=web.login_attempts,
        window_s=web.login_window_s,
        api_token=token,
        lockout_max_s=web.login_lockout_max_s,
        slowdown_max_s=web.login_slowdown_max_s,
        secret=secret,
        store_path=var_dir / "web" / SESSIONS_FILE,
    )
    ctx = WebContext(
        web=web,
        auth=auth,
        faces=faces,
        var_dir=var_dir,
        pipeline=pipeline,
        config_path=config_path,
        redis_url=cfg.redis.url if cfg else None,
        redis_prefix=cfg.redis.prefix if cfg else "vidpipe",
        doors=list(doors if doors is not None else (cfg.doors if cfg else [])),
    )
    return ctx, new_password


def first_login_note(new_password: str | None, var_dir: Path, env: str) -> str:
    if new_password is None:
        return f"web login: the password from ${env} or {var_dir / 'web' / 'password.scrypt'}"
    return (
        f"web login: first start, a password was generated: {new_password}\n"
        f"  (shown only now; stored hashed in {var_dir / 'web' / 'password.scrypt'}; delete that file for a "
        f"new one, or set ${env})"
    )
