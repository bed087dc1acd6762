"""Events: a timeline from the Redis Streams with filters and best-frame snapshots; live via SSE."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import anyio.to_thread
import redis
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from pipeline.serve.web.events_store import EventFilter, EventHub, EventStore
from pipeline.serve.web.handlers import ctx_of, page

IDLE_COMMENT_S = 5.0  # an idle stream sends a comment this often (proxies and browsers keep it open)


def _time(v: str, name: str) -> float | None:
    if not v:
        return None
    try:
        return float(v)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(v).timestamp()
    except ValueError:
        raise HTTPException(400, f"{name}: expected epoch seconds or an ISO time, got {v[:40]!r}") from None


def _filter(request: Request) -> EventFilter:
    q = request.query_params
    return EventFilter(
        camera=q.get("camera", ""),
        type=q.get("type", ""),
        label=q.get("label", ""),
        since=_time(q.get("since", ""), "since"),
        until=_time(q.get("until", ""), "until"),
    )


_T = TypeVar("_T")


def _per_app(request: Request, attr: str, make: Callable[[str, str], _T]) -> _T:
    """The app's one ``make(redis_url, prefix)`` reader, created on first use; 404 when no Redis is set."""
    ctx = ctx_of(request)
    if not ctx.redis_url:
        raise HTTPException(404, "no Redis configured for this server (events need the pipeline's Redis)")
    reader: _T | None = getattr(request.app.state, attr, None)
    if reader is None:
        reader = make(ctx.redis_url, ctx.redis_prefix)
        setattr(request.app.state, attr, reader)
    return reader


def event_store(request: Request) -> EventStore:
    """The app's one EventStore (the timeline's queries)."""
    return _per_app(request, "events", EventStore)


async def _recent(request: Request, flt: EventFilter) -> tuple[list[dict], str]:
    try:
        return await anyio.to_thread.run_sync(event_store(request).recent, flt), ""
    except redis.RedisError as exc:
        return [], f"Redis is not reachable ({exc}); events wait in the spool"


async def events_page(request: Request) -> Response:
    flt = _filter(request)
    rows, problem = await _recent(request, flt)
    pipe = ctx_of(request).pipeline
    cams = [c.id for c in pipe.camera_configs()] if pipe is not None else []
    base = ctx_of(request).snapshots_dir.resolve()
    for r in rows:
        r["snapshot_url"] = ""
        if r["snapshot"]:
            with contextlib.suppress(ValueError):
                r["snapshot_url"] = "/snapshots/" + str(Path(r["snapshot"]).resolve().relative_to(base))
    return page(
        request,
        "events.html",
        events=rows,
        flt=flt,
        cameras=cams,
        err=problem,
        since_value=_input_value(flt.since),
        until_value=_input_value(flt.until),
    )


def _input_value(t: float | None) -> str:
    """A filter time as a datetime-local field shows it (the server's local time, as naive ISO times sent
    by the field are read), so the form keeps its values after filtering."""
    return "" if t is None else datetime.fromtimestamp(t).strftime("%Y-%m-%dT%H:%M:%S")


async def api_events(request: Request) -> Response:
    rows, problem = await _recent(request, _filter(request))
    if problem:
        raise HTTPException(503, problem)
    return JSONResponse({"events": rows})


def event_hub(request: Request) -> EventHub:
    """The app's one live-event reader (created on first use, on the event loop)."""
    return _per_app(request, "event_hub", EventHub)


async def api_events_stream(request: Request) -> Response:
    """Server-sent events: one ``data:`` line per new matching event, a comment every few seconds. Runs
    on the event loop: an open stream holds a queue of the app's one Redis reader, not a thread."""
    hub = event_hub(request)
    sub = hub.subscribe(_filter(request))

    async def gen() -> AsyncIterator[str]:
        try:
            yield ": connected\n\n"
            while True:
                try:
                    r = await asyncio.wait_for(sub.queue.get(), timeout=IDLE_COMMENT_S)
                except TimeoutError:
                    yield f": idle{' (' + hub.problem + ')' if hub.problem else ''}\n\n"
                    continue
                yield f"data: {json.dumps(r, default=str)}\n\n"
        finally:
            hub.unsubscribe(sub)

    return StreamingResponse(gen(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})


async def snapshot(request: Request) -> Response:
    """A best-frame snapshot written by the tracker (only files under <var-dir>/snapshots)."""
    base = ctx_of(request).snapshots_dir.resolve()
    path = Path(request.path_params["path"])
    full = (base / path).resolve() if not path.is_absolute() else path.resolve()
    if (
        not full.is_relative_to(base)
        or not full.is_file()
        or full.suffix.lower() not in (".jpg", ".jpeg", ".png")
    ):
        raise HTTPException(404, "no such snapshot")
    return FileResponse(full, headers={"Cache-Control": "no-store"})


_CLIP_MEDIA = {".mp4": "video/mp4", ".webm": "video/webm", ".mkv": "video/x-matroska"}


async def clip(request: Request) -> Response:
    """A clip cut by the clip writer (only ``*.mp4|webm|mkv`` under the clips directory; behind the login)."""
    base = ctx_of(request).clips_dir.resolve()
    full = (base / request.path_params["path"]).resolve()
    media = _CLIP_MEDIA.get(full.suffix.lower())
    if not full.is_relative_to(base) or not full.is_file() or media is None:
        raise HTTPException(404, "no such clip (not written yet, or deleted by the clips quota)")
    return FileResponse(full, media_type=media, headers={"Cache-Control": "private, max-age=3600"})


def routes() -> list[Route]:
    return [
        Route("/events", events_page),
        Route("/api/events", api_events),
        Route("/api/events/stream", api_events_stream),
        Route("/snapshots/{path:path}", snapshot),
        Route("/clips/{path:path}", clip),
    ]
