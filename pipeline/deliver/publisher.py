"""Publish pipeline events to Redis: pub/sub for live subscribers, Streams for durable consumers.

Every event goes to
  * pub/sub channel ``{prefix}:{family}:{camera_id}`` (``{prefix}:{family}:`` for process-wide events):
    live only, at most once. Subscribe to a family with ``PSUBSCRIBE vidpipe:tracks:*``.
  * stream ``{prefix}:stream:{family}`` (``XADD ... MAXLEN ~ stream_maxlen``), fields ``event`` (the JSON),
    ``type``, ``camera``, ``event_id``: at least once, in production order.

When Redis is unreachable, hung (``socket_timeout_s``) or refuses a command, events go to the on-disk
spool (``pipeline/deliver/spool.py``) instead, the outage is logged once, and the publisher retries with a
doubling back-off. Once Redis answers again the spool is replayed oldest first, and while a backlog remains
newer events queue up behind it, so each stream's order is production order. Pub/sub is NOT replayed:
a minutes-old ``doors.decision`` or ``faces.unknown`` delivered as if live would be worse than none;
consumers that must not miss anything read the stream. See docs/events.md for the full contract.
"""

from __future__ import annotations

import logging
from typing import Any

import redis

from pipeline.config.schema import RedisConfig
from pipeline.core.events import Event
from pipeline.core.metrics import MetricsRegistry
from pipeline.core.queues import BoundedQueue
from pipeline.core.sources import redact_url
from pipeline.deliver.delivery import DeliveryStage
from pipeline.deliver.redis_transport import PublisherError, RedisTransport
from pipeline.deliver.spool import Spool

log = logging.getLogger(__name__)


class Publisher(DeliveryStage):
    """The Redis sink: a delivery stage (``pipeline/deliver/delivery.py``) with the Redis transport
    (``pipeline/deliver/redis_transport.py``); it keeps the name, counters (``publisher_*``) and logger it had
    before sinks were split from transports.

    config: the ``redis`` section. url: overrides ``config.url`` (e.g. a ``LocalRedis`` the CLI started).
    queue: input, must use policy ``block`` (events are never dropped in memory); one is made when None.
    spool: defaults to ``Spool(config.spool_path, config.spool_max_events)``; opened (and locked) here, so a
      bad path fails at startup.
    """

    def __init__(
        self,
        config: RedisConfig,
        queue: BoundedQueue[Event] | None = None,
        metrics: MetricsRegistry | None = None,
        *,
        url: str | None = None,
        spool: Spool | None = None,
        notice_interval_s: float = 60.0,
    ) -> None:
        url = url or config.url
        if not url:
            raise PublisherError(
                "no Redis URL: set redis.url, or start a local server (pipeline.deliver.redis_server.LocalRedis)"
            )
        self.url = url
        self.redis_transport = RedisTransport(config, url)
        super().__init__(
            "publisher",
            self.redis_transport,
            config,
            queue or BoundedQueue(config.queue_size, "block", "publisher"),
            metrics,
            spool=spool,
            spool_key="redis.spool_path",
            counter_prefix="publisher",
            logger=log,
            notice_interval_s=notice_interval_s,
        )
        self.config = config
        self.prefix = config.prefix

    @property
    def client(self) -> redis.Redis:
        return self.redis_transport.client

    @property
    def redis_error(self) -> str | None:
        """Why Redis is away right now; None while connected."""
        return self.error

    def publish_event(self, event: Event) -> None:
        """Hand an event to the publisher (see ``DeliveryStage.submit``)."""
        self.submit(event)

    def status(self) -> dict[str, Any]:
        return {**super().status(), "url": redact_url(self.url)}
