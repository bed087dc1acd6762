"""The driver of ``executor: ray``: plans shards, places them on nodes, and re-places dead ones.

A supervisor thread pings every shard each ``ray.health_interval_s``. A shard whose actor died (its process
or its whole node) or that stayed silent for two pings of ``ray.ping_timeout_s`` is killed for good and
started again, same shard id and var dir, on the live node with the most free CPU (its old node only when
nothing else fits). The replacement reopens the dead shard's spool, so every event the dead shard had
accepted (published or spooled) is delivered; file cameras start again from the top and reproduce the same
event ids (:mod:`pipeline.scale.event_ids`), so a consumer dedupes replays by ``event_id``.

Every placement gets an epoch, ``INCR {prefix}:fence:{shard}`` in Redis, before its actor starts: from then on
Redis refuses the writes of any older placement of the shard (a hung one the supervisor gave up on), and
each shard stops publishing by itself when the supervisor's pings (its lease) stop for ``ray.lease_s``.

Placement is done by the driver (node-affinity, not Ray's own choice) because it must know where a shard
is before Ray has noticed that a node is gone, and must never put the replacement on the dead node.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config.schema import CameraConfig, PipelineConfig
from pipeline.deliver.redis_transport import explain_redis_error, fence_key, make_client
from pipeline.scale.metrics import ShardedMetrics
from pipeline.scale.placement import ShardPlan, choose_node, plan_shards
from pipeline.scale.shard import HOME_LOCK_WAIT_S, Shard

log = logging.getLogger(__name__)

MAX_PLACEMENTS = 20  # a shard that keeps dying (bad config, crash at start) is given up after this many


def connect(address: str, **init_kwargs: Any) -> None:
    """Join or start Ray: 'local' starts a one-machine cluster in this process, 'auto' joins a running one."""
    import ray

    if ray.is_initialized():
        return
    init_kwargs.setdefault("include_dashboard", False)
    # Shard processes import this very checkout of vidpipe (not another install of it on the node).
    root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    init_kwargs.setdefault("runtime_env", {"env_vars": {"PYTHONPATH": path}})
    init_kwargs.setdefault("log_to_driver", True)
    # 'local' is passed as is: without an address Ray would join the last cluster started on this machine.
    ray.init(address=address, **init_kwargs)


@dataclass
class _ShardState:
    plan: ShardPlan
    cpu: float = 0.0
    handle: Any = None
    node: str | None = None
    pid: int | None = None
    placed_at: float = 0.0
    epoch: int = 0  # the fencing token of the current placement
    hung: bool = False  # the last placement stopped answering (alive or not): do not wait for its lock
    running: bool = False
    misses: int = 0
    finished: bool = False
    placements: int = 0
    given_up: bool = False
    avoid: set[str] = field(default_factory=set)


class RayExecutor:
    """Runs a config's cameras as shards on the Ray cluster this process is connected to (see ``connect``)."""

    def __init__(self, cfg: PipelineConfig, var_dir: str | Path, run_id: str | None = None) -> None:
        self.cfg = cfg
        self.var_dir = Path(var_dir)
        self.shards_dir = Path(cfg.ray.shards_dir) if cfg.ray.shards_dir else self.var_dir / "shards"
        self.run_id = run_id or uuid.uuid4().hex
        self.shards: dict[str, _ShardState] = {}
        self.moves: list[dict[str, Any]] = []  # (time, shard, from, to): a log of re-placements
        self._epochs: dict[str, int] = {c.id: 0 for c in cfg.cameras}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._actor_cls: Any = None
        self._standby: dict[str, Any] = {}  # node id -> a warm idle Shard actor on it
        self._redis: Any = None  # the driver's client for the fence counters
        self.lost: str | None = None  # why the Ray cluster counts as lost (supervision kept failing)
        self.metrics = ShardedMetrics(self.snapshots, self._placement_text)

    # -- lifecycle --------------------------------------------------------------------------------------
    def start(self) -> RayExecutor:
        import ray

        self._actor_cls = ray.remote(Shard)
        if self.cfg.redis.url is None:
            raise ValueError("executor: ray needs redis.url (the fencing epochs of shards live in Redis)")
        self._redis = make_client(self.cfg.redis.url, self.cfg.redis)
        self._cfg_data = self.cfg.model_dump()
        enabled = self.cfg.model_copy(update={"cameras": [c for c in self.cfg.cameras if c.enabled]})
        for plan in plan_shards(enabled):
            self._add_shard(plan)
        self._supervisor = threading.Thread(target=self._supervise, name="ray-supervisor", daemon=True)
        self._supervisor.start()
        return self

    def wait(self, timeout: float | None = None) -> bool:
        """True once every shard has finished (all its cameras ended), False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._all_finished():
            if self.lost is not None:
                return False
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.2)
        return True

    def stop(self) -> None:
        """Graceful stop: every shard stops its sources and drains (published or spooled). Supervision
        ends first, so that no shard is placed (and started) after this."""
        self._stop.set()
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join(self.cfg.ray.ping_timeout_s + 5)
        with self._lock:
            handles = [s.handle for s in self.shards.values() if s.handle is not None]
        for h in handles:
            h.stop.remote()

    def join(self, timeout: float = 30.0) -> bool:
        import ray

        self._stop.set()
        if self._supervisor is not None:
            self._supervisor.join(5)
        with self._lock:
            handles = [s.handle for s in self.shards.values() if s.handle is not None]
        refs = [h.join.remote(timeout) for h in handles]
        ok = True
        try:
            ok = all(ray.get(refs, timeout=timeout + 5))
        except Exception as exc:  # noqa: BLE001 - a dead shard: its spool waits for the next run
            log.warning("not every shard drained: %s", exc)
            ok = False
        for h in [*handles, *self._standby.values()]:
            ray.kill(h, no_restart=True)
        self._standby.clear()
        if self._redis is not None:
            self._redis.close()
        return ok

    # -- cameras at run time ----------------------------------------------------------------------------
    def add_camera(self, cam: CameraConfig) -> str:
        """Place a new camera in a shard with room (or a new shard); returns the shard id."""
        import ray

        with self._lock:
            if any(c.id == cam.id for c in self.cfg.cameras):
                raise ValueError(f"camera id {cam.id!r} is already in use")
            self.cfg.cameras.append(cam)
            self._epochs[cam.id] = 0
            for state in self.shards.values():
                room = len(state.plan.camera_ids) < self.cfg.ray.max_cameras_per_shard
                if room and state.running and not state.finished:
                    ray.get(state.handle.add_camera.remote(cam.model_dump(), 0), timeout=30)
                    state.plan.camera_ids.append(cam.id)
                    state.cpu += self.cfg.ray.cpus_per_camera  # the driver's accounting (Ray's is fixed)
                    return state.plan.shard_id
            index = 1 + max((int(s.split("-")[-1]) for s in self.shards), default=-1)
            plan = ShardPlan(f"shard-{index}", [cam.id])
            self._add_shard(plan)
            return plan.shard_id

    def remove_camera(self, camera_id: str) -> None:
        """Stop a camera (its events are flushed); a shard left without cameras is stopped."""
        import ray

        with self._lock:
            state = self._shard_of(camera_id)
            if len(state.plan.camera_ids) > 1:
                ray.get(state.handle.remove_camera.remote(camera_id), timeout=30)
                state.plan.camera_ids.remove(camera_id)
                state.cpu -= self.cfg.ray.cpus_per_camera
            else:
                del self.shards[state.plan.shard_id]
                if state.handle is not None:
                    state.handle.stop.remote()
                    try:
                        ray.get(state.handle.join.remote(20.0), timeout=25)
                    finally:
                        ray.kill(state.handle, no_restart=True)
            self.cfg.cameras = [c for c in self.cfg.cameras if c.id != camera_id]

    # -- where things run -------------------------------------------------------------------------------
    def placement(self) -> dict[str, dict[str, Any]]:
        """camera id -> {shard, node, running}."""
        with self._lock:
            return {
                cam: {"shard": s.plan.shard_id, "node": s.node, "running": s.running}
                for s in self.shards.values()
                for cam in s.plan.camera_ids
            }

    def health(self) -> dict[str, Any]:
        """For /healthz: ok while every shard that should run is running."""
        with self._lock:
            shards = {
                s.plan.shard_id: {
                    "node": s.node,
                    "running": s.running,
                    "finished": s.finished,
                    "placements": s.placements,
                }
                for s in self.shards.values()
            }
        ok = all(v["running"] or v["finished"] for v in shards.values())
        return {"ok": ok, "shards": shards, "cameras": self.placement()}

    def snapshots(self) -> list[dict[str, Any]]:
        import ray

        with self._lock:
            live = [(s.plan.shard_id, s.handle) for s in self.shards.values() if s.running]
        out = []
        for shard_id, handle in live:
            try:
                out.append(ray.get(handle.snapshot.remote(), timeout=self.cfg.ray.ping_timeout_s))
            except Exception:  # noqa: BLE001 - a dying shard: the supervisor deals with it
                out.append({"shard": shard_id, "node": "?", "status_line": "not answering", "prometheus": ""})
        return out

    def _placement_text(self) -> str:
        lines = [
            "# HELP vidpipe_camera_placement 1 for the shard and node a camera runs on.",
            "# TYPE vidpipe_camera_placement gauge",
        ]
        for cam, p in sorted(self.placement().items()):
            lines.append(
                f'vidpipe_camera_placement{{camera="{cam}",shard="{p["shard"]}",node="{p["node"]}"}} 1'
            )
        lines += [
            "# HELP vidpipe_shard_placements_total Times a shard was placed.",
            "# TYPE vidpipe_shard_placements_total counter",
        ]
        with self._lock:
            for s in self.shards.values():
                lines.append(f'vidpipe_shard_placements_total{{shard="{s.plan.shard_id}"}} {s.placements}')
        return "\n".join(lines) + "\n"

    # -- placement and supervision ----------------------------------------------------------------------
    def _shard_of(self, camera_id: str) -> _ShardState:
        for s in self.shards.values():
            if camera_id in s.plan.camera_ids:
                return s
        raise KeyError(f"no camera {camera_id!r}")

    def _all_finished(self) -> bool:
        with self._lock:
            return all(s.finished or s.given_up for s in self.shards.values())

    def _add_shard(self, plan: ShardPlan) -> None:
        state = _ShardState(plan, cpu=self.cfg.ray.cpus_per_camera * len(plan.camera_ids))
        self.shards[plan.shard_id] = state
        self._place(state)

    def _free_cpu(self) -> dict[str, float]:
        import ray

        free = {n["NodeID"]: float(n["Resources"].get("CPU", 0.0)) for n in ray.nodes() if n["Alive"]}
        for s in self.shards.values():
            if s.handle is not None and s.node in free:
                free[s.node] -= s.cpu
        return free

    def _place(self, state: _ShardState) -> None:
        """Start the shard's actor on the chosen node (its cameras' config, var dir and epochs)."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        rc = self.cfg.ray
        n = len(state.plan.camera_ids)
        state.cpu = rc.cpus_per_camera * n
        node = choose_node(self._free_cpu(), state.cpu, state.avoid)
        if node is None:
            log.warning("shard %s: no node has %.2f CPU free; retrying", state.plan.shard_id, state.cpu)
            return
        key = fence_key(self.cfg.redis.prefix, state.plan.shard_id)
        try:  # before the actor exists: from now on every older placement's writes are refused
            epoch = int(self._redis.incr(key))
        except Exception as exc:  # noqa: BLE001 - RedisError and kin: no token, no placement; retried
            why = explain_redis_error(exc, self.cfg.redis.url or "")
            log.warning("shard %s: cannot take a fencing epoch (%s); retrying", state.plan.shard_id, why)
            return
        cams = {c.id: c for c in self.cfg.cameras}
        for cam_id in state.plan.camera_ids:
            if cams[cam_id].is_live:  # a live camera's frames are new after a move: new ids
                self._epochs[cam_id] += 1
        options: dict[str, Any] = {
            "num_cpus": state.cpu,
            "num_gpus": rc.gpus_per_camera * n,
            "max_concurrency": 4,  # pings answer while a join or add_camera runs
            "max_restarts": 0,  # the supervisor re-places it (on another node)
            "scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=False),
        }
        if rc.memory_mb_per_camera:
            options["memory"] = rc.memory_mb_per_camera * n * 1024 * 1024
        start = {
            "camera_ids": list(state.plan.camera_ids),
            "var_dir": str(self.shards_dir / state.plan.shard_id),
            "run_id": self.run_id,
            "epochs": {c: self._epochs[c] for c in state.plan.camera_ids},
            "fence_epoch": epoch,
            "lease_s": rc.lease,
            "home_wait_s": 0.0 if state.hung else HOME_LOCK_WAIT_S,
        }
        standby = self._standby.pop(node, None)
        if standby is not None and not rc.gpus_per_camera and not rc.memory_mb_per_camera:
            standby.start_shard.remote(
                state.plan.shard_id, cfg_data=self.cfg.model_dump(), **start
            )  # warm: no process start, no model load
            state.handle = standby
        else:
            if standby is not None:
                self._standby[node] = standby
            state.handle = self._actor_cls.options(**options).remote(
                self.cfg.model_dump(), state.plan.shard_id, **start
            )
        state.node, state.pid, state.running, state.misses = node, None, False, 0
        state.placed_at = time.monotonic()
        state.placements += 1
        state.epoch, state.hung = epoch, False
        log.info(
            "shard %s (cameras %s) placed on node %s, epoch %d",
            state.plan.shard_id,
            state.plan.camera_ids,
            node[:8],
            epoch,
        )

    def _supervise(self) -> None:
        failing_since: float | None = None
        while not self._stop.wait(self.cfg.ray.health_interval_s):
            try:
                self.supervise_once()
                failing_since = None
            except Exception as exc:  # noqa: BLE001 - the supervisor must outlive any one bad round
                now = time.monotonic()
                if failing_since is None:
                    failing_since = now
                    log.exception("supervisor round failed")
                if now - failing_since >= self.cfg.ray.cluster_lost_after_s:
                    # the head (GCS) or the driver's connection to it is gone: nothing can be placed or
                    # supervised any more; the driver ends the run (exit 4) instead of limping on
                    first = (str(exc).strip().splitlines() or [""])[0][:200]
                    self.lost = (
                        f"Ray cluster lost: supervision failed for {now - failing_since:.0f}s "
                        f"({type(exc).__name__}: {first})"
                    )
                    self._stop.set()
                    return

    def supervise_once(self) -> None:
        """One health round: ping every shard, re-place the dead and the unplaced."""
        import ray

        with self._lock:
            states = [s for s in self.shards.values() if not s.given_up and not s.finished]
        pending = {s.handle.ping.remote(): s for s in states if s.handle is not None}
        ready: list[Any] = []
        if pending:
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=self.cfg.ray.ping_timeout_s)
        ready_set = set(ready)
        now = time.monotonic()
        with self._lock:
            for ref, s in pending.items():
                if s.plan.shard_id not in self.shards or s.handle is None:
                    continue  # removed meanwhile
                if ref in ready_set:
                    try:
                        info = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - RayActorError and kin: the actor is gone
                        self._failed(s, f"actor died: {type(exc).__name__}")
                        continue
                    if info.get("fenced"):
                        self._failed(s, f"fenced itself: {info['fenced']}")
                        continue
                    if not info["started"]:
                        if now - s.placed_at > self.cfg.ray.start_timeout_s:
                            self._failed(s, f"not started within {self.cfg.ray.start_timeout_s}s")
                        continue
                    if not s.running:
                        log.info(
                            "shard %s running on node %s (pid %s), %.1fs after it was placed",
                            s.plan.shard_id,
                            info["node"][:8],
                            info["pid"],
                            now - s.placed_at,
                        )
                    s.running, s.misses, s.pid, s.node = True, 0, info["pid"], info["node"]
                    s.finished = bool(info["finished"])
                elif s.running:
                    s.misses += 1
                    if s.misses >= 2:
                        s.hung = True
                        self._failed(s, f"no answer to {s.misses} pings")
                elif now - s.placed_at > self.cfg.ray.start_timeout_s:
                    self._failed(s, f"not started within {self.cfg.ray.start_timeout_s}s")
            for s in self.shards.values():
                if s.handle is None and not s.given_up:
                    self._place(s)
            rc = self.cfg.ray
            if rc.standby and not rc.gpus_per_camera and not rc.memory_mb_per_camera:
                self._ensure_standbys()  # a standby holds no resources: with GPUs a new process is needed

    def _ensure_standbys(self) -> None:
        """One warm idle shard process per live node (a dead node's standby is dropped)."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        for node in list(self._standby):
            if node not in alive:
                with contextlib.suppress(Exception):
                    ray.kill(self._standby.pop(node), no_restart=True)
        for node in alive - set(self._standby):
            self._standby[node] = self._actor_cls.options(
                num_cpus=0,
                max_concurrency=4,
                max_restarts=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
            ).remote(self._cfg_data)

    def _failed(self, s: _ShardState, why: str) -> None:
        import ray

        old = s.node
        log.warning(
            "shard %s on node %s failed (%s); placing it again", s.plan.shard_id, (old or "?")[:8], why
        )
        with contextlib.suppress(Exception):  # already gone
            ray.kill(s.handle, no_restart=True)
        s.handle, s.running = None, False
        if old:
            s.avoid = {old}
        self.moves.append({"t": time.time(), "shard": s.plan.shard_id, "from": old, "why": why})
        if s.placements >= MAX_PLACEMENTS:
            s.given_up = True
            log.error(
                "shard %s failed %d times; giving up on cameras %s",
                s.plan.shard_id,
                s.placements,
                s.plan.camera_ids,
            )
            return
        self._place(s)
