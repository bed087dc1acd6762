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
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, RedisError, ResponseError
from redis.retry import Retry

from pipeline.config.schema import RedisConfig
from pipeline.core.events import Event
from pipeline.core.metrics import MetricsRegistry
from pipeline.core.queues import BoundedQueue
from pipeline.deliver.delivery import DeliveryStage
from pipeline.core.sources import redact_url
from pipeline.deliver.spool import Spool

log = logging.getLogger(__name__)


class PublisherError(RuntimeError):
    """The Redis configuration is unusable (e.g. a malformed ``redis.url``)."""


def channel_for(prefix: str, event: Event) -> str:
    return f"{prefix}:{event.family}:{event.camera_id}"


def stream_for(prefix: str, family: str) -> str:
    return f"{prefix}:stream:{family}"


def explain_redis_error(exc: BaseException, url: str) -> str:
    """A one-line reason for a Redis failure that says what to check."""
    where = redact_url(url)
    text = str(exc)
    if isinstance(exc, AuthenticationError) or "NOAUTH" in text or "WRONGPASS" in text:
        if not urlsplit(url).password and ("NOAUTH" in text or "required" in text.lower()):
            return (
                f"Redis at {where} requires a password and redis.url has none "
                f"(use redis://:PASSWORD@host:port/db) ({type(exc).__name__}: {exc})"
            )
        return f"Redis at {where} refused the credentials in redis.url ({type(exc).__name__}: {exc})"
    if isinstance(exc, redis.exceptions.ConnectionError) and (
        "Name or service not known" in text or "name resolution" in text or "nodename nor servname" in text
    ):
        host = urlsplit(url).hostname
        return f"Redis at {where} is unreachable: host {host!r} in redis.url does not resolve (DNS): {exc}"
    if isinstance(exc, redis.exceptions.ConnectionError) and "refused" in text.lower():
        return f"Redis at {where} is unreachable: it refused the connection (nothing listens there): {exc}"
    if isinstance(exc, redis.exceptions.TimeoutError):
        return f"Redis at {where} did not answer within the socket timeout (hung or overloaded): {exc}"
    if isinstance(exc, ResponseError):
        return f"Redis at {where} rejected a command: {exc}"
    return f"Redis at {where} is unreachable ({type(exc).__name__}: {exc})"


def make_client(url: str, config: RedisConfig) -> redis.Redis:
    """A redis-py client that fails fast: socket timeouts and no hidden retries (we spool instead)."""
    try:
        redis.connection.parse_url(url)
        return redis.Redis.from_url(
            url,
            socket_timeout=config.socket_timeout_s,
            socket_connect_timeout=config.connect_timeout_s,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            health_check_interval=0,
            protocol=2,
        )
    except ValueError as exc:
        raise PublisherError(f"redis.url {redact_url(url)!r} is not a valid Redis URL: {exc}") from None


def probe_redis(url: str, config: RedisConfig | None = None) -> str | None:
    """None when Redis at ``url`` answers PING, else the reason (for a startup message)."""
    client = make_client(url, config or RedisConfig())
    try:
        client.ping()
        return None
    except RedisError as exc:
        return explain_redis_error(exc, url)
    finally:
        client.close()


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
        from pipeline.deliver.redis_transport import RedisTransport

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
