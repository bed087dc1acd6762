"""One shard: the ordinary Pipeline over a subset of cameras, in its own process (a Ray actor's body).

The class has no Ray in it (the executor wraps it with ``ray.remote``), so it is the same Pipeline that
``executor: local`` runs, with three additions: events of a frame get replay-stable ids
(:mod:`pipeline.scale.event_ids`), ``status.camera`` events say where the camera runs (node, shard), and
the shard holds an exclusive lock on its var dir for its whole life, so a replacement shard cannot open the
same spool or door audit log while a half-dead predecessor still writes to them (one writer per chain).

Fencing (docs/scale.md): a placement carries an epoch (the driver's ``INCR {prefix}:fence:{shard}``). The
shard's Redis writes are checked against it in Redis (a newer placement makes them refused), the driver's
pings are its lease (unpinged for ``ray.lease_s`` it cuts off its own delivery: events go to its spool),
and a replacement that finds its var dir still locked (a hung holder) does not wait for it: it runs in a
fresh ``epoch-<N>`` folder inside it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from pipeline.config.schema import CameraConfig, PipelineConfig, parse_config
from pipeline.core.events import Event
from pipeline.deliver.redis_transport import Fence, RedisTransport, fence_key
from pipeline.deliver.spool import Spool, SpoolError
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


HOME_LOCK_WAIT_S = 3.0  # a fenced replacement waits this long for a dying holder, then takes a fresh folder


def _take_var_dir(
    home: Path, fence_epoch: int | None, lock_timeout_s: float, home_wait_s: float = HOME_LOCK_WAIT_S
) -> tuple[Path, int]:
    """The var dir this placement runs in and its lock.

    Unfenced (no epoch): ``home``, waiting for its lock as long as ``lock_timeout_s``. Fenced: ``home`` if
    its holder is gone within ``home_wait_s`` (its spool is adopted: everything in it was accepted by
    a dead process), else ``home/epoch-<N>``: the holder is alive or hung, and its spool and audit logs stay
    its own until it ends (the next placement or run that gets ``home`` delivers them)."""
    if fence_epoch is None:
        return home, _take_lock(home / "shard.lock", lock_timeout_s)
    try:
        return home, _take_lock(home / "shard.lock", min(lock_timeout_s, home_wait_s))
    except RuntimeError:
        fresh = home / f"epoch-{fence_epoch}"
        fresh.mkdir(parents=True, exist_ok=True)
        log.warning("%s is held by an older placement (hung?); epoch %d runs in %s", home, fence_epoch, fresh)
        return fresh, _take_lock(fresh / "shard.lock", lock_timeout_s)


def _adopt_orphan_spools(home: Path, own_dir: Path, into: Spool) -> int:
    """Move the Redis spools of this shard's earlier placements whose holders have ended (their lock is
    free) into ``into``: a hung placement's spool stays where it is while it lives, and is delivered by the
    first placement after it is gone. Returns how many events were adopted."""
    moved = 0
    for folder in [home, *sorted(home.glob("epoch-*"))]:
        if folder == own_dir or not (folder / "spool.sqlite").exists():
            continue
        try:
            fd = _take_lock(folder / "shard.lock", 0.0)
        except RuntimeError:
            continue  # its holder still runs (or is hung): not ours yet
        try:
            with Spool(folder / "spool.sqlite") as old:
                while batch := old.peek_batch(500):
                    into.append_many(batch)
                    old.ack(batch[-1].id)
                    moved += len(batch)
        except SpoolError as exc:
            log.warning("cannot adopt %s: %s", folder / "spool.sqlite", exc)
        finally:
            os.close(fd)
    if moved:
        log.info("adopted %d events spooled by earlier placements under %s", moved, home)
    return moved


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
        self.fence_epoch: int | None = None
        self.lease_s: float | None = None
        self._lease_until = float("inf")
        self.fenced_why: str | None = None  # set once the lease lapsed: the shard stopped publishing
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
        fence_epoch: int | None = None,
        lease_s: float | None = None,
        home_wait_s: float = HOME_LOCK_WAIT_S,
    ) -> None:
        """Run the shard: take its var dir's lock (waits for a dying predecessor), then start its Pipeline.

        ``cfg_data``: the driver's config now (a standby was made with an older one: cameras may have been
        added since). ``fence_epoch``: this placement's epoch (Redis refuses its writes once a newer one
        exists). ``lease_s``: unpinged this long, the shard cuts off its own delivery. ``home_wait_s``: how long
        a fenced placement waits for its predecessor to release the var dir (0 when that one is known hung)."""
        if cfg_data is not None:
            self.cfg = parse_config(cfg_data, "driver config")
        self.shard_id = shard_id
        # spools, audit logs, snapshots: private, as in a local run (pipeline/cli/private_files.py)
        os.umask(0o077)
        Path(var_dir).mkdir(parents=True, exist_ok=True)
        self.var_dir, self._lock_fd = _take_var_dir(Path(var_dir), fence_epoch, lock_timeout_s, home_wait_s)
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
        if fence_epoch is not None:
            transport = pipeline.publisher.transport
            assert isinstance(transport, RedisTransport)
            transport.fence = Fence(fence_key(self.cfg.redis.prefix, shard_id), fence_epoch)
            _adopt_orphan_spools(Path(var_dir), self.var_dir, pipeline.publisher.spool)
        self.fence_epoch = fence_epoch
        self.pipeline = pipeline
        if lease_s is not None:
            self.lease_s = lease_s
            self._lease_until = time.monotonic() + lease_s
            threading.Thread(target=self._watch_lease, name="shard-lease", daemon=True).start()
        pipeline.start()
        log.info("shard %s on node %s: cameras %s", shard_id, self.node_id[:8], camera_ids)
        _warn_if_niced(shard_id)

    def _running(self) -> ShardPipeline:
        if self.pipeline is None:
            raise RuntimeError(f"shard {self.shard_id} has not started")
        return self.pipeline

    def _watch_lease(self) -> None:
        """Cut off this shard's delivery once the driver's pings stop for ``lease_s`` (hung process, lost
        head or driver, network cut): whatever it still produces goes to its spool, never to Redis. Ends
        when the driver stops the shard (``stop``) or every camera has ended."""
        while True:
            time.sleep(0.2)
            lease, pipeline = self.lease_s, self.pipeline
            if lease is None or pipeline is None or pipeline.wait(0):
                return
            late = time.monotonic() - self._lease_until
            if late > 0:
                self.fenced_why = f"no ping from the driver for {lease + late:.1f}s (ray.lease_s)"
                log.error(
                    "shard %s (epoch %s): lease lapsed, %s; publishing stops, events go to the spool",
                    self.shard_id,
                    self.fence_epoch,
                    self.fenced_why,
                )
                pipeline.cut_off()
                return

    def ping(self) -> dict[str, Any]:
        """The driver's health check, and the renewal of this shard's lease."""
        lapsed = time.monotonic() > self._lease_until  # a ping queued while hung renews nothing
        if self.lease_s is not None and self.fenced_why is None and not lapsed:
            self._lease_until = time.monotonic() + self.lease_s
        p = self.pipeline
        return {
            "epoch": self.fence_epoch,
            "fenced": self.fenced_why,
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
        """The driver's graceful stop: the lease ends (supervision stops before the drain, which must not be
        cut off for want of pings), and the shard drains as a local run does."""
        self.lease_s = None
        self._running().stop()

    def release(self) -> None:
        """Give up the var dir's lock (a process that ends releases it anyway); only after ``join``."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)

    def join(self, timeout: float) -> bool:
        """Wait until everything accepted is published or spooled (then the actor may be killed)."""
        return self._running().join(timeout)


def _warn_if_niced(shard_id: str) -> None:
    """Ray starts its workers at niceness 15 (``RAY_worker_niceness``) to keep its raylet responsive; a shard
    at that niceness gets the CPU only when nothing else on the node wants it, so any busy process there
    (a build, another service) starves its cameras. Said once per shard, with the way out."""
    niceness = os.getpriority(os.PRIO_PROCESS, 0)
    if niceness > 0:
        log.warning(
            "shard %s runs at niceness %d (Ray's worker_niceness): other processes on this node take the CPU "
            "first and can starve its cameras; start the Ray nodes with RAY_worker_niceness=0 in their "
            "environment (docs/scale.md)",
            shard_id,
            niceness,
        )
