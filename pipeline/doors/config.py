"""Door access policy settings (issue 4 fleshes these out)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class DoorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
