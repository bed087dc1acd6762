"""The ``clips:`` section: short MP4 clips cut from each camera's compressed packets (no re-encoding).

    clips:
      enabled: true          # every camera keeps a packet ring; door decisions always get a clip
      pre_s: 5               # seconds before the decision (from the last keyframe before it)
      post_s: 5              # seconds after it
      tracks: false          # also a clip per tracked object's life (tracks.end)
      ring_max_s: 30         # the ring holds at most this many seconds ...
      ring_max_mb: 32        # ... and at most this many MB per camera
      quota_mb: 500          # per camera: the oldest clips are deleted beyond this
      dir: var/clips         # var/clips/<camera>/<time>_<kind>_<id>.mp4, mode 0600
      cameras:               # per-camera overrides (any key above but dir)
        porch: {enabled: false}

Clips are written by one clip-writer thread fed by a bounded queue, never on a camera thread.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CameraClipsConfig(_Strict):
    """One camera's overrides; a key left out (None) takes the section's value."""

    enabled: bool | None = None
    pre_s: float | None = Field(None, ge=0, le=120)
    post_s: float | None = Field(None, ge=0, le=120)
    tracks: bool | None = None
    ring_max_s: float | None = Field(None, gt=0, le=600)
    ring_max_mb: float | None = Field(None, gt=0, le=4096)
    quota_mb: float | None = Field(None, gt=0)


class ClipSettings(_Strict):
    """The settings that apply to one camera (the section merged with its override)."""

    enabled: bool = False
    pre_s: float = 5.0
    post_s: float = 5.0
    tracks: bool = False
    ring_max_s: float = 30.0
    ring_max_mb: float = 32.0
    quota_mb: float = 500.0


class ClipsConfig(_Strict):
    enabled: bool = Field(False, description="keep a packet ring per camera and cut clips from it")
    pre_s: float = Field(5.0, ge=0, le=120, description="seconds of video before the moment")
    post_s: float = Field(5.0, ge=0, le=120, description="seconds of video after the moment")
    tracks: bool = Field(False, description="also write a clip for every tracked object's life (tracks.end)")
    ring_max_s: float = Field(
        30.0,
        gt=0,
        le=600,
        description="seconds of packets a camera's ring holds, from a keyframe (>= pre_s + post_s)",
    )
    ring_max_mb: float = Field(32.0, gt=0, le=4096, description="MB of packets a camera's ring holds at most")
    quota_mb: float = Field(500.0, gt=0, description="MB of clips kept per camera; the oldest go first")
    dir: str = Field("var/clips", description="clips live in <dir>/<camera>/")
    queue_size: int = Field(64, ge=1, description="clip requests waiting for the writer; more are dropped")
    cameras: dict[str, CameraClipsConfig] = Field(default_factory=dict, description="per-camera overrides")

    @model_validator(mode="after")
    def _ring_holds_a_clip(self) -> ClipsConfig:
        for cam, s in [("", self.for_camera("")), *((c, self.for_camera(c)) for c in self.cameras)]:
            if s.enabled and s.ring_max_s < s.pre_s + s.post_s:
                where = f"clips.cameras.{cam}" if cam else "clips"
                raise ValueError(
                    f"{where}: ring_max_s ({s.ring_max_s:g}) must be at least pre_s + post_s "
                    f"({s.pre_s + s.post_s:g}), or the ring cannot hold a clip"
                )
        return self

    def for_camera(self, camera_id: str) -> ClipSettings:
        base = self.model_dump(include=set(ClipSettings.model_fields))
        override = self.cameras.get(camera_id)
        if override is not None:
            base.update({k: v for k, v in override.model_dump().items() if v is not None})
        return ClipSettings(**base)
