"""One shard: the ordinary Pipeline over a subset of cameras, in its own process (a Ray actor's body).

The class has no Ray in it (the executor wraps it with ``ray.remote``), so it is the same Pipeline that
``executor: local`` runs, with three additions: events of a frame get replay-stable ids
(:mod:`pipeline.scale.event_ids`), ``status.camera`` events say where the camera runs (node, shard), and
the shard holds an exclusive lock on its var dir for its whole life, so a replacement shard cannot open the
same spool or door audit log while a half-dead predecessor still writes to them (one writer per chain).
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from pathlib import Path
from typing import Any

from pipeline.config.schema import CameraConfig, PipelineConfig, parse_config
from pipeline.core.events import Event
from pipeline.detect.detectors.base import Detector
from pipeline.run.runner import Pipeline
from pipeline.scale.event_ids import StableEventIds

log = logging.getLogger(__name__)


class ShardPipeline(Pipeline):
    """A Pipeline that stamps replay-stable event ids and its placement on the events it emits."""

    def __init__(self, cfg: PipelineConfig, *, ids: StableEventIds, where: dict[str, str], **kw: Any) -> None:
        self.ids = ids
        self.where = where
        super().__init__(cfg, **kw)

    def emit(self, event: Event) -> None:
        self.ids.assign(event)
        if event.type == "status.camera":
            event.data.update(self.where)
        super().emit(event)


def shard_config(cfg: PipelineConfig, camera_ids: list[str], var_dir: Path) -> PipelineConfig:
    """The config of one shard: its cameras, the doors among them, its own spools (Redis and every sink) and
    audit logs."""
    data = cfg.model_dump()
    wanted = set(camera_ids)
    data["cameras"] = [c for c in data["cameras"] if c["id"] in wanted]
    data["doors"] = [d for d in data["doors"] if set(d["cameras"]) <= wanted]
    data["clips"]["cameras"] = {k: v for k, v in data["clips"]["cameras"].items() if k in wanted}
    if data["sinks"]["mqtt"]:  # a shard knows only its cameras: it must not clear the others' HA entities
        data["sinks"]["mqtt"]["home_assistant"]["remove_stale"] = False
    data["redis"]["spool_path"] = str(var_dir / "spool.sqlite")
    for sink in [*([data["sinks"]["mqtt"]] if data["sinks"]["mqtt"] else []), *data["sinks"]["webhooks"]]:
        sink["spool_path"] = str(var_dir / Path(sink["spool_path"]).name)  # one writer per spool, as above
    for door in data["doors"]:
        door["audit_log"] = str(var_dir / Path(door["audit_log"]).name)
    data["metrics"]["http_port"] = None  # the driver serves every shard's metrics
    data["web"]["enabled"] = False
    data["executor"] = "local"
    return parse_config(data, f"shard of cameras {camera_ids}")


def _take_lock(path: Path, timeout_s: float) -> int:
    """Wait for the exclusive lock of a shard's var dir (the kernel frees it when its holder dies)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise RuntimeError(f"{path}: still locked by another shard after {timeout_s}s") from None
            time.sleep(0.1)


def _node_id() -> str:
    try:
        import ray
    except ImportError:
        return "local"
    if not ray.is_initialized():  # outside Ray (asking the runtime context would start one)
        return "local"
    return str(ray.get_runtime_context().get_node_id())


class Shard:
    """The body of a shard actor. Every method returns plain data (it crosses a process boundary).

    Built without a shard id it is a *standby*: a warm process (modules imported, detector loaded) that the
    driver keeps on each node, so that a shard re-placed after a failure starts in about a second instead
    of paying for a new worker process and a model load (most of the 15 s budget on a busy machine)."""

    def __init__(self, cfg_data: dict[str, Any], shard_id: str | None = None, **start: Any) -> None:
        self.cfg = parse_config(cfg_data, "driver config")
        logging.basicConfig(
            level=self.cfg.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        self.node_id = _node_id()
        self.shard_id = shard_id or "standby"
        self.pipeline: ShardPipeline | None = None
        self._lock_fd: int | None = None
        self._detector: Detector | None = None
        if shard_id is None:
            if self.cfg.detector.model != "none":
                from pipeline.detect.detectors.factory import build_detector

                self._detector = build_detector(self.cfg.detector)
        else:
            self.start_shard(shard_id, **start)

    def start_shard(
        self,
        shard_id: str,
        camera_ids: list[str],
        var_dir: str,
        run_id: str,
        epochs: dict[str, int],
        lock_timeout_s: float = 30.0,
        cfg_data: dict[str, Any] | None = None,
    ) -> None:
        """Run the shard: take its var dir's lock (waits for a dying predecessor), then start its Pipeline.

        ``cfg_data``: the driver's config now (a standby was made with an older one: cameras may have been
        added since)."""
        if cfg_data is not None:
            self.cfg = parse_config(cfg_data, "driver config")
        self.shard_id = shard_id
        # spools, audit logs, snapshots: private, as in a local run (pipeline/cli/private_files.py)
        os.umask(0o077)
        self.var_dir = Path(var_dir)
        self.var_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _take_lock(self.var_dir / "shard.lock", lock_timeout_s)
        self.ids = StableEventIds(run_id, dict(epochs))
        where = {"node": self.node_id, "shard": shard_id}
        detector, self._detector = self._detector, None
        pipeline = ShardPipeline(
            shard_config(self.cfg, camera_ids, self.var_dir),
            ids=self.ids,
            where=where,
            var_dir=self.var_dir,
            detector=detector,
        )
        self.pipeline = pipeline
        pipeline.start()
        log.info("shard %s on node %s: cameras %s", shard_id, self.node_id[:8], camera_ids)

    def _running(self) -> ShardPipeline:
        if self.pipeline is None:
            raise RuntimeError(f"shard {self.shard_id} has not started")
        return self.pipeline

    def ping(self) -> dict[str, Any]:
        p = self.pipeline
        return {
            "shard": self.shard_id,
            "node": self.node_id,
            "pid": os.getpid(),
            "started": p is not None,
            "finished": p is not None and p.wait(0),
        }

    def snapshot(self) -> dict[str, Any]:
        """Metrics and health for the driver's aggregated status line and Prometheus endpoint."""
        return {
            "shard": self.shard_id,
            "node": self.node_id,
            "status_line": self._running().metrics.status_line(),
            "prometheus": self._running().metrics.prometheus_text(),
            "health": self._running().health(),
        }

    def add_camera(self, cam_data: dict[str, Any], epoch: int) -> None:
        cam = CameraConfig.model_validate(cam_data)
        self.ids.epochs[cam.id] = epoch
        self._running().add_camera(cam)

    def remove_camera(self, camera_id: str) -> None:
        self._running().remove_camera(camera_id)

    def stop(self) -> None:
        self._running().stop()

    def release(self) -> None:
        """Give up the var dir's lock (a process that ends releases it anyway); only after ``join``."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)

    def join(self, timeout: float) -> bool:
        """Wait until everything accepted is published or spooled (then the actor may be killed)."""
        return self._running().join(timeout)
