"""``cameras[].detect``: where in a frame the detector looks (regions, tiles), per camera.

Defaults keep today's behaviour (the whole frame, downscaled to the detector input). Sizes are in pixels
of the decoded frame; ``None`` means "the detector's own input size", so a crop reaches the network at
native resolution.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MotionConfig(_Strict):
    """Frame differencing against a running-average background, on a small grey copy of the frame."""

    frame_height: int = Field(
        180, ge=32, le=1080, description="motion is computed on a copy this many pixels high"
    )
    threshold: int = Field(
        20, ge=1, le=255, description="grey-level difference from the background that counts as motion"
    )
    contour_area: int = Field(
        6, ge=1, description="ignore motion blobs smaller than this (pixels of the small copy)"
    )
    alpha: float = Field(
        0.05, gt=0, le=1, description="background learning rate per detected frame (higher = forgets faster)"
    )
    blur: int = Field(3, ge=1, description="Gaussian blur kernel (odd) against sensor noise")
    recalibrate_fraction: float = Field(
        0.5,
        gt=0,
        le=1,
        description="more of the frame than this moving at once (lights, camera shake) resets the "
        "background and forces a full scan",
    )

    @field_validator("blur")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"must be odd, got {v}")
        return v


class RegionsConfig(_Strict):
    """Motion-gated regions: run the detector only where something moves or an object already is."""

    enabled: bool = False
    size: int | None = Field(
        None, ge=32, description="side of a square region in frame pixels; None = the detector input size"
    )
    full_scan_every: int = Field(
        25,
        ge=1,
        description="every this many detected frames, scan the whole frame (tiles if tiling is on) "
        "to find what does not move",
    )
    max_regions: int = Field(
        8, ge=1, description="more regions than this in one frame: scan the whole frame instead"
    )
    stationary_frames: int = Field(
        10,
        ge=1,
        description="an object whose box has not moved for this many detected frames (and has no motion "
        "on it) stops getting a region of its own until the next full scan; it is carried meanwhile",
    )
    motion: MotionConfig = Field(default_factory=MotionConfig)


class TilingConfig(_Strict):
    """Overlapping tiles at native resolution plus the whole frame, merged by NMS."""

    enabled: bool = False
    size: int | None = Field(
        None, ge=32, description="tile side in frame pixels; None = the detector input size"
    )
    overlap: float = Field(
        0.25, ge=0, lt=0.9, description="fraction of a tile shared with its neighbour (objects on a seam)"
    )
    full_frame: bool = Field(
        True, description="also run the whole frame, downscaled, for objects larger than a tile"
    )
    tiles_per_frame: int | None = Field(
        None,
        ge=1,
        description="run only this many tiles of the grid per detected frame, in turn (round robin), plus "
        "the whole frame if full_frame; an object found in a tile not run this frame is carried (its last "
        "box reported again) until that tile runs again, and dropped then if the tile does not find it. "
        "None = every tile on every detected frame",
    )
    motion_gate: bool = Field(
        False,
        description="run a tile only when motion (tuned by regions.motion) or a moving object lies in it, "
        "or when it has not run for regions.full_scan_every detected frames; the people of a skipped tile "
        "are carried. With tiles_per_frame: the next N such tiles in turn",
    )
    carry_velocity: bool = Field(
        False,
        description="with tiles_per_frame: a carried box moves on at the velocity its object had between "
        "the last two times it was found (off: the last box is reported where it was; on measured no "
        "better on MOT17, BENCHMARKS.md issue 24 rotating tiles)",
    )


class CameraDetectConfig(_Strict):
    """``cameras[].detect``. With both off the detector sees the whole frame (the default)."""

    regions: RegionsConfig = Field(default_factory=RegionsConfig)
    tiling: TilingConfig = Field(default_factory=TilingConfig)

    @model_validator(mode="after")
    def _rotation_without_regions(self) -> CameraDetectConfig:
        t = self.tiling
        for key, on in (("tiles_per_frame", t.tiles_per_frame is not None), ("motion_gate", t.motion_gate)):
            if t.enabled and on and self.regions.enabled:
                raise ValueError(
                    f"tiling.{key} cannot be combined with regions.enabled: a regions full scan must run "
                    "every tile; turn one of them off"
                )
        return self

    @property
    def active(self) -> bool:
        return self.regions.enabled or self.tiling.enabled
