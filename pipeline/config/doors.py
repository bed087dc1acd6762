"""Door access policy settings (one entry of the ``doors:`` list)."""

from __future__ import annotations

import os
import re
from datetime import time as dtime
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$|^24:00$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TimeWindow(_Strict):
    """Days plus an HH:MM range in the door's timezone. start > end wraps past midnight (22:00-06:00)."""

    days: list[str] = Field(default_factory=lambda: list(DAYS))
    start: str = "00:00"
    end: str = "24:00"

    @field_validator("days")
    @classmethod
    def _days(cls, v: list[str]) -> list[str]:
        out = [d.strip().lower()[:3] for d in v]
        bad = [d for d, o in zip(v, out, strict=True) if o not in DAYS]
        if bad:
            raise ValueError(f"unknown day(s) {bad}; use {', '.join(DAYS)}")
        return out

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, v: str) -> str:
        if not _HHMM.match(v):
            raise ValueError("expected HH:MM (00:00..24:00)")
        return v

    @staticmethod
    def minutes(v: str) -> int:
        h, m = v.split(":")
        return int(h) * 60 + int(m)

    def contains(self, weekday: int, clock: dtime) -> bool:
        """weekday: 0 = Monday. A wrapping window belongs to the day it starts on."""
        now = clock.hour * 60 + clock.minute
        start, end = self.minutes(self.start), self.minutes(self.end)
        today, yesterday = DAYS[weekday], DAYS[(weekday - 1) % 7]
        if start <= end:
            return today in self.days and start <= now < end
        return (today in self.days and now >= start) or (yesterday in self.days and now < end)


class ReaderConfig(_Strict):
    """A badge / PIN reader's own HMAC key (at least 16 characters), from the environment or a file."""

    secret_env: str | None = Field(None, description="environment variable holding the reader's key")
    secret_file: str | None = Field(None, description="file holding the reader's key (whitespace stripped)")

    @model_validator(mode="after")
    def _one_source(self) -> ReaderConfig:
        if (self.secret_env is None) == (self.secret_file is None):
            raise ValueError("set exactly one of secret_env or secret_file")
        return self

    def key(self, door_id: str, reader_id: str) -> bytes:
        """The key; raises ValueError naming the door, reader and variable or file (never the value)."""
        where = f"door {door_id!r} reader {reader_id!r}"
        if self.secret_env is not None:
            value = os.environ.get(self.secret_env, "")
            if not value:
                raise ValueError(f"{where}: environment variable {self.secret_env} is not set or empty")
        else:
            try:
                value = Path(self.secret_file or "").read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ValueError(
                    f"{where}: cannot read key file {self.secret_file}: {exc.strerror}"
                ) from None
        if len(value) < 16:
            raise ValueError(f"{where}: the key must be at least 16 characters")
        return value.encode()


class SecondFactorConfig(_Strict):
    """A PIN pad or badge reader publishing to Redis: a grant also needs one of its signed messages for this
    door (docs/doors.md, "Second factor") received within ``within_s`` seconds of the face match."""

    channel: str = Field(..., min_length=1, description="Redis pub/sub channel the reader publishes to")
    within_s: float = Field(10.0, gt=0, le=300)
    readers: dict[str, ReaderConfig] = Field(
        default_factory=dict,
        description="reader id -> its key (secret_env or secret_file); messages must be signed by one",
    )
    max_age_s: float = Field(5.0, gt=0, le=60, description="older reader messages are refused")

    @field_validator("readers")
    @classmethod
    def _reader_ids(cls, v: dict[str, ReaderConfig]) -> dict[str, ReaderConfig]:
        bad = [r for r in v if not re.match(r"^[A-Za-z0-9_.:-]{1,64}$", r)]
        if bad:
            raise ValueError(f"reader id(s) {bad}: use 1-64 of A-Z a-z 0-9 _ . : -")
        return v


LivenessMode = Literal[
    "off", "blink", "motion", "any", "all", "pad", "pad+blink", "pad+motion", "pad+any", "pad+all"
]
# stops phone/tablet screens and photos (learned presentation-attack detection, every voting frame) while a
# live user opens within the vote window: see docs/door-decisions.md and BENCHMARKS.md (issue 18)
DEFAULT_LIVENESS: LivenessMode = "pad"


class DoorConfig(_Strict):
    id: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    cameras: list[str] = Field(..., min_length=1, description="camera ids whose faces may open this door")
    allow_people: list[str] = Field(default_factory=list, description="enrolled names allowed in")
    allow_groups: list[str] = Field(default_factory=list, description="faces.groups names allowed in")
    schedule: list[TimeWindow] = Field(
        default_factory=lambda: [TimeWindow()], description="when allowed people may enter; empty = never"
    )
    timezone: str = "UTC"
    k_frames: int = Field(3, ge=1, description="matching frames of one identity needed for a decision")
    window_s: float = Field(3.0, gt=0, description="those frames must fall within this many seconds")
    min_face_px: float = Field(
        50.0, ge=12, description="smaller faces do not vote (door cameras typically see 60-90 px faces)"
    )
    min_sharpness: float = Field(
        10.0, ge=0, description="blurrier faces (variance of the Laplacian at 112 px) do not vote"
    )
    liveness: LivenessMode = Field(
        DEFAULT_LIVENESS,
        description="evidence a grant needs inside the vote window: pad (presentation-attack detection on "
        "every voting frame), blink, motion (head turn), any, all, pad+blink|motion|any|all, off",
    )
    second_factor: SecondFactorConfig | None = None
    cooldown_s: float = Field(10.0, ge=0, description="after a decision for a person, wait this long")
    max_frame_age_s: float = Field(2.0, gt=0, description="older frames (capture_time) fail closed")
    secret: SecretStr | None = Field(None, description="HMAC key; prefer secret_env")
    secret_env: str | None = Field(None, description="environment variable holding the HMAC key")
    audit_log: str = Field("var/doors_audit.jsonl", description="append-only hash-chained decision log")

    @field_validator("liveness", mode="before")
    @classmethod
    def _liveness_off(cls, v: object) -> object:
        """YAML 1.1 reads a bare ``off`` (and ``no``/``false``) as False: that means "off" here."""
        return "off" if v is False else v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("unknown timezone (use an IANA name like Europe/Paris)") from None
        return v

    @model_validator(mode="after")
    def _one_secret(self) -> DoorConfig:
        if (self.secret is None) == (self.secret_env is None):
            raise ValueError(f"door {self.id!r}: set exactly one of secret or secret_env")
        return self

    def secret_bytes(self) -> bytes:
        """The HMAC key. Raises ValueError (naming the door and variable, never the value) if unset."""
        if self.secret is not None:
            value = self.secret.get_secret_value()
        else:
            value = os.environ.get(self.secret_env or "", "")
            if not value:
                raise ValueError(
                    f"door {self.id!r}: environment variable {self.secret_env} is not set or empty"
                )
        if len(value) < 16:
            raise ValueError(f"door {self.id!r}: the secret must be at least 16 characters")
        return value.encode()
