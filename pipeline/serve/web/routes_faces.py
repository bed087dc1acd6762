"""Faces: the gallery JSON API (formerly ``faces serve``'s stdlib server) and the Faces page (enroll by
upload with a result per photo, rename, remove, unknown faces seen at door cameras, calibrate)."""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path
from typing import Any

import anyio.to_thread
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from pipeline.analyze.faces.gallery import Gallery, GalleryError
from pipeline.serve.web.context import WebContext
from pipeline.serve.web.handlers import back, check_api_csrf, checked_form, ctx_of, json_body, page

UNKNOWN_SHOWN = 24
_CROP_NAME = re.compile(r"^[A-Za-z0-9_.-]+\.jpg$")


def _gallery_error(exc: GalleryError) -> HTTPException:
    return HTTPException(404 if "no enrolled" in str(exc) else 400, str(exc))


def persons(ctx: WebContext) -> list[dict[str, Any]]:
    with Gallery(ctx.faces.gallery_path) as g:
        return [
            {"name": p.name, "templates": p.templates, "model_ids": list(p.model_ids)} for p in g.persons()
        ]


def enroll(
    ctx: WebContext, name: str, images: list[tuple[str, bytes]], append: bool = False
) -> dict[str, Any]:
    """Run the enrollment core (one result per photo; adding to an existing person needs ``append``, which
    it audits). Returns {name, append, results: [{photo, enrolled, reason}], enrolled, rejected, templates}.
    The engine is passed as a callable: the models load only if some photo passes the cheap checks."""
    from pipeline.analyze.faces.enroll import enroll_images

    with Gallery(ctx.faces.gallery_path) as g:
        report = enroll_images(g, ctx.engine, ctx.faces, name, list(images), append=append)
    return {
        "name": name,
        "append": append,
        "results": [r.to_dict() for r in report.results],
        "enrolled": list(report.accepted),
        "rejected": [{"photo": p, "reason": r} for p, r in report.rejected],
        "templates": report.templates,
    }


def _rename(ctx: WebContext, old: str, new: str) -> None:
    with Gallery(ctx.faces.gallery_path) as g:
        g.rename(old, new)


def _remove(ctx: WebContext, name: str) -> None:
    with Gallery(ctx.faces.gallery_path) as g:
        g.remove(name)


def unknown_dir(ctx: WebContext) -> Path:
    return ctx.resolve(ctx.faces.unknown_crops.dir)


def crop_camera(name: str) -> str:
    """The camera of an unknown-face crop: its file is ``{camera}_{seq}_{face}_{ms}.jpg`` and a camera id
    may itself contain ``_``."""
    parts = name[: -len(".jpg")].rsplit("_", 3)
    return parts[0] if len(parts) == 4 else ""


def door_cameras(ctx: WebContext) -> set[str]:
    return {cam for door in ctx.doors for cam in door.cameras}


def unknown_faces(ctx: WebContext) -> list[dict[str, Any]]:
    """Newest crops of unknown faces, newest first, each with its camera. With doors configured only those
    from door cameras (a face seen in the car park is nobody to enroll at the front door)."""
    d = unknown_dir(ctx)
    if not d.is_dir():
        return []
    at_doors = door_cameras(ctx)
    files = []
    for p in d.iterdir():
        if _CROP_NAME.match(p.name) and (not at_doors or crop_camera(p.name) in at_doors):
            files.append((p.stat().st_mtime, p))
    files.sort(key=lambda t: t[0], reverse=True)
    return [{"file": p.name, "camera": crop_camera(p.name), "mtime": m} for m, p in files[:UNKNOWN_SHOWN]]


# -- JSON API --------------------------------------------------------------------------------------------
async def api_persons(request: Request) -> Response:
    return JSONResponse({"persons": await anyio.to_thread.run_sync(persons, ctx_of(request))})


async def api_enroll(request: Request) -> Response:
    body = await json_body(request)
    name, photos = body.get("name"), body.get("photos")
    if not isinstance(name, str) or not isinstance(photos, list) or not photos:
        raise HTTPException(
            400, 'body must be {"name": str, "photos": [{"filename": str, "data": base64}, ...]}'
        )
    append = body.get("append", False)
    if not isinstance(append, bool):
        raise HTTPException(400, '"append" must be true or false')
    images, bad = [], []
    for i, ph in enumerate(photos):
        label = str(ph.get("filename") or f"photo[{i}]") if isinstance(ph, dict) else f"photo[{i}]"
        try:
            images.append((label, base64.b64decode(ph["data"], validate=True)))
        except (KeyError, TypeError, binascii.Error):
            bad.append({"photo": label, "reason": "data is missing or not valid base64"})
    try:
        out = await anyio.to_thread.run_sync(enroll, ctx_of(request), name, images, append)
    except GalleryError as exc:
        raise _gallery_error(exc) from None
    out["rejected"] = bad + out["rejected"]
    out["results"] = [{"photo": b["photo"], "enrolled": False, "reason": b["reason"]} for b in bad] + out[
        "results"
    ]
    return JSONResponse(out)


async def api_person(request: Request) -> Response:
    name = request.path_params["name"]
    ctx = ctx_of(request)
    try:
        if request.method == "DELETE":
            check_api_csrf(request)
            await anyio.to_thread.run_sync(_remove, ctx, name)
            return JSONResponse({"removed": name})
        new = (await json_body(request)).get("name")
        if not isinstance(new, str):
            raise HTTPException(400, 'body must be {"name": "<new name>"}')
        await anyio.to_thread.run_sync(_rename, ctx, name, new)
        return JSONResponse({"renamed": name, "to": new})
    except GalleryError as exc:
        raise _gallery_error(exc) from None


