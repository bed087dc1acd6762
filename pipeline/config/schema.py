"""Pipeline configuration: YAML validated with pydantic.

Every error names the file, the key path (``cameras[1].read_timeout_s``) and what was expected, so a typo
in a 40-camera file is found in seconds. Unknown keys are errors too (``extra="forbid"``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.config.clips import ClipsConfig
from pipeline.config.doors import DoorConfig
from pipeline.config.faces import FacesConfig
from pipeline.config.profiles import PROFILES, ProfileName, profile_detect
from pipeline.config.regions import CameraDetectConfig
from pipeline.config.scale import RayConfig
from pipeline.config.sinks import SinksConfig
from pipeline.config.tracking import CameraZonesConfig, TrackingConfig
from pipeline.config.web import WebConfig
from pipeline.core.sources import redact_url


class ConfigError(ValueError):
    """A configuration file is missing, unparsable or invalid. The message says where and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReconnectConfig(_Strict):
    initial_s: float = Field(0.5, gt=0, description="first back-off after a disconnect")
    max_s: float = Field(30.0, gt=0, description="back-off cap")
    multiplier: float = Field(2.0, ge=1.0)
    jitter: float = Field(0.2, ge=0.0, le=1.0, description="± fraction of random jitter on each wait")
    max_attempts: int | None = Field(None, ge=1, description="give up after this many; None = forever")


_LIVE_PREFIXES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "/dev/video")


class CameraConfig(_Strict):
    id: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    source: str = Field(..., min_length=1, description="file path, rtsp://, http(s):// or /dev/videoN")
    record_source: str | None = Field(
        None,
        min_length=1,
        description="the camera's main (high-resolution) stream, for clips only: its packets are kept and "
        "remuxed, never decoded; source is then the low-resolution stream detection decodes (Frigate's "
        "detect/record roles). None = source serves both (docs/clips.md)",
    )
    enabled: bool = True
    rtsp_transport: Literal["tcp", "udp"] = "tcp"
    read_timeout_s: float = Field(5.0, gt=0, description="a stream silent this long counts as disconnected")
    open_timeout_s: float = Field(10.0, gt=0)
    detect_fps: float | None = Field(
        None, gt=0, description="run detection at most this often; None = every frame"
    )
    queue_policy: Literal["latest", "block"] | None = Field(
        None,
        description="None: 'latest' for live sources and files paced in real time (realtime: true), like "
        "a camera: the detector gets the newest frame; 'block' for other files (every frame)",
    )
    queue_size: int = Field(8, ge=1)
    loop: bool = Field(False, description="restart a file source from the top when it ends")
    realtime: bool = Field(False, description="pace a file source at its native frame rate")
    reconnect: ReconnectConfig = Field(default_factory=ReconnectConfig)
    ffmpeg_options: dict[str, str] = Field(
        default_factory=dict,
        description="extra FFmpeg options for opening the source, e.g. {video_size: 1280x720, "
        "input_format: mjpeg, framerate: '30'} for a V4L2 camera; they override the decoder's defaults",
    )
    analytics: CameraZonesConfig = Field(default_factory=CameraZonesConfig)
    profile: ProfileName | None = Field(
        None,
        description="named detect settings (pipeline/config/profiles.py): whole, street (tiles), "
        "street-rotate (street's tiles one per frame), street-far (more tiles), door; keys under detect "
        "are applied on top",
    )
    detect: CameraDetectConfig = Field(
        default_factory=CameraDetectConfig,
        description="where the detector looks: motion-gated regions and/or tiles at native resolution",
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, data: Any) -> Any:
        """``profile`` fills ``detect``; the camera's own ``detect`` keys win. An unknown name is left to
        the ``profile`` field's own error (it lists the names)."""
        if not isinstance(data, dict) or data.get("profile") not in PROFILES:
            return data
        detect = data.get("detect")
        if isinstance(detect, BaseModel):
            detect = detect.model_dump()
        if detect is not None and not isinstance(detect, dict):
            return data  # the detect field reports what is wrong with it
        return {**data, "detect": profile_detect(data["profile"], detect)}

    @model_validator(mode="after")
    def _record_source_is_a_second_live_stream(self) -> CameraConfig:
        """Packets of the two streams are matched by capture time (each stream's clock mapped onto the wall
        clock), which a file does not have; and the same URL twice would read the camera twice for nothing."""
        rec = self.record_source
        if rec is None:
            return self
        if rec.strip() == self.source.strip():
            raise ValueError(
                f"camera {self.id!r}: record_source is the same as source; leave record_source out "
                "(source then serves detection and clips)"
            )
        if not (self.is_live and rec.lower().startswith(_LIVE_PREFIXES)):
            raise ValueError(
                f"camera {self.id!r}: record_source needs source and record_source to be live streams "
                f"(rtsp://, http(s)://, ...), got source {redact_url(self.source)!r} and record_source "
                f"{redact_url(rec)!r}: the two streams are matched by capture time, which a file has not"
            )
        return self

    @property
    def is_live(self) -> bool:
        return self.source.lower().startswith(_LIVE_PREFIXES)

    @property
    def effective_queue_policy(self) -> Literal["latest", "block"]:
        """A file paced in real time stands in for a camera (the quick start's demo): it gets the newest
        frame too, else a busy detector lets its queue fill and the live view falls seconds behind."""
        return self.queue_policy or ("latest" if self.is_live or self.realtime else "block")


