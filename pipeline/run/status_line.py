"""The periodic ``[status]`` line on stderr, for a local pipeline and for the Ray executor alike.

Both ``run`` (one process) and ``run_sharded`` (shards on Ray) print it; it lives here, below both, so
neither entry point imports the other.
"""

from __future__ import annotations

import sys
import threading
from typing import Protocol


class _HasMetrics(Protocol):
    @property
    def metrics(self) -> _StatusSource: ...


class _StatusSource(Protocol):
    def status_line(self) -> str: ...


def print_status_lines(pipeline: _HasMetrics, interval: float, stop: threading.Event) -> None:
    """Every ``interval`` seconds until ``stop`` is set: the pipeline's (or executor's) status line."""
    while not stop.wait(interval):
        line = pipeline.metrics.status_line()
        if line:
            print(f"[status] {line}", file=sys.stderr, flush=True)
