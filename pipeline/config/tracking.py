"""Tracking, zones and event-lifecycle settings.

``TrackingConfig`` is the root ``tracking:`` section (tracker tuning, object filters, update throttling,
snapshots). ``CameraZonesConfig`` lives under ``cameras[].analytics`` (zones, masks, counting lines and
per-camera filter overrides), because polygons are drawn in one camera's pixels.

Coordinates are pixels of the decoded frame unless ``normalized: true`` (then 0..1 of width/height).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Point = tuple[float, float]
Anchor = Literal["bottom_center", "center"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ObjectFilter(_Strict):
    """Per-label filters against false positives."""

    min_score: float | None = Field(
        None, ge=0, le=1, description="drop single detections below this; None = tracker.low_score"
    )
    min_area: float = Field(0.0, ge=0, description="drop boxes smaller than this many square pixels")
    max_area: float | None = Field(None, gt=0, description="drop boxes larger than this many square pixels")
    threshold: float = Field(
        0.5,
        ge=0,
        le=1,
        description="a track is confirmed (and published) only once the median of its scores is >= this",
    )

    @model_validator(mode="after")
    def _area_order(self) -> ObjectFilter:
        if self.max_area is not None and self.max_area <= self.min_area:
            raise ValueError(f"max_area ({self.max_area}) must be greater than min_area ({self.min_area})")
        return self


class SnapshotConfig(_Strict):
    enabled: bool = True
    jpeg_quality: int = Field(85, ge=10, le=100)
    max_count: int | None = Field(1000, ge=1, description="keep at most this many snapshots per camera")
    max_bytes: int | None = Field(200_000_000, ge=1, description="keep at most this many bytes per camera")
    max_age_s: float | None = Field(7 * 24 * 3600.0, gt=0, description="delete snapshots older than this")
    min_score_gain: float = Field(
        0.02, ge=0, description="rewrite an event's snapshot only when its best score improved this much"
    )


class TrackingConfig(_Strict):
    enabled: bool = False
    objects: list[str] | None = Field(
        default_factory=lambda: ["person", "bicycle", "car", "motorcycle", "bus", "truck"],
        description="labels to track; null tracks every label",
    )
    high_score: float = Field(0.5, gt=0, le=1, description="ByteTrack first-pass detection score")
    low_score: float = Field(0.1, ge=0, le=1, description="detections below this are ignored")
    new_track_score: float = Field(0.6, ge=0, le=1, description="an unmatched detection starts a track")
    match_iou: float = Field(0.2, gt=0, le=1, description="first pass: minimum IoU to associate")
    low_match_iou: float = Field(0.5, gt=0, le=1, description="second (low-score) pass minimum IoU")
    new_match_iou: float = Field(0.3, gt=0, le=1, description="minimum IoU to activate a tentative track")
    max_lost_frames: int = Field(30, ge=0, description="frames a track may go unseen before it ends")
    min_hits: int = Field(3, ge=1, description="matched frames before a track can be confirmed")
    class_aware: bool = Field(
        True, description="never associate a detection with a track of another label (or label group)"
    )
    label_groups: list[list[str]] = Field(
        default_factory=lambda: [["car", "truck", "bus"]],
        description="labels a detector confuses for one object: they may share a track (its label is the "
        "score-weighted majority) and duplicates among them are merged",
    )
    dedupe_iou: float | None = Field(
        0.7, gt=0, le=1, description="drop a detection overlapping a better one of its label group this much"
    )
    update_interval_s: float = Field(5.0, ge=0, description="at most one tracks.update per object per this")
    filters: dict[str, ObjectFilter] = Field(default_factory=dict, description="per-label filters")
    default_filter: ObjectFilter = Field(default_factory=ObjectFilter, description="labels not in filters")
    snapshots: SnapshotConfig = Field(default_factory=SnapshotConfig)

    @model_validator(mode="after")
    def _score_order(self) -> TrackingConfig:
        if self.low_score > self.high_score:
            raise ValueError(f"low_score ({self.low_score}) must not exceed high_score ({self.high_score})")
        return self


def _check_points(points: list[Point], normalized: bool, need: int) -> list[Point]:
    if len(points) < need:
        raise ValueError(f"needs at least {need} points, got {len(points)}")
    for i, (x, y) in enumerate(points):
        if x < 0 or y < 0 or (normalized and (x > 1 or y > 1)):
            rng = "0..1 (normalized)" if normalized else ">= 0 pixels"
            raise ValueError(f"point {i} ({x}, {y}) is outside {rng}")
    return points


class ZoneConfig(_Strict):
    points: list[Point] = Field(..., description="polygon vertices [[x, y], ...], at least 3")
    normalized: bool = False
    objects: list[str] | None = Field(None, description="labels this zone cares about; null = all")
    inertia: int = Field(3, ge=1, description="consecutive frames inside (outside) needed to enter (exit)")
    loiter_time_s: float | None = Field(None, gt=0, description="emit tracks.loitering after this long")
    anchor: Anchor = "bottom_center"

    @model_validator(mode="after")
    def _points(self) -> ZoneConfig:
        _check_points(self.points, self.normalized, 3)
        return self


class MaskConfig(_Strict):
    points: list[Point] = Field(..., description="polygon; detections whose anchor is inside are ignored")
    normalized: bool = False
    anchor: Anchor = "bottom_center"

    @model_validator(mode="after")
    def _points(self) -> MaskConfig:
        _check_points(self.points, self.normalized, 3)
        return self


class LineConfig(_Strict):
    """A counting line from A to B. ``forward`` = the direction A->B turned 90 degrees clockwise on screen.

    So a line drawn left to right counts downward motion as forward; drawn top to bottom, leftward motion.
    """

    points: list[Point] = Field(..., description="[[ax, ay], [bx, by]]")
    normalized: bool = False
    objects: list[str] | None = None
    anchor: Anchor = "bottom_center"
    forward_name: str = Field("forward", min_length=1)
    backward_name: str = Field("backward", min_length=1)
    hysteresis_px: float = Field(2.0, ge=0, description="ignore jitter closer than this to the line")

    @model_validator(mode="after")
    def _points(self) -> LineConfig:
        if len(self.points) != 2:
            raise ValueError(f"a line needs exactly 2 points, got {len(self.points)}")
        _check_points(self.points, self.normalized, 2)
        if self.points[0] == self.points[1]:
            raise ValueError("the two points of a line must differ")
        if self.forward_name == self.backward_name:
            raise ValueError("forward_name and backward_name must differ")
        return self


_NAME = r"^[A-Za-z0-9_.-]+$"


class CameraZonesConfig(_Strict):
    """Per-camera zones, masks and counting lines (lives under ``cameras[].analytics``)."""

    zones: dict[str, ZoneConfig] = Field(default_factory=dict)
    masks: list[MaskConfig] = Field(default_factory=list)
    lines: dict[str, LineConfig] = Field(default_factory=dict)
    filters: dict[str, ObjectFilter] = Field(
        default_factory=dict, description="per-label filters overriding tracking.filters for this camera"
    )

    @field_validator("zones", "lines")
    @classmethod
    def _names(cls, v: dict) -> dict:
        import re

        for name in v:
            if not re.match(_NAME, name):
                raise ValueError(f"name {name!r} may only use letters, digits, '_', '.', '-'")
        return v
