"""Live view and cameras: the annotated newest frame per camera, camera status, and cameras at run time."""

from __future__ import annotations

import asyncio
import functools
import json
import threading
import time
from typing import Any

import anyio.to_thread
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pipeline.config.profiles import PROFILES
from pipeline.config.schema import CameraConfig, ConfigError, format_validation_error
from pipeline.core.sources import redact_url
from pipeline.core.types import FrameResult
from pipeline.serve.web.context import WebContext
from pipeline.serve.web.handlers import back, checked_form, ctx_of, json_body, page
from pipeline.serve.web.render import annotate, encode_jpeg, track_ids_for

LONG_POLL_S = 2.0


class LiveEncoder:
    """Encodes each camera's newest frame at most once, however many viewers ask (one-entry cache per
    camera); called on worker threads only."""

    def __init__(self) -> None:
        self._pending: dict[str, tuple[FrameResult, asyncio.Future[bytes]]] = {}
        self._cache: dict[str, tuple[FrameResult, bytes]] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.encoded = 0
        self.encode_cpu_s = 0.0  # thread CPU spent drawing + encoding (for the viewer-cost benchmark)

    async def jpeg_async(self, ctx: WebContext, cam_id: str, result: FrameResult) -> bytes:
        """On the event loop: a cached frame is answered at once; otherwise one worker thread encodes it
        and every viewer waiting for the same frame awaits that one encoding (no thread per viewer)."""
        hit = self._cache.get(cam_id)
        if hit is not None and hit[0] is result:
            return hit[1]
        pending = self._pending.get(cam_id)
        if pending is None or pending[0] is not result:
            fut = asyncio.ensure_future(anyio.to_thread.run_sync(self.jpeg, ctx, cam_id, result))
            pending = self._pending[cam_id] = (result, fut)
            fut.add_done_callback(functools.partial(self._forget, cam_id))
        return await asyncio.shield(pending[1])

    def _forget(self, cam_id: str, fut: asyncio.Future[bytes]) -> None:
        if self._pending.get(cam_id, (None, None))[1] is fut:
            del self._pending[cam_id]

    def jpeg(self, ctx: WebContext, cam_id: str, result: FrameResult) -> bytes:
        with self._guard:
            lock = self._locks.setdefault(cam_id, threading.Lock())
        with lock:
            hit = self._cache.get(cam_id)
            if hit is not None and hit[0] is result:
                return hit[1]
            pipe = ctx.pipeline
            assert pipe is not None
            cam = next((c for c in pipe.camera_configs() if c.id == cam_id), None)
            stage = pipe.analytics.get(cam_id)
            tracks = track_ids_for(result, stage.analyzers if stage else [])
            t0 = time.thread_time()
            data = encode_jpeg(annotate(result, cam.analytics if cam else None, tracks), ctx.web.jpeg_quality)
            self.encode_cpu_s += time.thread_time() - t0
            self._cache[cam_id] = (result, data)
            self.encoded += 1
            return data


def _pipeline(request: Request):  # noqa: ANN202 - Pipeline, imported lazily
    pipe = ctx_of(request).pipeline
    if pipe is None:
        raise HTTPException(404, "no pipeline runs in this process (faces-only server)")
    return pipe


def camera_rows(ctx: WebContext) -> list[dict[str, Any]]:
    pipe = ctx.pipeline
    if pipe is None:
        return []
    now = time.time()
    rows = []
    for cam in pipe.camera_configs():
        dec = pipe.decoders.get(cam.id)
        latest = pipe.latest.get(cam.id)
        m_dec = pipe.metrics.stage("decoder", cam.id)
        m_ana = pipe.metrics.stage("analytics", cam.id)
        if not cam.enabled:
            status, reason = "paused", "paused by the operator"
        elif dec is None:
            status, reason = "stopped", ""
        else:
            status, reason = dec.status, dec.status_reason or (dec.last_error or "")
        record = pipe.records.get(cam.id)
        if record is not None and not record.healthy() and not reason:
            reason = f"main stream down, clips from the detect stream: {record.reason}"
        rows.append(
            {
                "id": cam.id,
                "source": redact_url(cam.source),
                "record_source": redact_url(cam.record_source) if cam.record_source else None,
                # the main stream (clips only): "up", "down: why", or None (no record_source / not read)
                "record_status": None
                if record is None
                else "up"
                if record.healthy()
                else f"down: {record.reason}",
                "enabled": cam.enabled,
                "detect_fps": cam.detect_fps,
                "profile": cam.profile,
                "status": status,
                "online": status == "online",
                "reason": reason,
                "decode_fps": round(m_dec.fps(), 1),
                "detect_fps_now": round(m_ana.fps(), 1),
                "drops": m_dec.total_drops(),
                "frame_age_s": None if latest is None else round(now - latest.frame.capture_time, 2),
                "last_seq": None if latest is None else latest.frame.seq,
            }
        )
    return rows


# -- pages -----------------------------------------------------------------------------------------------
async def live_page(request: Request) -> Response:
    return page(request, "live.html", cameras=camera_rows(ctx_of(request)))


