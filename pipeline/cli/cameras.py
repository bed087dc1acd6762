"""cameras subcommand: list, add, edit, pause, resume or remove cameras in the config file, or in a
running pipeline through its web app's JSON API (which also writes the file).

    python run_pipeline.py cameras list
    python run_pipeline.py cameras add --id lobby --source rtsp://user:pass@10.0.0.5/stream [--detect-fps 5]
    python run_pipeline.py cameras edit lobby --source rtsp://... [--detect-fps 5]   (only these change)
    python run_pipeline.py cameras pause|resume|remove lobby
    ... --url http://127.0.0.1:8080   apply to the running pipeline now (token: $VIDPIPE_FACES_TOKEN)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

from pipeline.config.profiles import PROFILES
from pipeline.config.schema import CameraConfig, ConfigError, format_validation_error, load_config
from pipeline.core.sources import redact_url


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/default.yaml", help="YAML config (default: %(default)s)")
    parser.add_argument("--url", help="a running pipeline's web app: change it live (and its config file)")
    parser.add_argument(
        "--token-env", default="VIDPIPE_FACES_TOKEN", help="variable holding the API token for --url"
    )
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="list the cameras")
    for name in ("add", "edit"):
        p = sub.add_parser(name, help=f"{name} a camera")
        if name == "add":
            p.add_argument("--id", required=True)
            p.add_argument("--source", required=True)
        else:
            p.add_argument("id")
            p.add_argument("--source")
        p.add_argument("--detect-fps", type=float)
        p.add_argument(
            "--record-source",
            help="the camera's main (high-resolution) stream, for clips only (cameras[].record_source); "
            "--source is then the substream detection decodes" + ("" if name == "add" else "; '' removes it"),
        )
        p.add_argument(
            "--profile",
            choices=sorted(PROFILES),
            help="detection profile (cameras[].profile): whole, street, street-rotate, street-far, door; replaces the "
            "camera's detect settings",
        )
        p.add_argument("--loop", action="store_true", help="restart a file source when it ends")
        p.add_argument("--realtime", action="store_true", help="pace a file source at its frame rate")
    for name in ("pause", "resume", "remove"):
        sub.add_parser(name, help=f"{name} a camera").add_argument("id")


def _patch(args: argparse.Namespace) -> dict[str, Any]:
    """``edit``: only the settings given on the command line; every other key of the camera is kept."""
    patch: dict[str, Any] = {}
    if args.source:
        patch["source"] = args.source
    if args.detect_fps is not None:
        patch["detect_fps"] = args.detect_fps
    if args.record_source is not None:
        patch["record_source"] = args.record_source or None  # '' removes it: source serves both again
    if getattr(args, "profile", None):
        patch["profile"] = args.profile  # detect keys the user wrote for this camera still apply on top
    for flag in ("loop", "realtime"):
        if getattr(args, flag):
            patch[flag] = True
    return patch


def _camera(args: argparse.Namespace, base: dict[str, Any]) -> CameraConfig:
    data = dict(base)
    data["id"] = args.id
    if args.source:
        data["source"] = args.source
    if args.detect_fps is not None:
        data["detect_fps"] = args.detect_fps
    if args.record_source:
        data["record_source"] = args.record_source
    if getattr(args, "profile", None):
        data["profile"] = args.profile
        data.pop("detect", None)  # the new profile's settings, not the old ones kept from ``base``
    for flag in ("loop", "realtime"):
        if getattr(args, flag):
            data[flag] = True
    from pydantic import ValidationError

    try:
        return CameraConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, f"camera {args.id}")) from None


def _call(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    token = os.environ.get(args.token_env, "")
    if not token:
        raise ConfigError(f"--url needs the API token in ${args.token_env}")
    raw = b"" if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        args.url.rstrip("/") + path,
        data=raw if method != "GET" else None,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            why = json.loads(exc.read()).get("error", "")
        except ValueError:
            why = ""
        raise ConfigError(f"{args.url}: {method} {path}: HTTP {exc.code} {why}") from None
    except urllib.error.URLError as exc:
        raise ConfigError(f"{args.url}: not reachable ({exc.reason})") from None


def main(args: argparse.Namespace) -> int:
    try:
        return _main(args)
    except (ConfigError, KeyError, ValueError) as exc:
        print(f"error: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    from pipeline.config.edit import camera_dict, edit_cameras

    if args.action == "list":
        if args.url:
            for c in _call(args, "GET", "/api/cameras")["cameras"]:
                main = f"\trecord: {c['record_source']}" if c.get("record_source") else ""
                print(f"{c['id']}\t{c['status']}\t{c['source']}{main}")
            return 0
        for cam in load_config(args.config).cameras:
            main = f"\trecord: {redact_url(cam.record_source)}" if cam.record_source else ""
            print(f"{cam.id}\t{'enabled' if cam.enabled else 'paused'}\t{redact_url(cam.source)}{main}")
        return 0
    if args.action == "edit":
        patch = _patch(args)
        if not patch:
            raise ValueError(
                "edit: give at least one setting to change (--source, --record-source, --detect-fps, --profile, ...)"
            )
        if args.url:
            _call(args, "PATCH", f"/api/cameras/{args.id}", patch)
        else:
            edit_cameras(args.config, "update", args.id, patch=patch)
        print(f"camera {args.id}: edit done{'' if args.url else f' in {args.config}'}")
        return 0
    if args.action == "add":
        cam = _camera(args, {})
        if args.url:
            _call(args, "POST", "/api/cameras", camera_dict(cam))
        else:
            edit_cameras(args.config, "add", cam.id, cam)
        print(f"camera {cam.id}: add done{'' if args.url else f' in {args.config}'}")
        return 0
    if args.url:
        if args.action == "remove":
            _call(args, "DELETE", f"/api/cameras/{args.id}")
        else:
            _call(args, "POST", f"/api/cameras/{args.id}/{args.action}", {})
    else:
        edit_cameras(args.config, args.action, args.id)
    print(f"camera {args.id}: {args.action} done{'' if args.url else f' in {args.config}'}")
    return 0
