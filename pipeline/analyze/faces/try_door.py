"""Try a door on recordings: each clip played through the same face analyzer and door policy as a live
camera, at video time and the camera's ``detect_fps``, without touching the real door.

The door is copied with a throwaway secret, audit log and lockdown file (in a temporary folder) and without
its second factor (there is no badge reader in a recording); the faces config keeps its gallery and
thresholds but saves no unknown-face crops. Every clip gets a fresh analyzer (tracks, votes, cooldowns),
and frames carry capture times on the clip's clock starting at ``t0`` (the door's schedule applies at that
time), analysed 50 ms after capture.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from pipeline.analyze.faces.analyzer import FaceAccessAnalyzer
from pipeline.analyze.faces.enroll import FaceEngine
from pipeline.config.doors import DoorConfig
from pipeline.config.faces import FacesConfig
from pipeline.core.types import Detections, Frame, FrameResult
from pipeline.ingest.clip_frames import clip_frames

ANALYSIS_DELAY_S = 0.05


@dataclass
class ClipSummary:
    clip: str
    frames: int = 0
    decisions: dict[str, int] = field(default_factory=dict)
    first_grant_t: float | None = None
    why_not: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "clip": self.clip,
            "summary": True,
            "frames_analysed": self.frames,
            "decisions": self.decisions,
            "granted": self.decisions.get("granted", 0),
            "first_grant_t": self.first_grant_t,
            "why_not": self.why_not,
            "error": self.error,
        }


class DoorTrial:
    """One door, one camera's settings, any number of clips (see the module docstring)."""

    def __init__(
        self,
        faces: FacesConfig,
        door: DoorConfig,
        *,
        detect_fps: float | None,
        engine: FaceEngine,
        t0: float,
        camera_id: str | None = None,
    ) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="vidpipe-try-door-")
        tmp = Path(self._tmp.name)
        self.camera_id = camera_id or door.cameras[0]
        self.faces = faces.model_copy(
            update={"unknown_crops": faces.unknown_crops.model_copy(update={"enabled": False})}
        )
        self.door = door.model_copy(
            update={
                "cameras": [self.camera_id],
                "secret": SecretStr(secrets.token_hex(16)),
                "secret_env": None,
                "second_factor": None,
                "audit_log": str(tmp / f"{door.id}.audit.jsonl"),
            }
        )
        self.detect_fps = detect_fps
        self.engine = engine
        self.t0 = t0
        # the trial's own audit log needs a key; a throwaway one when the operator's is not set
        os.environ.setdefault("VIDPIPE_AUDIT_KEY", secrets.token_hex(24))

    def close(self) -> None:
        self._tmp.cleanup()

    def play(self, path: str | Path, end: float | None = None) -> Iterator[dict[str, Any]]:
        """One JSON-able record per decision of ``path`` (its first ``end`` seconds), then its summary
        (``"summary": true``)."""
        now = [self.t0]
        analyzer = FaceAccessAnalyzer(
            self.faces, [self.door], self.camera_id, engine=self.engine, clock=lambda: now[0]
        )
        summary = ClipSummary(str(path))
        try:
            for seq, (t, image) in enumerate(clip_frames(path, fps=self.detect_fps, end=end)):
                capture = self.t0 + t
                now[0] = capture + ANALYSIS_DELAY_S
                result = FrameResult(
                    Frame(self.camera_id, seq, t, capture, image), Detections.empty(), "none"
                )
                events = [e for e in analyzer.process(result) if e.type == "doors.decision"]
                summary.frames += 1
                for ev in events:
                    d = ev.data
                    summary.decisions[d["decision"]] = summary.decisions.get(d["decision"], 0) + 1
                    if d["decision"] == "granted" and summary.first_grant_t is None:
                        summary.first_grant_t = round(t, 3)
                    rec = {
                        "clip": str(path),
                        "t": round(t, 3),
                        "decision": d["decision"],
                        "person": d["person"],
                        "reason": d["reason"],
                        "distance": d["distance"],
                        "frames": d["frames"],
                        "liveness": self.door.liveness,
                        "pad_min": d.get("pad_min"),
                        "faces": analyzer.last_faces,
                    }
                    yield rec
        except ValueError as exc:
            summary.error = str(exc)
        finally:
            summary.why_not = dict(analyzer.doors[0].policy.why_not_counts)
            analyzer.close()
        yield summary.to_dict()
