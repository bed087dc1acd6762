"""The Starlette application: routes, login gate, CSRF, request-size bounds.

Pages are server-rendered (Jinja2) with a little JavaScript from ``static/``; every JSON call lives under
``/api`` (the faces gallery API that used to be a stdlib server is here now).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from pipeline.serve.web import routes_doors, routes_events, routes_faces, routes_live
from pipeline.serve.web.context import WebContext
from pipeline.serve.web.handlers import HERE, checked_form, ctx_of, templates
from pipeline.serve.web.net import ProxyAndHost

SESSION_COOKIE = "vidpipe_session"
DEVICE_COOKIE = "vidpipe_device"  # a browser that logged in here before (its own login rate limit)
DEVICE_TTL_S = 400 * 24 * 3600
_OPEN_PATHS = ("/login", "/static/")


class BodyLimits:
    """HTTP-level input bounds before any handler runs: a body-carrying request needs a valid
    Content-Length (411 when missing or chunked, 400 when not a non-negative integer) no larger than
    ``web.max_body_bytes`` (413). So memory per request is bounded and known before reading."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            raw = headers.get("content-length")
            problem: tuple[int, str] | None = None
            if "chunked" in headers.get("transfer-encoding", "").lower() or raw is None:
                problem = (411, "Content-Length is required (chunked bodies are not accepted)")
            elif not raw.strip().isdigit():
                problem = (400, f"Content-Length must be a non-negative integer, got {raw[:40]!r}")
            elif int(raw) > self.max_body_bytes:
                problem = (
                    413,
                    f"body of {int(raw)} bytes is larger than web.max_body_bytes ({self.max_body_bytes})",
                )
            if problem is not None:
                resp: Response
                if scope["path"].startswith("/api/"):
                    resp = JSONResponse(
                        {"error": problem[1]}, status_code=problem[0], headers={"Connection": "close"}
                    )
                else:  # a person at a form (an upload too large): a page that says what to do
                    resp = _secure(templates.TemplateResponse(
                        Request(scope),
                        "error.html",
                        {"status": problem[0], "detail": self._page_detail(problem, raw), "nav": "",
                         "back": "/" + scope["path"].split("/")[1]},
                        status_code=problem[0],
                        headers={"Connection": "close"},
                    ))  # fmt: skip
                await resp(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _page_detail(self, problem: tuple[int, str], raw: str | None) -> str:
        if problem[0] == 413 and raw is not None:
            return (
                f"The upload is {_size(int(raw))}; this server takes at most {_size(self.max_body_bytes)} "
                "per request (web.max_body_bytes). Send fewer or smaller photos at a time."
            )
        return problem[1]


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1_000_000 else f"{n / 1e3:.1f} kB"


class LoginGate:
    """Every path but the login page and static files needs a session cookie (or, under /api, the bearer
    token): pages redirect to /login, API calls get 401. Adds security headers to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        path = request.url.path
        ctx: WebContext = scope["app"].state.ctx
        scope.setdefault("state", {})
        if not path.startswith(_OPEN_PATHS):
            sid = request.cookies.get(SESSION_COOKIE)
            if ctx.auth.session(sid) is not None:
                scope["state"]["sid"], scope["state"]["via"] = sid, "session"
            elif path.startswith("/api/") and ctx.auth.bearer_ok(request.headers.get("authorization", "")):
                scope["state"]["sid"], scope["state"]["via"] = None, "bearer"
            else:
                if path.startswith("/api/"):
                    resp: Response = JSONResponse({"error": "login required (session or bearer token)"}, 401)
                else:
                    resp = RedirectResponse(f"/login?next={quote(path)}", status_code=303)
                await _secure(resp)(scope, receive, send)
                return

        async def send_secure(message: Any) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + _SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, send_secure)


_SECURITY_HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' blob: data:; object-src 'none'; frame-ancestors 'none'",
    ),
]


def _secure(resp: Response) -> Response:
    for k, v in _SECURITY_HEADERS:
        resp.headers[k.decode()] = v.decode()
    return resp


async def login_page(request: Request) -> Response:
    return _secure(templates.TemplateResponse(request, "login.html", {"error": "", "next": _next(request)}))


def _next(request: Request) -> str:
    nxt = request.query_params.get("next", "/")
    return nxt if nxt.startswith("/") and not nxt.startswith("//") else "/"


async def login_submit(request: Request) -> Response:
    """Per-source lock-out (the client address, or the browser's device cookie when it logged in here
    before), and a global slowdown for browsers without one; the scrypt check runs on a worker thread so
    the event loop keeps serving."""
    ctx = ctx_of(request)
    device = ctx.auth.device_id(request.cookies.get(DEVICE_COOKIE))
    client = f"device:{device}" if device else (request.client.host if request.client else "?")
    wait = ctx.auth.retry_after(client)
    if wait > 0:
        resp = templates.TemplateResponse(
            request,
            "login.html",
            {"error": f"Too many failed logins; try again in {int(wait) + 1} s.", "next": _next(request)},
            status_code=429,
            headers={"Retry-After": str(int(wait) + 1)},
        )
        return _secure(resp)
    if device is None and (delay := ctx.auth.slowdown()) > 0:
        await asyncio.sleep(delay)
    form = await request.form(max_files=0, max_fields=5, max_part_size=4096)
    password = form.get("password")
    import anyio.to_thread

    sid = await anyio.to_thread.run_sync(
        ctx.auth.login, client, password if isinstance(password, str) else ""
    )
    if sid is None:
        resp = templates.TemplateResponse(
            request, "login.html", {"error": "Wrong password.", "next": _next(request)}, status_code=401
        )
        return _secure(resp)
    ok = RedirectResponse(_next(request), status_code=303)
    https = request.url.scheme == "https"
    # the device cookie first: a client that keeps one Set-Cookie per response keeps the session
    if device is None:
        ok.set_cookie(
            DEVICE_COOKIE,
            ctx.auth.device_token(),
            max_age=DEVICE_TTL_S,
            httponly=True,
            samesite="strict",
            path="/login",
            secure=https,
        )
    ok.set_cookie(
        SESSION_COOKIE,
        sid,
        max_age=int(ctx.web.session_ttl_s),
        httponly=True,
        samesite="strict",
        path="/",
        secure=https,
    )
    return _secure(ok)


async def logout(request: Request) -> Response:
    await checked_form(request)
    ctx_of(request).auth.logout(request.state.sid)
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(SESSION_COOKIE, path="/")
    return resp


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)
    return templates.TemplateResponse(
        request,
        "error.html",
        {"status": exc.status_code, "detail": exc.detail, "nav": ""},
        status_code=exc.status_code,
    )


def create_app(ctx: WebContext) -> Starlette:

    routes = [
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login_submit, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        *routes_live.routes(),
        *routes_faces.routes(),
        *routes_events.routes(),
        *routes_doors.routes(),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(
                ProxyAndHost,
                trusted_proxies=ctx.web.trusted_proxies,
                bind_host=ctx.web.host,
                allowed_hosts=ctx.web.allowed_hosts,
            ),
            Middleware(BodyLimits, max_body_bytes=ctx.web.max_body_bytes),
            Middleware(LoginGate),
        ],
        exception_handlers={HTTPException: http_error},
    )
    app.state.ctx = ctx
    app.state.started = time.time()
    return app