async def cameras_page(request: Request) -> Response:
    ctx = ctx_of(request)
    return page(
        request,
        "cameras.html",
        cameras=camera_rows(ctx),
        persisted=ctx.config_path is not None,
        profiles=sorted(PROFILES),
    )


# -- live frames -----------------------------------------------------------------------------------------
async def live_frame(request: Request) -> Response:
    """Long poll: the annotated JPEG of the camera's newest detected frame once it differs from ``after``
    (204 after 2 s without one). Headers carry the frame's seq, capture time and detections, so the page
    can show what it draws and measure capture-to-pixels delay."""
    ctx = ctx_of(request)
    pipe = _pipeline(request)
    cam_id = request.path_params["cam"]
    try:
        after = int(request.query_params.get("after", "-1"))
    except ValueError:
        raise HTTPException(400, "after must be an integer frame seq") from None
    deadline = time.monotonic() + LONG_POLL_S
    while True:
        if cam_id not in pipe.inboxes and cam_id not in {c.id for c in pipe.camera_configs()}:
            raise HTTPException(404, f"no camera {cam_id!r}")
        result = pipe.latest.get(cam_id)
        if result is not None and result.frame.seq != after:
            break
        if time.monotonic() > deadline or await request.is_disconnected():
            return Response(status_code=204, headers={"Cache-Control": "no-store"})
        await asyncio.sleep(0.01)
    encoder: LiveEncoder = request.app.state.live
    data = await encoder.jpeg_async(ctx, cam_id, result)
    dets = [
        {"label": r["label"], "score": r["score"], "box": r["box"]} for r in result.detections.to_dicts()[:50]
    ]
    return Response(
        data,
        media_type="image/jpeg",
        headers={
            "Cache-Control": "no-store",
            "X-Frame-Seq": str(result.frame.seq),
            "X-Capture-Time": f"{result.frame.capture_time:.6f}",
            "X-Server-Time": f"{time.time():.6f}",
            "X-Detections": json.dumps(dets, separators=(",", ":")),
        },
    )


# -- cameras: JSON API and form actions --------------------------------------------------------------------
def _camera_from(data: dict[str, Any], where: str) -> CameraConfig:
    try:
        return CameraConfig.model_validate(data)
    except ValidationError as err:
        raise HTTPException(400, format_validation_error(err, where)) from None


def apply_change(
    ctx: WebContext,
    change: str,
    cam_id: str,
    cam: CameraConfig | None = None,
    patch: dict[str, Any] | None = None,
) -> None:
    """Change the file first (it validates the whole config), then the running pipeline; if the pipeline
    refuses, the file change is undone so both keep agreeing. ``update`` takes a ``patch``: only its keys
    change, in the file (as written there: ``source: demo`` stays) and in the running camera."""
    from pipeline.config.edit import edit_cameras, patched_camera, read_raw, write_atomic

    pipe = ctx.pipeline
    if pipe is None:
        raise HTTPException(404, "no pipeline runs in this process")
    if change == "remove" and [c.id for c in pipe.camera_configs()] == [cam_id]:
        raise HTTPException(409, f"camera {cam_id!r} is the last camera; pause it instead of removing it")
    if change == "update" and patch is not None and not patch:
        return  # nothing changed: the camera keeps running undisturbed
    saved = None
    in_file = False
    try:
        if change == "update" and patch is not None:
            current = next((c for c in pipe.camera_configs() if c.id == cam_id), None)
            if current is None:
                raise KeyError(f"no camera {cam_id!r}")
            cam = patched_camera(current, patch, f"camera {cam_id}")
            typed = cam.model_dump(mode="json")  # the file gets the validated values (2.0, not "2")
            patch = {k: None if v is None else typed.get(k, v) for k, v in patch.items() if k != "id"}
        if ctx.config_path is not None:
            saved = read_raw(ctx.config_path)
            in_file = change == "add" or any(
                isinstance(c, dict) and c.get("id") == cam_id for c in saved.get("cameras") or []
            )
            if in_file:
                edit_cameras(ctx.config_path, change, cam_id, cam, patch=patch)
        try:
            if change == "add":
                assert cam is not None
                pipe.add_camera(cam)
            elif change == "update":
                assert cam is not None
                pipe.update_camera(cam)
            elif change == "pause":
                pipe.pause_camera(cam_id)
            elif change == "resume":
                pipe.resume_camera(cam_id)
            elif change == "remove":
                pipe.remove_camera(cam_id)
        except BaseException:
            if saved is not None and in_file:
                write_atomic(ctx.config_path, saved)  # type: ignore[arg-type]
            raise
    except ConfigError as exc:
        raise HTTPException(400, str(exc)) from None
    except KeyError as exc:
        raise HTTPException(404, str(exc.args[0])) from None
    except (ValueError, RuntimeError) as exc:
        raise HTTPException(409, str(exc)) from None


async def api_cameras(request: Request) -> Response:
    return JSONResponse({"cameras": camera_rows(ctx_of(request))})


async def api_add_camera(request: Request) -> Response:
    body = await json_body(request)
    cam = _camera_from(body, "camera")
    await anyio.to_thread.run_sync(apply_change, ctx_of(request), "add", cam.id, cam)
    return JSONResponse({"added": cam.id}, status_code=201)


