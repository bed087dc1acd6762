"""Events out (the last stage): one transport-agnostic delivery stage per destination (queue, spool, retry, order), and the
transports that speak to each destination (Redis, MQTT, an HTTP webhook, an in-process callable), the on-disk spool, and the local redis-server a run may start.

See docs/events.md for what each transport guarantees.
"""

from pipeline.deliver.base import DeliverySettings, Transport
from pipeline.deliver.delivery import DeliveryStage

__all__ = ["DeliverySettings", "DeliveryStage", "Transport"]
