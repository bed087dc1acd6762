"""Face detection / embedding / gallery / matching settings (the ``faces:`` section)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FaceApiConfig(_Strict):
    """The small gallery HTTP API (``run_pipeline.py faces serve``)."""

    host: str = "127.0.0.1"
    port: int = Field(8765, ge=0, le=65535)
    token: SecretStr | None = Field(None, description="bearer token; prefer token_env")
    token_env: str | None = Field("VIDPIPE_FACES_TOKEN", description="environment variable holding the token")
    max_body_bytes: int = Field(20_000_000, ge=1024)


class UnknownCropsConfig(_Strict):
    """Where crops of unknown faces go (referenced by faces.unknown events) and how many are kept."""

    enabled: bool = True
    dir: str = "var/unknown_faces"
    max_files: int = Field(500, ge=1, description="oldest crops are deleted beyond this many")
    max_age_days: float = Field(7.0, gt=0, description="crops older than this are deleted")
    cooldown_s: float = Field(10.0, ge=0, description="at most one faces.unknown event per camera this often")


class LivenessConfig(_Strict):
    """Thresholds of the liveness evidence (see pipeline/analyze/faces/liveness.py for how they were measured)."""

    blink_ear: float = Field(0.21, gt=0, lt=1, description="eye aspect ratio at or below which eyes are shut")
    blink_open_delta: float = Field(0.06, gt=0, lt=1, description="how much wider the eyes are before/after")
    motion_min_residual: float = Field(
        0.05,
        gt=0,
        description="landmark residual to one homography (inter-ocular units) that a photo cannot make",
    )
    pad_threshold: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="presentation-attack detection: a face scoring below this probability of being real is "
        "refused on that frame (chosen by benchmarks/eval_pad.py on the project's attack clips: BENCHMARKS.md, "
        "issue 18)",
    )


class FacesConfig(_Strict):
    enabled: bool = False
    gallery_path: str = Field("var/faces.sqlite", description="SQLite gallery of enrolled people")
    threshold: float | None = Field(
        None,
        gt=0,
        le=2.0,
        description="largest mean template distance still counted as the same person; "
        "None = the threshold `faces calibrate` stored for the model (else a conservative built-in)",
    )
    margin: float = Field(
        0.04, ge=0, le=2.0, description="the second-best person must be at least this much further away"
    )
    detector_min_face_px: float = Field(40.0, ge=12, description="MTCNN min_face_size (pixels)")
    detector_thresholds: tuple[float, float, float] = (0.6, 0.7, 0.8)
    min_face_px: float = Field(60.0, ge=12, description="enrollment: smallest face side (pixels) accepted")
    min_sharpness: float = Field(
        40.0, ge=0, description="enrollment: smallest variance of the Laplacian of the 112 px face crop"
    )
    embedder_backend: Literal["torch", "onnxruntime"] = "torch"
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?)$")
    threads: int | None = Field(None, ge=1)
    max_faces_per_frame: int = Field(10, ge=1, description="the largest faces of a frame that get embedded")
    gallery_reload_s: float = Field(5.0, gt=0, description="re-read the gallery this often (API enrollments)")
    groups: dict[str, list[str]] = Field(
        default_factory=dict, description="group name -> enrolled person names (doors may allow groups)"
    )
    unknown_crops: UnknownCropsConfig = Field(default_factory=UnknownCropsConfig)
    liveness: LivenessConfig = Field(default_factory=LivenessConfig)
    api: FaceApiConfig = Field(default_factory=FaceApiConfig)
    max_photo_bytes: int = Field(
        20_000_000, ge=1024, description="enrollment: larger photo files are refused before they are read"
    )
    max_photo_pixels: int = Field(
        40_000_000,
        ge=10_000,
        description="enrollment: width x height from the image header, checked before decoding",
    )
    enroll_audit_log: str | None = Field(
        None, description="keyed audit log of enrollments (default: the gallery path + .audit.jsonl)"
    )

    @model_validator(mode="after")
    def _thresholds(self) -> FacesConfig:
        if not all(0.0 <= t <= 1.0 for t in self.detector_thresholds):
            raise ValueError(f"detector_thresholds must be in [0, 1], got {self.detector_thresholds}")
        return self
