"""Every shard's metrics as one status line and one Prometheus page (labelled by shard and node)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from pipeline.core.metrics import MetricsRegistry

_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")


def merge_prometheus(snapshots: Iterable[dict[str, Any]]) -> str:
    """Merge shards' exposition texts: HELP/TYPE once per metric, each sample gains shard and node labels."""
    headers: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    for snap in snapshots:
        extra = f'shard="{snap["shard"]}",node="{snap["node"]}"'
        for line in str(snap.get("prometheus", "")).splitlines():
            if line.startswith("# "):
                parts = line.split(" ", 3)
                if len(parts) >= 3:
                    headers.setdefault(parts[2], [])
                    if line not in headers[parts[2]]:
                        headers[parts[2]].append(line)
                continue
            m = _SAMPLE.match(line)
            if not m:
                continue
            name, labels, value = m.group(1), m.group(2), m.group(3)
            lab = f"{extra},{labels}" if labels else extra
            samples.setdefault(name, []).append(f"{name}{{{lab}}} {value}")
    out: list[str] = []
    for name in dict.fromkeys([*headers, *samples]):
        out += headers.get(name, [])
        out += samples.get(name, [])
    return "\n".join(out) + "\n"


class ShardedMetrics(MetricsRegistry):
    """A registry whose status line and Prometheus text come from every shard (see ``RayExecutor``).

    ``fetch`` returns the shards' snapshots; ``placement_text`` the driver's own rows (placement, restarts).
    It is a MetricsRegistry so that the existing MetricsServer and status printer take it unchanged."""

    def __init__(self, fetch: Callable[[], list[dict[str, Any]]], placement_text: Callable[[], str]) -> None:
        super().__init__()
        self._fetch = fetch
        self._placement_text = placement_text

    def status_line(self) -> str:
        parts = []
        for snap in self._fetch():
            line = snap.get("status_line") or "starting"
            parts.append(f"<{snap['shard']}@{str(snap['node'])[:8]}> {line}")
        return " || ".join(parts)

    def prometheus_text(self) -> str:
        return merge_prometheus(self._fetch()) + self._placement_text()
