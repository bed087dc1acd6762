"""Face detection / embedding / gallery settings (issue 4 fleshes these out)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class FacesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