# -- page and forms ----------------------------------------------------------------------------------------
async def faces_page(
    request: Request,
    results: dict[str, Any] | None = None,
    status: int = 200,
    calibration: dict[str, Any] | None = None,
) -> Response:
    ctx = ctx_of(request)
    people = await anyio.to_thread.run_sync(persons, ctx)
    unknown = await anyio.to_thread.run_sync(unknown_faces, ctx)
    resp = page(
        request,
        "faces.html",
        persons=people,
        unknown=unknown,
        unknown_at_doors=bool(door_cameras(ctx)),
        results=results,
        calibration=calibration,
    )
    resp.status_code = status
    return resp


async def form_enroll(request: Request) -> Response:
    form = await checked_form(request)
    name = str(form.get("name") or "").strip()
    images: list[tuple[str, bytes]] = []
    for item in form.getlist("photos"):
        if isinstance(item, UploadFile) and item.filename:
            images.append((item.filename, await item.read()))
    if not name or not images:
        return back("/faces", err="enroll: give a name and at least one photo")
    append = form.get("append") == "1"
    try:
        results = await anyio.to_thread.run_sync(enroll, ctx_of(request), name, images, append)
    except GalleryError as exc:
        return back("/faces", err=f"enroll: {exc}")
    return await faces_page(request, results=results, status=200 if results["enrolled"] else 400)


async def form_person(request: Request) -> Response:
    form = await checked_form(request)
    name, action = request.path_params["name"], request.path_params["action"]
    ctx = ctx_of(request)
    try:
        if action == "remove":
            await anyio.to_thread.run_sync(_remove, ctx, name)
            return back("/faces", msg=f"removed {name}")
        if action == "rename":
            new = str(form.get("new_name") or "").strip()
            await anyio.to_thread.run_sync(_rename, ctx, name, new)
            return back("/faces", msg=f"renamed {name} to {new}")
    except GalleryError as exc:
        return back("/faces", err=str(exc))
    raise HTTPException(404, f"no person action {action!r}")


async def form_assign_unknown(request: Request) -> Response:
    """One click: enroll an unknown face's crop as (a new template of) the named person."""
    form = await checked_form(request)
    crop, name = str(form.get("file") or ""), str(form.get("name") or "").strip()
    ctx = ctx_of(request)
    path = unknown_dir(ctx) / crop
    if not _CROP_NAME.match(crop) or not path.is_file():
        return back("/faces", err=f"no unknown face {crop!r}")
    if not name:
        return back("/faces", err="assign: give the person's name")
    try:
        results = await anyio.to_thread.run_sync(_assign, ctx, name, crop, path.read_bytes())
    except GalleryError as exc:
        return back("/faces", err=f"assign: {exc}")
    if results["enrolled"]:
        path.unlink(missing_ok=True)
    return await faces_page(request, results=results)


def _assign(ctx: WebContext, name: str, crop: str, data: bytes) -> dict[str, Any]:
    """A known person gets the crop as one more template (``append``, audited); a new name is enrolled."""
    with Gallery(ctx.faces.gallery_path) as g:
        existing = g.exists(name)
    return enroll(ctx, name, [(crop, data)], append=existing)


async def unknown_image(request: Request) -> Response:
    crop = request.path_params["file"]
    path = unknown_dir(ctx_of(request)) / crop
    if not _CROP_NAME.match(crop) or not path.is_file():
        raise HTTPException(404, "no such unknown face")
    return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "no-store"})


_FACES_CLI = (
    "import argparse, sys\n"
    "from pipeline.cli import faces\n"
    "p = argparse.ArgumentParser(prog='faces')\n"
    "faces.add_arguments(p)\n"
    "sys.exit(faces.main(p.parse_args(sys.argv[1:])))\n"
)


def run_calibrate(
    ctx: WebContext, impostors: str, dry_run: bool, timeout_s: float = 600.0
) -> tuple[int, str]:
    """``faces calibrate`` in a child process (the models load there and their memory goes with it; its
    report is shown as printed). (exit code, output)."""
    import subprocess
    import sys

    argv = [sys.executable, "-c", _FACES_CLI]
    if ctx.config_path is not None:
        argv += ["--config", str(ctx.config_path)]
    argv += ["--gallery", ctx.faces.gallery_path, "calibrate"]
    if impostors:
        argv += ["--impostors", impostors]
    if dry_run:
        argv.append("--dry-run")
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return 124, f"calibrate took longer than {timeout_s:.0f} s and was stopped"
    return proc.returncode, (proc.stdout + proc.stderr).strip()


async def form_calibrate(request: Request) -> Response:
    form = await checked_form(request)
    impostors = str(form.get("impostors") or "").strip()
    dry_run = form.get("dry_run") == "1"
    rc, output = await anyio.to_thread.run_sync(run_calibrate, ctx_of(request), impostors, dry_run)
    calibration = {"ok": rc == 0, "output": output[-20_000:]}
    return await faces_page(request, status=200 if rc == 0 else 400, calibration=calibration)


def routes() -> list[Route]:
    return [
        Route("/faces", faces_page),
        Route("/faces/enroll", form_enroll, methods=["POST"]),
        Route("/faces/calibrate", form_calibrate, methods=["POST"]),
        Route("/faces/unknown/assign", form_assign_unknown, methods=["POST"]),
        Route("/faces/unknown/{file}", unknown_image),
        Route("/faces/{name}/{action}", form_person, methods=["POST"]),
        Route("/api/persons", api_persons, methods=["GET"]),
        Route("/api/persons", api_enroll, methods=["POST"]),
        Route("/api/persons/{name}", api_person, methods=["PATCH", "DELETE"]),
    ]
