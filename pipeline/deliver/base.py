"""The seam between delivery (queue, spool, back-off, order) and a transport (how bytes reach a destination).

A transport only knows how to send a batch of records and how to tell whether its destination is back. It
never queues, spools or sleeps: ``pipeline/deliver/delivery.py`` does that the same way for every destination,
so a new destination is one module with one class.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Protocol

from pipeline.core.events import Event
from pipeline.deliver.spool import SpoolRecord


class DeliverySettings(Protocol):
    """What a delivery stage reads from its sink's config section (``redis``, ``sinks.mqtt``, ...)."""

    @property
    def queue_size(self) -> int: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def retry_initial_s(self) -> float: ...
    @property
    def retry_max_s(self) -> float: ...
    @property
    def enqueue_timeout_s(self) -> float: ...
    @property
    def flush_timeout_s(self) -> float: ...
    @property
    def spool_path(self) -> str: ...
    @property
    def spool_max_events(self) -> int: ...


class Transport(ABC):
    """Sends records to one destination.

    name: short, used in logger, metrics and the stage name (``redis``, ``mqtt``, ``webhook``).
    target: where it sends, safe to log (passwords redacted).
    errors: the exceptions that mean "the destination is away or refused": the delivery stage spools and
      retries on these; anything else is a bug and restarts the stage.
    """

    name: str = "sink"
    title: str = "sink"  # how log lines name the destination: "Redis", "MQTT broker", "webhook alarm"
    target: str = ""
    errors: tuple[type[BaseException], ...] = (OSError,)

    def record(self, event: Event) -> SpoolRecord:
        """The event as it waits in the spool. ``stream``/``channel`` are the transport's addresses."""
        stream, channel = self.addresses(event)
        return SpoolRecord(
            stream=stream,
            channel=channel,
            event_id=event.event_id,
            type=event.type,
            camera_id=event.camera_id,
            event_json=event.to_json(),
        )

    def addresses(self, event: Event) -> tuple[str, str]:
        """(durable address, live address) of an event; transports without the distinction return ("", "")."""
        return "", ""

    @abstractmethod
    def send(self, records: Sequence[SpoolRecord], *, replay: bool) -> int:
        """Deliver ``records`` in order; return how many were written (fewer when some are known to have
        arrived already). ``replay``: they come from the spool (Redis then skips its live pub/sub).
        Raises one of ``errors`` when the destination is away; what was in flight may have arrived anyway."""

    def send_live(self, records: Sequence[SpoolRecord]) -> None:
        """Best-effort live notification of records that wait behind a backlog (Redis pub/sub). Default: none."""
        return None

    @abstractmethod
    def recover(self) -> None:
        """Reconnect / check the destination; raise one of ``errors`` while it is still away."""

    def failed(self, exc: BaseException, in_flight: Sequence[SpoolRecord]) -> str:
        """``exc`` interrupted a send of ``in_flight``: drop the connection, remember what may have landed
        (for de-duplication on recovery where the destination allows it) and return a one-line reason."""
        return f"{self.name} at {self.target} failed ({type(exc).__name__}: {exc})"

    def close(self) -> None:
        """Release connections (announce going offline where the protocol has that)."""
        return None
