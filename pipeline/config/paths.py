"""The one place runtime paths are resolved from ``--var-dir``.

Config defaults spell runtime files as ``var/...`` (``redis.spool_path: var/spool.sqlite``,
``faces.gallery_path: var/faces.sqlite``, ...). ``var/`` there means "the runtime directory", so with
``--var-dir /srv/vidpipe`` each of them lives under ``/srv/vidpipe``. A path the user wrote without the
``var/`` prefix means what it says: absolute paths stay, other relative paths are relative to the working
directory. Before this module the spool, the snapshots and the face/door files each had their own rule, and
``--var-dir`` moved only some of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.config.var_dir import RuntimePaths

if TYPE_CHECKING:
    from pipeline.config.faces import FacesConfig
    from pipeline.config.schema import PipelineConfig


def resolve_runtime_paths(cfg: PipelineConfig, var_dir: str | Path) -> PipelineConfig:
    """A copy of ``cfg`` whose runtime file paths (spools, gallery, face crops, audit logs) are resolved."""
    paths = RuntimePaths(var_dir)
    out = cfg.model_copy(deep=True)
    out.redis.spool_path = str(paths.resolve(out.redis.spool_path))
    _resolve_faces(out.faces, paths)
    for door in out.doors:
        door.audit_log = str(paths.resolve(door.audit_log))
    out.sinks = out.sinks.with_spools_under(paths.var_dir)
    out.clips.dir = str(paths.resolve(out.clips.dir))
    return out


def resolve_faces_paths(faces: FacesConfig, var_dir: str | Path) -> FacesConfig:
    """A copy of the ``faces:`` section with its runtime paths resolved (for the ``faces`` CLI)."""
    out = faces.model_copy(deep=True)
    _resolve_faces(out, RuntimePaths(var_dir))
    return out


def _resolve_faces(faces: FacesConfig, paths: RuntimePaths) -> None:
    faces.gallery_path = str(paths.resolve(faces.gallery_path))
    faces.unknown_crops.dir = str(paths.resolve(faces.unknown_crops.dir))
    if faces.enroll_audit_log:
        faces.enroll_audit_log = str(paths.resolve(faces.enroll_audit_log))
