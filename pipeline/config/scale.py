"""The ``ray:`` config section (used when ``executor: ray``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class RayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: str = Field(
        "local",
        description="'local' starts a one-machine Ray in this process; 'auto' joins the running cluster; "
        "or a cluster address such as 10.0.0.5:6379",
    )
    max_cameras_per_shard: int = Field(8, ge=1, description="cameras per shard (one actor process each)")
    cpus_per_camera: float = Field(0.5, gt=0, description="Ray CPU resource a camera asks for")
    gpus_per_camera: float = Field(0.0, ge=0, description="Ray GPU resource a camera asks for (fractional)")
    memory_mb_per_camera: int = Field(0, ge=0, description="Ray memory resource per camera; 0 = none")
    health_interval_s: float = Field(1.0, gt=0, description="how often the driver pings every shard")
    ping_timeout_s: float = Field(3.0, gt=0, description="a shard silent this long counts as dead")
    lease_s: float | None = Field(
        None,
        gt=0,
        description="a shard that has not been pinged by the driver for this long stops publishing by "
        "itself (its events go to its spool): a hung, cut-off or orphaned shard fences itself; must be "
        "longer than health_interval_s + ping_timeout_s; None: twice that",
    )
    start_timeout_s: float = Field(60.0, gt=0, description="a new shard must be running within this")
    cluster_lost_after_s: float = Field(
        15.0,
        gt=0,
        description="the driver's supervision failing this long means the Ray cluster is lost: exit 4",
    )
    standby: bool = Field(
        True,
        description="keep one warm idle shard process per node (detector loaded) so that a failed shard "
        "restarts in about a second; it holds no Ray resources, so it is not used when cameras ask for GPUs "
        "or memory",
    )
    shards_dir: str | None = Field(
        None,
        description="where each shard keeps its var dir and spool (<var-dir>/shards when None); a "
        "replacement shard reopens the dead one's spool here, so on several machines it must be storage "
        "every node can reach",
    )

    @model_validator(mode="after")
    def _lease_outlasts_a_ping(self) -> RayConfig:
        if self.lease_s is not None and self.lease_s <= self.health_interval_s + self.ping_timeout_s:
            raise ValueError(
                f"ray.lease_s ({self.lease_s}) must be longer than ray.health_interval_s + "
                f"ray.ping_timeout_s ({self.health_interval_s} + {self.ping_timeout_s}): a healthy shard "
                "would fence itself between two pings"
            )
        return self

    @property
    def lease(self) -> float:
        """The lease in seconds (``lease_s`` or its default)."""
        return self.lease_s or 2 * (self.health_interval_s + self.ping_timeout_s)
