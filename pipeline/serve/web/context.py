"""What the web app's handlers share: settings, login, the running pipeline (if any) and helpers."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.config.doors import DoorConfig
from pipeline.config.faces import FacesConfig
from pipeline.config.web import WebConfig
from pipeline.serve.web.auth import Auth

if TYPE_CHECKING:
    from pipeline.analyze.faces.enroll import FaceEngine
    from pipeline.run.runner import Pipeline


@dataclass
class WebContext:
    web: WebConfig
    auth: Auth
    faces: FacesConfig
    var_dir: Path
    pipeline: Pipeline | None = None
    config_path: Path | None = None
    redis_url: str | None = None
    redis_prefix: str = "vidpipe"
    doors: list[DoorConfig] = field(default_factory=list)
    _engine: FaceEngine | None = None
    _engine_lock: threading.Lock = field(default_factory=threading.Lock)

    def engine(self) -> FaceEngine:
        """The face engine, loaded on first use (the models are large; most sessions never enroll)."""
        with self._engine_lock:
            if self._engine is None:
                from pipeline.analyze.faces.enroll import shared_engine

                self._engine = shared_engine(self.faces)
            return self._engine

    def resolve(self, p: str) -> Path:
        """A path from the config as the pipeline resolves it (relative = from the working directory)."""
        return Path(p)

    @property
    def clips_dir(self) -> Path:
        """Where the clip writer keeps MP4 clips (``clips.dir`` of the pipeline running here, else
        ``<var-dir>/clips``)."""
        if self.pipeline is not None:
            return Path(self.pipeline.cfg.clips.dir)
        return self.var_dir / "clips"

    @property
    def snapshots_dir(self) -> Path:
        """Where the tracker writes best-frame snapshots (the pipeline's var dir when one runs here)."""
        base = self.pipeline.var_dir if self.pipeline is not None else self.var_dir
        return base / "snapshots"
