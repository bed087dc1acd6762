"""Request helpers every route module uses: the app's context, CSRF-checked forms and JSON bodies, pages
and redirects.

They live below ``app`` (which assembles the routes) so that the route modules never import the module
that imports them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from pipeline.serve.web.context import WebContext

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
_UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}


def ctx_of(request: Request) -> WebContext:
    ctx: WebContext = request.app.state.ctx
    return ctx


# -- CSRF ----------------------------------------------------------------------------------------------
async def checked_form(request: Request) -> FormData:
    """The request's form after checking its csrf_token against the session (403 otherwise)."""
    max_bytes = ctx_of(request).web.max_body_bytes
    form = await request.form(max_files=50, max_fields=100, max_part_size=max_bytes)
    token = form.get("csrf_token")
    if not ctx_of(request).auth.check_csrf(request.state.sid, token if isinstance(token, str) else None):
        raise HTTPException(403, "missing or wrong CSRF token (reload the page and try again)")
    return form


def check_api_csrf(request: Request) -> None:
    """A cookie-authenticated API call that changes something must carry X-CSRF-Token; bearer calls need
    none (a browser never attaches a bearer token on its own)."""
    if request.method in _UNSAFE and request.state.via == "session":
        token = request.headers.get("x-csrf-token")
        if not ctx_of(request).auth.check_csrf(request.state.sid, token):
            raise HTTPException(403, "missing or wrong X-CSRF-Token header")


async def json_body(request: Request) -> dict[str, Any]:
    check_api_csrf(request)
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        raise HTTPException(400, "body is not valid JSON") from None
    if not isinstance(body, dict):
        raise HTTPException(400, "body must be a JSON object")
    return body


def page(request: Request, name: str, **context: Any) -> Response:
    sess = ctx_of(request).auth.session(getattr(request.state, "sid", None))
    context.setdefault("msg", request.query_params.get("msg", ""))
    context.setdefault("err", request.query_params.get("err", ""))
    return templates.TemplateResponse(
        request, name, {"csrf": sess.csrf if sess else "", "nav": name.split(".")[0], **context}
    )


def back(path: str, msg: str = "", err: str = "") -> RedirectResponse:
    q = f"?msg={quote(msg)}" if msg else (f"?err={quote(err)}" if err else "")
    return RedirectResponse(path + q, status_code=303)


# -- login ---------------------------------------------------------------------------------------------
