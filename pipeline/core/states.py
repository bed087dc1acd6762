"""The states a stage and a camera can be in, as string enums.

They are ``StrEnum`` so that JSON (``status.camera`` events, ``/healthz``) and comparisons with the plain
strings consumers already use stay exactly as before, while the code gets one spelling per state and a
type checker catches a typo.
"""

from __future__ import annotations

from enum import StrEnum


class StageState(StrEnum):
    """A supervised stage thread (``pipeline.core.stage.Stage.state``)."""

    CREATED = "created"
    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPED = "stopped"
    FAILED = "failed"


class CameraStatus(StrEnum):
    """A camera's source, as reported in ``status.camera`` events (docs/events.md)."""

    CREATED = "created"
    ONLINE = "online"
    OFFLINE = "offline"
    RECONNECTING = "reconnecting"
    FAILED = "failed"
    ENDED = "ended"
    PAUSED = "paused"  # by the operator (web app / runner.pause_camera)
    REMOVED = "removed"  # by the operator, for good