async def api_update_camera(request: Request) -> Response:
    """PUT or PATCH: the body's settings change, every other setting of the camera is kept (a ``null``
    puts one back to its default)."""
    cam_id = request.path_params["cam"]
    body = await json_body(request)
    if body.get("id", cam_id) != cam_id:
        raise HTTPException(400, f"camera {cam_id}: the id cannot be changed (remove and add instead)")
    await anyio.to_thread.run_sync(apply_change, ctx_of(request), "update", cam_id, None, body)
    return JSONResponse({"updated": cam_id})


async def api_camera_action(request: Request) -> Response:
    cam_id, action = request.path_params["cam"], request.path_params["action"]
    if action not in ("pause", "resume"):
        raise HTTPException(404, f"no camera action {action!r}")
    await json_body(request)
    await anyio.to_thread.run_sync(apply_change, ctx_of(request), action, cam_id, None)
    return JSONResponse({action: cam_id})


async def api_remove_camera(request: Request) -> Response:
    cam_id = request.path_params["cam"]
    from pipeline.serve.web.handlers import check_api_csrf

    check_api_csrf(request)
    await anyio.to_thread.run_sync(apply_change, ctx_of(request), "remove", cam_id, None)
    return JSONResponse({"removed": cam_id})


def _form_patch(form: Any, current: CameraConfig) -> dict[str, Any]:
    """The settings an edit form changes: only the fields it carries, only where they differ from what the
    page showed (the source is shown with its password masked: sent back unchanged, the real one stays)."""
    patch: dict[str, Any] = {}
    source = str(form.get("source") or "").strip()
    if source and source not in (current.source, redact_url(current.source)):
        patch["source"] = source
    if "record_source" in form:  # an emptied field removes it (source serves both again)
        record = str(form.get("record_source") or "").strip() or None
        if record != current.record_source and not (
            record is not None and current.record_source and record == redact_url(current.record_source)
        ):
            patch["record_source"] = record
    if "detect_fps" in form:
        fps = str(form.get("detect_fps") or "").strip()
        if (float(fps) if _is_number(fps) else fps or None) != current.detect_fps:
            patch["detect_fps"] = fps or None
    if "profile" in form:
        profile = str(form.get("profile") or "").strip() or None
        if profile != current.profile:
            patch["profile"] = profile  # an unknown name is a config error naming the profile key
    return patch


def _is_number(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


def _form_camera(form: Any, cam_id: str) -> CameraConfig:
    data: dict[str, Any] = {"id": cam_id.strip(), "source": str(form.get("source") or "").strip()}
    record = str(form.get("record_source") or "").strip()
    if record:
        data["record_source"] = record
    fps = str(form.get("detect_fps") or "").strip()
    if fps:
        data["detect_fps"] = fps
    profile = str(form.get("profile") or "").strip()
    if profile:
        data["profile"] = profile  # an unknown name is a config error naming the profile key
    for flag in ("loop", "realtime"):
        if form.get(flag):
            data[flag] = True
    return _camera_from(data, f"camera {cam_id}")


async def form_add_camera(request: Request) -> Response:
    form = await checked_form(request)
    try:
        cam = _form_camera(form, str(form.get("id") or ""))
        await anyio.to_thread.run_sync(apply_change, ctx_of(request), "add", cam.id, cam)
    except HTTPException as exc:
        return back("/cameras", err=str(exc.detail))
    return back("/cameras", msg=f"camera {cam.id} added")


async def form_camera_action(request: Request) -> Response:
    form = await checked_form(request)
    cam_id, action = request.path_params["cam"], request.path_params["action"]
    try:
        if action == "edit":
            current = next((c for c in _pipeline(request).camera_configs() if c.id == cam_id), None)
            if current is None:
                raise HTTPException(404, f"no camera {cam_id!r}")
            patch = _form_patch(form, current)
            await anyio.to_thread.run_sync(apply_change, ctx_of(request), "update", cam_id, None, patch)
        elif action in ("pause", "resume", "remove"):
            await anyio.to_thread.run_sync(apply_change, ctx_of(request), action, cam_id, None)
        else:
            raise HTTPException(404, f"no camera action {action!r}")
    except HTTPException as exc:
        return back("/cameras", err=str(exc.detail))
    return back("/cameras", msg=f"camera {cam_id}: {action} done")


def routes() -> list[Route]:
    return [
        Route("/", live_page),
        Route("/cameras", cameras_page),
        Route("/cameras/add", form_add_camera, methods=["POST"]),
        Route("/cameras/{cam}/{action}", form_camera_action, methods=["POST"]),
        Route("/api/live/{cam}/frame", live_frame),
        Route("/api/cameras", api_cameras, methods=["GET"]),
        Route("/api/cameras", api_add_camera, methods=["POST"]),
        Route("/api/cameras/{cam}", api_update_camera, methods=["PUT", "PATCH"]),
        Route("/api/cameras/{cam}", api_remove_camera, methods=["DELETE"]),
        Route("/api/cameras/{cam}/{action}", api_camera_action, methods=["POST"]),
    ]
