"""Event sinks: one transport-agnostic delivery stage per destination (queue, spool, retry, order), and the
transports that speak to each destination (Redis, MQTT, an HTTP webhook, an in-process callable).

See docs/events.md for what each transport guarantees.
"""

from pipeline.deliver.base import DeliverySettings, Transport
from pipeline.deliver.delivery import DeliveryStage

__all__ = ["DeliverySettings", "DeliveryStage", "Transport"]
