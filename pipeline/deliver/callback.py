"""In-process sinks (a Python callable, e.g. ``--print-events``) run on their own delivery stage.

Before, ``Pipeline(event_sinks=...)`` called them on the camera threads, so a slow one (stdout piped into a
stalled consumer) stalled the cameras. Now each gets a queue and a bounded in-memory spool like any sink. A
callable that raises is logged and counted, not retried: the error is in the callable, not a destination
that may come back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pipeline.core.events import Event
from pipeline.deliver.base import Transport
from pipeline.deliver.spool import SpoolRecord

log = logging.getLogger(__name__)

EventSink = Callable[[Event], None]


@dataclass(frozen=True)
class CallbackSettings:
    """Delivery settings of a callable sink: memory only (its events are not worth a file), bounded."""

    queue_size: int = 10_000
    batch_size: int = 256
    retry_initial_s: float = 0.5
    retry_max_s: float = 5.0
    enqueue_timeout_s: float = 0.0
    flush_timeout_s: float = 10.0
    spool_path: str = ":memory:"
    spool_max_events: int = 100_000


class CallbackTransport(Transport):
    errors: tuple[type[BaseException], ...] = ()  # never "away": a failing callable is logged, not retried

    def __init__(self, fn: EventSink, name: str | None = None) -> None:
        self.fn = fn
        self.name = name or f"callback-{getattr(fn, '__name__', 'sink')}"
        self.title = f"event sink {self.name}"
        self.target = getattr(fn, "__qualname__", repr(fn))
        self.failures = 0

    def send(self, records: Sequence[SpoolRecord], *, replay: bool) -> int:
        for r in records:
            try:
                self.fn(Event.from_json(r.event_json))
            except Exception:  # noqa: BLE001 - one bad event must not stop the others
                self.failures += 1
                if self.failures == 1 or self.failures % 1000 == 0:
                    log.exception("event sink %s failed (%d failures so far)", self.name, self.failures)
        return len(records)

    def recover(self) -> None:
        return None
