"""The one event schema every stage publishes (documented in docs/events.md).

An event is a small JSON object. ``schema_version`` changes only on an incompatible change; new optional
fields may appear without a bump, so consumers must ignore keys they do not know.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from pipeline.core.types import Frame

SCHEMA_VERSION = 1

# Event families decide the Redis channel/stream an event goes to (see pipeline/deliver/publisher.py).
EventFamily = Literal["detections", "status", "tracks", "faces", "doors"]


def new_event_id() -> str:
    return uuid.uuid4().hex


class Event(BaseModel):
    """A versioned pipeline event.

    type: dotted name, e.g. ``detections.frame``, ``status.camera``, ``tracks.new``, ``tracks.update``,
      ``tracks.end``, ``faces.unknown``, ``doors.decision``. The part before the first dot is the family.
    camera_id: the camera it concerns ("" for process-wide events).
    ts: wall-clock time (epoch seconds) the event describes (a frame's capture time, a status change).
    frame_seq / pts: the frame it came from, when it came from one.
    data: the type-specific payload.
    """

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    event_id: str = Field(default_factory=new_event_id)
    type: str
    camera_id: str = ""
    ts: float = Field(default_factory=time.time)
    frame_seq: int | None = None
    pts: float | None = None
    data: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def for_frame(
        cls,
        type: str,
        frame: Frame | None,
        data: dict[str, Any],
        *,
        camera_id: str | None = None,
        ts: float | None = None,
    ) -> Event:
        """An event about ``frame``: its camera, capture time, sequence number and pts.

        Without a frame (a track ended at shutdown, a door decision on a camera outage) ``camera_id`` and
        ``ts`` (default: now) stand in. The one place that maps a frame onto an event, so every event about
        a frame carries the same time base.
        """
        if frame is None:
            return cls(type=type, camera_id=camera_id or "", ts=time.time() if ts is None else ts, data=data)
        return cls(
            type=type,
            camera_id=frame.camera_id if camera_id is None else camera_id,
            ts=frame.capture_time,
            frame_seq=frame.seq,
            pts=frame.pts,
            data=data,
        )

    @property
    def family(self) -> str:
        return self.type.split(".", 1)[0]

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, raw: str | bytes) -> Event:
        return cls.model_validate_json(raw)