class RedisConfig(_Strict):
    url: str | None = Field(
        None,
        description="redis://[:password@]host:port/db or rediss:// for TLS; None = start a local redis-server",
    )
    prefix: str = Field("vidpipe", pattern=r"^[A-Za-z0-9_.-]+$")
    stream_maxlen: int = Field(100_000, ge=1, description="approximate MAXLEN per stream")
    spool_path: str = Field("var/spool.sqlite", description="SQLite file events wait in while Redis is down")
    spool_max_events: int = Field(1_000_000, ge=1)
    publish_detections: bool = Field(True, description="publish a detections.frame event per detected frame")
    socket_timeout_s: float = Field(
        2.0, gt=0, description="a Redis command unanswered this long counts as an outage (hung server)"
    )
    connect_timeout_s: float = Field(2.0, gt=0)
    retry_initial_s: float = Field(0.5, gt=0, description="first wait before retrying an unreachable Redis")
    retry_max_s: float = Field(10.0, gt=0, description="cap of the doubling retry wait")
    batch_size: int = Field(256, ge=1, le=10_000, description="events per Redis round trip")
    queue_size: int = Field(10_000, ge=1, description="events waiting in memory for the publisher")
    enqueue_timeout_s: float = Field(
        2.0, ge=0, description="a producer waits this long for room in the queue, then spools directly"
    )
    flush_timeout_s: float = Field(10.0, ge=0, description="at shutdown, time allowed to empty the spool")
    start_without_redis: bool = Field(
        False,
        description="start (spooling) when Redis is unusable at start; default: exit 2 naming the cause",
    )


class BatchConfig(_Strict):
    max_batch: int = Field(1, ge=1, le=256)
    max_wait_ms: float = Field(5.0, ge=0)


class DetectorConfig(_Strict):
    model: str = Field(
        "yolox-nano",
        description="a model-store name (yolox-nano, yolov3-tiny, nanodet-m-416, ...), 'none', or a path to an .onnx file",
    )
    backend: Literal["onnxruntime", "torch", "tensorrt"] = "onnxruntime"
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?)$")
    input_size: int = Field(416, ge=32)
    score_threshold: float = Field(0.25, ge=0, le=1)
    nms_iou: float = Field(0.45, gt=0, le=1)
    classes: list[str] | None = Field(
        default_factory=lambda: ["person", "bicycle", "car", "motorcycle", "bus", "truck"],
        description="keep only these class names; null keeps all",
    )
    batch: BatchConfig = Field(default_factory=BatchConfig)
    threads: int | None = Field(None, ge=1, description="CPU inference threads; None = backend default")
    layout: Literal["auto", "v5", "v8", "yolox"] = Field(
        "auto", description="output layout of an .onnx YOLO model; auto = tell from the output shape"
    )
    resize: Literal["auto", "letterbox", "stretch"] = Field(
        "auto",
        description="auto = what the model family was trained with (darknet: stretch, others: letterbox)",
    )
    precision: Literal["fp32", "int8"] = Field(
        "fp32", description="int8 = static int8 quantization on ONNX Runtime (engines/quantize.py)"
    )
    family: str = Field(
        default="auto",
        description="detector family (pipeline/detect/detectors/registry.py: darknet, onnx-yolo, ssd, mtcnn, none); "
        "auto = inferred from detector.model and logged",
    )
    calibration_images: str | None = Field(
        None,
        description="int8 calibration: a folder of images or a video file, ideally this camera's own frames; "
        "None = a built-in set (scikit-image sample photos + demo clip frames)",
    )
    calibration_limit: int = Field(32, ge=1, description="at most this many calibration images")

    @property
    def fp16(self) -> bool:
        """Half precision where a GPU backend builds the engine (ONNX Runtime keeps its exported fp32)."""
        return self.device.startswith("cuda") and self.backend != "onnxruntime"

    @model_validator(mode="after")
    def _int8_needs_onnxruntime(self) -> DetectorConfig:
        if self.precision == "int8" and self.backend != "onnxruntime":
            raise ValueError(
                f"detector.precision: int8 runs only on backend onnxruntime, got backend {self.backend!r}"
            )
        return self

    @field_validator("input_size")
    @classmethod
    def _multiple_of_32(cls, v: int) -> int:
        if v % 32:
            raise ValueError(f"must be a multiple of 32, got {v}")
        return v


