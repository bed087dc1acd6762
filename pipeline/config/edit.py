"""Edits to the ``cameras:`` list of a YAML config file, validated and written atomically.

The web app, its JSON API and ``run_pipeline.py cameras`` all go through here, so a change made at run
time survives a restart, and a crash mid-write leaves either the old file or the new one, never half of
each (write to a temp file in the same folder, fsync, rename). Other sections are kept as they are;
comments are not (PyYAML does not keep them), so the file says so at the top after the first edit.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import yaml

from pipeline.config.schema import CameraConfig, ConfigError, parse_config

HEADER = "# Written by vidpipe (cameras edited at run time); comments from the original file are not kept.\n"
_LOCK = threading.Lock()


def read_raw(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def write_atomic(path: str | Path, data: dict[str, Any]) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(HEADER)
            yaml.safe_dump(data, fh, sort_keys=False, default_flow_style=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def camera_dict(cam: CameraConfig) -> dict[str, Any]:
    """What goes into the file: only the settings that differ from the defaults (and, for a camera with a
    profile, ``detect`` only where it differs from the profile's)."""
    out = cam.model_dump(mode="json", exclude_defaults=True) | {"id": cam.id, "source": cam.source}
    if cam.profile is not None:
        plain = CameraConfig.model_validate({"id": cam.id, "source": cam.source, "profile": cam.profile})
        if plain.detect == cam.detect:
            out.pop("detect", None)
    return out


def merge_camera(current: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """``current`` with ``patch``'s keys replaced and every other key kept as it is (``detect``,
    ``analytics``, ``loop``, ``enabled: false``, connection settings, ``source: demo``...); a ``None`` in
    the patch removes that key, so the setting goes back to its default. ``id`` cannot be patched.

    Why a patch and not the form's whole camera: a form shows a few fields; rebuilding the camera from them
    silently reset everything it does not show (a paused door camera came back enabled)."""
    merged = dict(current)
    for key, value in patch.items():
        if key == "id":
            continue
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def patched_camera(cam: CameraConfig, patch: dict[str, Any], where: str) -> CameraConfig:
    """A running camera's settings with ``patch`` applied (validated; ConfigError naming ``where``)."""
    from pydantic import ValidationError

    from pipeline.config.schema import format_validation_error

    data = merge_camera(cam.model_dump(mode="json", exclude_defaults=True), patch)
    data["id"] = cam.id
    try:
        return CameraConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, where)) from None


def edit_cameras(
    path: str | Path,
    change: str,
    cam_id: str,
    cam: CameraConfig | None = None,
    *,
    patch: dict[str, Any] | None = None,
) -> None:
    """Apply one change (``add``, ``update``, ``remove``, ``pause``, ``resume``) to the file's cameras and
    write it back, after checking the whole resulting config validates. ``update`` with ``patch`` changes
    only the patch's keys of the camera as written in the file (see ``merge_camera``); with ``cam`` it
    replaces the camera."""
    with _LOCK:
        data = read_raw(path)
        cams = list(data.get("cameras") or [])
        idx = next((i for i, c in enumerate(cams) if isinstance(c, dict) and c.get("id") == cam_id), None)
        if change == "add":
            if idx is not None:
                raise ValueError(f"{path}: camera id {cam_id!r} is already in the file")
            assert cam is not None
            cams.append(camera_dict(cam))
        elif idx is None:
            raise KeyError(f"{path}: no camera {cam_id!r} in the file")
        elif change == "update" and patch is not None:
            cams[idx] = merge_camera(cams[idx], patch)
        elif change == "update":
            assert cam is not None
            cams[idx] = camera_dict(cam)
        elif change == "remove":
            del cams[idx]
        elif change in ("pause", "resume"):
            cams[idx] = {**cams[idx], "enabled": change == "resume"}
        else:
            raise ValueError(f"unknown camera change {change!r}")
        data["cameras"] = cams
        parse_config(data, str(path))  # raises ConfigError naming the key before anything is written
        write_atomic(path, data)
