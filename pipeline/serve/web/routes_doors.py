"""Doors: recent decisions (who, where, why; signature and audit chain verified) and lock-down switches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio.to_thread
import redis
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pipeline.analyze.doors.audit import AuditError, verify_log
from pipeline.analyze.doors.lockdown import Lockdown, LockdownError, lockdown_path
from pipeline.analyze.doors.signing import Verifier, VerifyError
from pipeline.config.doors import DoorConfig
from pipeline.core.events import Event
from pipeline.serve.web.context import WebContext
from pipeline.serve.web.events_store import EventFilter, EventStore
from pipeline.serve.web.handlers import back, checked_form, ctx_of, json_body, page
from pipeline.serve.web.routes_events import event_store

#: newest decisions shown per door (each one's signature is checked)
SHOWN_DECISIONS = 30


def audit_path(ctx: WebContext, door: DoorConfig) -> Path:
    return ctx.resolve(door.audit_log)


def lockdown_for(ctx: WebContext, door: DoorConfig) -> Lockdown:
    return Lockdown(lockdown_path(audit_path(ctx, door)))


def signature_check(door: DoorConfig, ev_json: Event) -> str:
    """'ok' or why not. Age and nonce are not checked here (this is history, not a door opening)."""
    try:
        key = door.secret_bytes()
    except ValueError as exc:
        return f"key not available ({exc})"
    try:
        Verifier(door.id, key, max_age_s=1e12, max_skew_s=1e12).verify(ev_json)
    except VerifyError as exc:
        return str(exc)
    return "ok"


def door_rows(ctx: WebContext, store: EventStore | None) -> tuple[list[dict[str, Any]], str]:
    doors = {d.id: d for d in ctx.doors}
    out, problem = [], ""
    decisions: list[dict[str, Any]] = []
    if store is not None:
        try:
            decisions = store.recent(EventFilter(type="doors.decision"), limit=100)
        except redis.RedisError as exc:
            problem = f"Redis is not reachable ({exc})"
    for door in ctx.doors:
        try:
            ok, n, _, why = verify_log(audit_path(ctx, door), missing_ok=True)
        except AuditError as exc:
            ok, n, why = False, 0, str(exc)
        try:
            state = lockdown_for(ctx, door).states().get(door.id, {})
        except LockdownError as exc:
            state = {"locked": True, "reason": f"state unreadable, failing closed: {exc}"}
        rows: list[dict[str, Any]] = []
        for r in decisions:
            if len(rows) == SHOWN_DECISIONS:
                break
            if r["data"].get("door_id") != door.id:
                continue
            ev = Event(
                type=r["type"],
                camera_id=r["camera"],
                ts=r["ts"],
                frame_seq=r["frame_seq"],
                pts=r["pts"],
                data=r["data"],
                event_id=r["event_id"],
            )
            rows.append({**r, "signature": signature_check(doors[door.id], ev)})
        out.append(
            {
                "id": door.id,
                "cameras": door.cameras,
                "locked": bool(state.get("locked")),
                "lock": state,
                "audit_ok": ok,
                "audit_entries": n,
                "audit_problem": why,
                "decisions": rows,
            }
        )
    return out, problem


def _store(request: Request) -> EventStore | None:
    return event_store(request) if ctx_of(request).redis_url else None


async def doors_page(request: Request) -> Response:
    rows, problem = await anyio.to_thread.run_sync(door_rows, ctx_of(request), _store(request))
    return page(request, "doors.html", doors=rows, err=problem or request.query_params.get("err", ""))


def set_lockdown(ctx: WebContext, door_id: str, locked: bool, by: str, reason: str) -> None:
    door = next((d for d in ctx.doors if d.id == door_id), None)
    if door is None:
        raise HTTPException(404, f"no door {door_id!r}")
    try:
        lockdown_for(ctx, door).set(door_id, locked, by=by, reason=reason, audit_log=audit_path(ctx, door))
    except AuditError as exc:
        raise HTTPException(
            503, f"door {door_id}: the change cannot be audited, so it was not made: {exc}"
        ) from None
    except LockdownError as exc:
        raise HTTPException(
            409, f"door {door_id}: every door stays locked until the state file is repaired or removed: {exc}"
        ) from None


async def form_lockdown(request: Request) -> Response:
    form = await checked_form(request)
    door_id = request.path_params["door"]
    locked = form.get("locked") == "1"
    reason = str(form.get("reason") or "").strip()[:200] or (
        "locked from the web app" if locked else "lifted"
    )
    by = f"web ({request.client.host if request.client else '?'})"
    try:
        await anyio.to_thread.run_sync(set_lockdown, ctx_of(request), door_id, locked, by, reason)
    except HTTPException as exc:
        return back("/doors", err=str(exc.detail))
    return back("/doors", msg=f"door {door_id} {'locked down' if locked else 'lock-down lifted'}")


async def api_doors(request: Request) -> Response:
    rows, problem = await anyio.to_thread.run_sync(door_rows, ctx_of(request), _store(request))
    return JSONResponse({"doors": rows, "problem": problem})


async def api_lockdown(request: Request) -> Response:
    body = await json_body(request)
    if not isinstance(body.get("locked"), bool):
        raise HTTPException(400, 'body must be {"locked": true|false, "reason": str}')
    by = f"api ({request.client.host if request.client else '?'})"
    reason = str(body.get("reason") or "")[:200]
    await anyio.to_thread.run_sync(
        set_lockdown, ctx_of(request), request.path_params["door"], body["locked"], by, reason
    )
    return JSONResponse({"door": request.path_params["door"], "locked": body["locked"]})


def routes() -> list[Route]:
    return [
        Route("/doors", doors_page),
        Route("/doors/{door}/lockdown", form_lockdown, methods=["POST"]),
        Route("/api/doors", api_doors),
        Route("/api/doors/{door}/lockdown", api_lockdown, methods=["POST"]),
    ]
