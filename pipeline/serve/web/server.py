"""Runs the web app on uvicorn in a background thread of the pipeline process.

Bounds at the HTTP level (besides the body checks in ``app.BodyLimits``): idle keep-alive connections are
closed after ``web.idle_timeout_s``; more than ``web.max_connections`` concurrent connections or requests
get 503; blocking work runs on at most ``web.worker_threads`` threads; headers are capped by h11.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from pipeline.config.doors import DoorConfig
from pipeline.config.faces import FacesConfig
from pipeline.config.web import WebConfig
from pipeline.serve.web.auth import Auth, load_or_create_password
from pipeline.serve.web.context import WebContext

if TYPE_CHECKING:
    from pipeline.config.schema import PipelineConfig
    from pipeline.run.runner import Pipeline

log = logging.getLogger(__name__)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus a request-head deadline: a connection that has no request in flight and
    has not completed a request's head within ``timeout_keep_alive`` seconds of opening (or of its last
    response) is closed. uvicorn's own keep-alive timer is cancelled by any received byte, so without this
    a client that connects and sends nothing, or dribbles a header a byte at a time, holds a slot forever."""

    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
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
        self.config = uvicorn.Config(
            self.app,
            http=GuardedH11Protocol,
            log_level="warning",
            access_log=False,
            timeout_keep_alive=max(1, int(round(web.idle_timeout_s))),
            limit_concurrency=web.max_connections + 1,  # uvicorn refuses at >= limit, counting the new one
            h11_max_incomplete_event_size=16 * 1024,
            lifespan="off",
            server_header=False,
        )
        self.server = uvicorn.Server(self.config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = self.ctx.web.host
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
        return f"http://{shown}:{self.port}/"

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
