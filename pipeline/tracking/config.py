"""Tracking, zones and event-lifecycle settings (issue 6 fleshes these out)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class TrackingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = False


class CameraZonesConfig(BaseModel):
    """Per-camera zones, masks and counting lines (lives under ``cameras[].analytics``)."""

    model_config = ConfigDict(extra="forbid")
