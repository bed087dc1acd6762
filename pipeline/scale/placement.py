"""Which cameras share a shard, and which node a shard goes to. Pure functions, no Ray: tested directly.

Rules: the cameras of a door (and of doors that share a camera) stay in one shard, because a door's audit
chain must have a single writer; otherwise cameras fill shards in config order up to
``max_cameras_per_shard``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pipeline.config.schema import PipelineConfig


@dataclass
class ShardPlan:
    shard_id: str
    camera_ids: list[str] = field(default_factory=list)


def camera_groups(cfg: PipelineConfig) -> list[list[str]]:
    """Cameras that must share a shard, in config order (a camera without a door is a group of one)."""
    order = [c.id for c in cfg.cameras]
    parent = {c: c for c in order}

    def find(c: str) -> str:
        while parent[c] != c:
            parent[c] = parent[parent[c]]
            c = parent[c]
        return c

    for door in cfg.doors:
        for other in door.cameras[1:]:
            parent[find(other)] = find(door.cameras[0])
    groups: dict[str, list[str]] = {}
    for c in order:
        groups.setdefault(find(c), []).append(c)
    return list(groups.values())


def plan_shards(cfg: PipelineConfig, first_index: int = 0) -> list[ShardPlan]:
    """Pack camera groups into shards (first fit, config order)."""
    limit = cfg.ray.max_cameras_per_shard
    shards: list[ShardPlan] = []
    for group in camera_groups(cfg):
        if len(group) > limit:
            doors = [d.id for d in cfg.doors if set(d.cameras) & set(group)]
            raise ValueError(
                f"doors {doors} share cameras {group}: {len(group)} cameras do not fit one shard "
                f"(ray.max_cameras_per_shard is {limit})"
            )
        for shard in shards:
            if len(shard.camera_ids) + len(group) <= limit:
                shard.camera_ids.extend(group)
                break
        else:
            shards.append(ShardPlan(f"shard-{first_index + len(shards)}", list(group)))
    return shards


def choose_node(free: Mapping[str, float], need: float, avoid: Iterable[str] = ()) -> str | None:
    """The node with the most free CPU that fits ``need``; nodes in ``avoid`` only when no other fits."""
    avoid = set(avoid)
    fitting = [(cpu, node) for node, cpu in free.items() if cpu + 1e-9 >= need]
    preferred = [x for x in fitting if x[1] not in avoid] or fitting
    if not preferred:
        return None
    return max(preferred)[1]
