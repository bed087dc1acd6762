"""The ``sinks:`` config section: extra destinations beside ``redis:`` (which keeps its own section as before).

    sinks:
      mqtt:
        url: mqtts://vidpipe:secret@broker.lan:8883   # mqtt:// plain, mqtts:// TLS; credentials in the URL
        topic_prefix: vidpipe                           # vidpipe/<camera>/<family>/<kind>, vidpipe/available
      webhooks:
        - name: alarm
          url: https://alarm.lan/hooks/vidpipe

Every sink has its own queue and spool (``spool_path``), so a slow or down sink never holds up another.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.config.var_dir import RuntimePaths


class DeliveryConfig(BaseModel):
    """What every sink's delivery stage needs (the same keys and meaning as in ``redis:``)."""

    model_config = ConfigDict(extra="forbid")

    spool_path: str = Field("", description="SQLite file events wait in while the sink is away")
    spool_max_events: int = Field(1_000_000, ge=1)
    queue_size: int = Field(10_000, ge=2, description="events waiting in memory for this sink")
    batch_size: int = Field(100, ge=1, le=10_000, description="events per send")
    retry_initial_s: float = Field(0.5, gt=0, description="first wait before retrying an unreachable sink")
    retry_max_s: float = Field(10.0, gt=0, description="cap of the doubling retry wait")
    enqueue_timeout_s: float = Field(
        0.0, ge=0, description="a producer waits this long (once) for room in the queue, then spools directly"
    )
    flush_timeout_s: float = Field(10.0, ge=0, description="at shutdown, time allowed to empty the spool")
    notice_interval_s: float = Field(60.0, gt=0, description="while spooling, say so this often")


class HomeAssistantConfig(BaseModel):
    """Home Assistant MQTT discovery (``sinks.mqtt.home_assistant``): entities appear in HA by themselves."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="publish retained discovery configs and entity states")
    discovery_prefix: str = Field(
        "homeassistant", pattern=r"^[^#+]+$", description="Home Assistant's discovery prefix (its default)"
    )
    node_id: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_-]+$", description="discovery node id; None = the topic prefix"
    )
    classes: list[str] = Field(
        default_factory=lambda: ["person", "car"], description="a count sensor per camera/zone for each"
    )
    snapshot_max_kb: int = Field(2048, ge=1, description="larger snapshots are not sent to the camera entity")
    remove_stale: bool = Field(
        True,
        description="at connect, clear retained configs under this node id that the config no longer has "
        "(off in Ray shards: each shard announces only its own cameras)",
    )


class MqttConfig(DeliveryConfig):
    url: str = Field(..., description="mqtt://[user:password@]host[:1883] or mqtts://... for TLS (port 8883)")
    topic_prefix: str = Field("vidpipe", pattern=r"^[^#+]+$", description="first topic level; no wildcards")
    qos: Literal[0, 1, 2] = Field(1, description="MQTT QoS of event messages (1: at least once)")
    client_id: str | None = Field(None, description="None: vidpipe-<prefix>-<random>")
    keepalive_s: int = Field(30, ge=5)
    connect_timeout_s: float = Field(5.0, gt=0)
    publish_timeout_s: float = Field(5.0, gt=0, description="a batch without PUBACKs this long is an outage")
    ca_file: str | None = Field(None, description="mqtts://: CA bundle to trust; None = the system's")
    tls_insecure: bool = Field(
        False, description="mqtts://: skip the host name check (self-signed labs only)"
    )
    spool_path: str = "var/spool-mqtt.sqlite"
    home_assistant: HomeAssistantConfig = Field(default_factory=HomeAssistantConfig)

    @field_validator("url")
    @classmethod
    def _mqtt_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError("must look like mqtt://[user:password@]host[:port] or mqtts://... (TLS)")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as exc:
            raise ValueError(f"bad port: {exc}") from None
        return v


class WebhookConfig(DeliveryConfig):
    name: str = Field("webhook", pattern=r"^[A-Za-z0-9_.-]+$", description="names its logs, metrics, spool")
    url: str = Field(..., description="http(s)://... that receives a POST of a JSON array of events")
    headers: dict[str, str] = Field(default_factory=dict, description="extra headers, e.g. Authorization")
    timeout_s: float = Field(5.0, gt=0, description="a request unanswered this long counts as an outage")

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL")
        return v

    @model_validator(mode="after")
    def _default_spool(self) -> WebhookConfig:
        if not self.spool_path:
            self.spool_path = f"var/spool-webhook-{self.name}.sqlite"
        return self


class SinksConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mqtt: MqttConfig | None = None
    webhooks: list[WebhookConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _distinct_names_and_spools(self) -> SinksConfig:
        names: set[str] = set()
        spools: dict[str, str] = {}
        if self.mqtt is not None:
            spools[self.mqtt.spool_path] = "sinks.mqtt"
        for i, hook in enumerate(self.webhooks):
            if hook.name in names:
                raise ValueError(f"webhooks[{i}]: name {hook.name!r} is used twice")
            names.add(hook.name)
            if hook.spool_path in spools:
                raise ValueError(
                    f"webhooks[{i}].spool_path {hook.spool_path!r} is also the spool of {spools[hook.spool_path]}"
                )
            spools[hook.spool_path] = f"sinks.webhooks[{i}]"
        return self

    def with_spools_under(self, var_dir: str | Path) -> SinksConfig:
        """A copy whose default ``var/...`` spool paths live under ``var_dir`` (``--var-dir``), as
        ``redis.spool_path`` does; paths written without the ``var/`` prefix stay as they are."""
        out = self.model_copy(deep=True)
        for sink in [*([out.mqtt] if out.mqtt else []), *out.webhooks]:
            sink.spool_path = str(RuntimePaths(var_dir).resolve(sink.spool_path))
        return out

    def subscribe_hints(self) -> list[str]:
        """Shell lines a user can paste to watch these sinks (printed at start beside the Redis ones)."""
        if self.mqtt is None:
            return []
        parts = urlsplit(self.mqtt.url)
        tls = " --cafile CA.pem" if parts.scheme == "mqtts" else ""
        port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        user = f" -u {parts.username} -P '…'" if parts.username else ""
        return [f"mosquitto_sub -h {parts.hostname} -p {port}{user}{tls} -t '{self.mqtt.topic_prefix}/#' -v"]

    def spool_owners(self) -> dict[str, str]:
        """spool path -> config key, for every sink here (to check against ``redis.spool_path``)."""
        out = {self.mqtt.spool_path: "sinks.mqtt.spool_path"} if self.mqtt else {}
        for i, hook in enumerate(self.webhooks):
            out[hook.spool_path] = f"sinks.webhooks[{i}].spool_path"
        return out