class MetricsConfig(_Strict):
    http_port: int | None = Field(
        None, ge=0, le=65535, description="Prometheus text on this port; None = off"
    )
    http_host: str = "127.0.0.1"
    status_interval_s: float = Field(5.0, gt=0)


class PipelineConfig(_Strict):
    cameras: list[CameraConfig] = Field(..., min_length=1)
    detector: DetectorConfig = Field(default_factory=DetectorConfig)
    redis: RedisConfig = Field(default_factory=RedisConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    faces: FacesConfig = Field(default_factory=FacesConfig)
    doors: list[DoorConfig] = Field(default_factory=list)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    web: WebConfig = Field(default_factory=WebConfig)
    sinks: SinksConfig = Field(default_factory=SinksConfig, description="MQTT, webhooks beside redis")
    clips: ClipsConfig = Field(default_factory=ClipsConfig, description="MP4 clips of doors and tracks")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    stop_timeout_s: float = Field(
        8.0,
        ge=1.0,
        le=600.0,
        description="after SIGTERM/SIGINT the run exits within this many seconds: it drains what fits and "
        "spools the rest (docs/running.md); keep it below your service manager's grace period",
    )
    executor: Literal["local", "ray"] = Field(
        "local", description="local: every camera in this process; ray: cameras sharded on a Ray cluster"
    )
    ray: RayConfig = Field(default_factory=RayConfig, description="shards and placement (executor: ray)")

    @model_validator(mode="after")
    def _doors_fit_one_shard(self) -> PipelineConfig:
        """A door's cameras share one shard (its audit log has a single writer), so they must fit in one."""
        if self.executor == "ray":
            for i, door in enumerate(self.doors):
                if len(door.cameras) > self.ray.max_cameras_per_shard:
                    raise ValueError(
                        f"doors[{i}] ({door.id}): {len(door.cameras)} cameras do not fit one shard "
                        f"(ray.max_cameras_per_shard is {self.ray.max_cameras_per_shard}); a door's cameras "
                        "must run in one shard"
                    )
        return self

    @model_validator(mode="after")
    def _unique_camera_ids(self) -> PipelineConfig:
        seen: set[str] = set()
        for cam in self.cameras:
            if cam.id in seen:
                raise ValueError(f"camera id {cam.id!r} is used twice")
            seen.add(cam.id)
        return self

    @model_validator(mode="after")
    def _doors_refer_to_cameras(self) -> PipelineConfig:
        cams = {c.id for c in self.cameras}
        door_ids: set[str] = set()
        for i, door in enumerate(self.doors):
            if door.id in door_ids:
                raise ValueError(f"doors[{i}]: door id {door.id!r} is used twice")
            door_ids.add(door.id)
            unknown = [c for c in door.cameras if c not in cams]
            if unknown:
                raise ValueError(f"doors[{i}] ({door.id}): unknown camera id(s) {unknown}")
        unknown_clips = sorted(set(self.clips.cameras) - cams)
        if unknown_clips:
            raise ValueError(f"clips.cameras: unknown camera id(s) {unknown_clips}")
        if self.doors and not self.faces.enabled:
            raise ValueError("doors are configured but faces.enabled is false (doors need face recognition)")
        return self


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<root>"


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        got = e.get("input")
        got_s = "" if isinstance(got, dict | list) else redact_url(f" (got {got!r})")  # no camera passwords
        lines.append(f"  {_loc(e['loc'])}: {e['msg']}{got_s}")
    return "\n".join(lines)


def parse_config(data: dict, source: str = "<config>") -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def load_config(path: str | Path) -> PipelineConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}:{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return parse_config(data, str(path))
