"""The ``ray:`` config section (used when ``executor: ray``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


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
