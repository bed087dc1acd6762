"""Publish pipeline events to Redis: pub/sub for live subscribers, Streams for durable consumers.

Every event goes to
  * pub/sub channel ``{prefix}:{family}:{camera_id}`` (``{prefix}:{family}:`` for process-wide events):
    live only, at most once. Subscribe to a family with ``PSUBSCRIBE vidpipe:tracks:*``.
  * stream ``{prefix}:stream:{family}`` (``XADD ... MAXLEN ~ stream_maxlen``), fields ``event`` (the JSON),
    ``type``, ``camera``, ``event_id``: at least once, in production order.

When Redis is unreachable, hung (``socket_timeout_s``) or refuses a command, events go to the on-disk
spool (``pipeline/spool.py``) instead, the outage is logged once, and the publisher retries with a
doubling back-off. Once Redis answers again the spool is replayed oldest first, and while a backlog remains
newer events queue up behind it, so each stream's order is production order. Pub/sub is NOT replayed:
a minutes-old ``doors.decision`` or ``faces.unknown`` delivered as if live would be worse than none;
consumers that must not miss anything read the stream. See docs/events.md for the full contract.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, RedisError, ResponseError
from redis.retry import Retry

from pipeline.config import RedisConfig
from pipeline.events import Event
from pipeline.metrics import MetricsRegistry
from pipeline.queues import BoundedQueue, QueueClosed
from pipeline.sources import redact_url
from pipeline.spool import Spool, SpooledEvent, SpoolRecord
from pipeline.stage import Stage

log = logging.getLogger(__name__)

_MAX_SUSPECTS = 100_000  # event ids that may have reached a stream before a failure (checked on recovery)


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


class Publisher(Stage):
    """The stage that moves events from its input queue to Redis (or the spool while Redis is away).

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
    ) -> None:
        super().__init__("publisher", metrics=metrics, restart_backoff_s=1.0)
        self.config = config
        url = url or config.url
        if not url:
            raise PublisherError(
                "no Redis URL: set redis.url, or start a local server (pipeline.redis_server.LocalRedis)"
            )
        self.url = url
        self.client = make_client(url, config)
        self.queue: BoundedQueue[Event] = queue or BoundedQueue(config.queue_size, "block", "publisher")
        if self.queue.policy != "block":
            raise ValueError(
                f"publisher input queue {self.queue.name!r} must use policy 'block' "
                f"(got {self.queue.policy!r}): events must not be dropped in memory"
            )
        self._own_spool = spool is None
        self.spool = spool if spool is not None else Spool(config.spool_path, config.spool_max_events)
        self.metrics.queue_depth = self.queue.qsize
        self.prefix = config.prefix
        self.redis_error: str | None = None  # why Redis is away right now; None while connected
        self._down_since: float | None = None
        self._next_retry = 0.0
        self._backoff = config.retry_initial_s
        self._suspects: dict[str, set[str]] = {}  # stream -> event ids that may already be in it
        self._already_sent: set[str] = set()  # spooled event ids confirmed present in their stream
        self._direct_spool_warned = False

    # -- public API ------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._down_since is None

    def publish_event(self, event: Event) -> None:
        """Hand an event to the publisher. Waits at most ``enqueue_timeout_s`` for room in the queue, then
        writes it straight to the spool (so a stuck Redis can never stall a camera's thread for long)."""
        try:
            if self.queue.put(event, timeout=self.config.enqueue_timeout_s):
                return
            reason = f"publisher queue full for {self.config.enqueue_timeout_s}s"
        except QueueClosed:
            reason = "publisher queue closed"
        if not self._direct_spool_warned:
            self._direct_spool_warned = True
            log.warning("%s: spooling events directly to %s", reason, self.spool.path)
        self._spool([self._record(event)])

    submit = publish_event  # the name the runner uses

    def status(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "url": redact_url(self.url),
            "error": self.redis_error,
            "spooled": self.spool.count(),
            "spool_dropped": self.spool.dropped,
            "queue": self.queue.qsize(),
        }

    # -- stage loop ------------------------------------------------------------------------------------

    def loop(self) -> None:
        while True:
            stopping = self.stop_event.is_set()
            try:
                batch = self.queue.get_batch(
                    self.config.batch_size, timeout=0 if stopping else self._wait_s()
                )
            except QueueClosed:
                break
            if stopping and not batch:
                break
            self._handle([self._record(e) for e in batch])
        self._final_flush()

    def on_exit(self) -> None:
        try:
            backlog = self.spool.count()
            if backlog:
                log.warning(
                    "publisher stopped with %d events in spool %s; they are sent on the next start",
                    backlog,
                    self.spool.path,
                )
            if self._own_spool:
                self.spool.close()
        finally:
            self.client.close()

    def _wait_s(self) -> float:
        if self._down_since is not None:
            return min(0.2, max(0.0, self._next_retry - time.monotonic()))
        return 0.0 if self.spool.count() else 0.1

    def _handle(self, records: list[SpoolRecord]) -> None:
        if self._down_since is not None:
            self._spool(records)
            if time.monotonic() >= self._next_retry:
                self._try_recover()
            if self._down_since is not None:
                return
            records = []
        if not self.spool.count():
            if records:
                self._send_or_spool(records)
            return
        if records:  # a backlog is being replayed: queue behind it so the stream keeps production order
            self._spool(records)
            self._publish_live(records)
        self._drain(max_batches=4)

    def _final_flush(self) -> None:
        if not self.spool.count():
            return
        if self._down_since is not None:
            self._try_recover()  # one last attempt, however long the back-off
        deadline = time.monotonic() + self.config.flush_timeout_s
        while self._down_since is None and self.spool.count() and time.monotonic() < deadline:
            self._drain(max_batches=1)

    # -- Redis I/O -------------------------------------------------------------------------------------

    def _record(self, event: Event) -> SpoolRecord:
        return SpoolRecord(
            stream=stream_for(self.prefix, event.family),
            channel=channel_for(self.prefix, event),
            event_id=event.event_id,
            type=event.type,
            camera_id=event.camera_id,
            event_json=event.to_json(),
        )

    def _execute(self, records: Sequence[SpoolRecord], stream: bool, pubsub: bool) -> None:
        pipe = self.client.pipeline(transaction=False)
        for r in records:
            if stream:
                pipe.xadd(
                    r.stream,
                    {"event": r.event_json, "type": r.type, "camera": r.camera_id, "event_id": r.event_id},
                    maxlen=self.config.stream_maxlen,
                    approximate=True,
                )
            if pubsub:
                pipe.publish(r.channel, r.event_json)
        pipe.execute(raise_on_error=True)

    def _send_or_spool(self, records: list[SpoolRecord]) -> None:
        t0 = time.perf_counter()
        try:
            self._execute(records, stream=True, pubsub=True)
        except RedisError as exc:
            self._outage(exc, records)
            self._spool(records)
            return
        self.metrics.observe((time.perf_counter() - t0) * 1000 / len(records), count=len(records))
        self.metrics_registry.inc("publisher_published_total", len(records))

    def _publish_live(self, records: list[SpoolRecord]) -> None:
        try:
            self._execute(records, stream=False, pubsub=True)
        except RedisError as exc:
            self._outage(exc, [])

    def _drain(self, max_batches: int) -> None:
        """Replay up to ``max_batches`` spool batches to their streams, oldest first."""
        for _ in range(max_batches):
            items = self.spool.peek_batch(self.config.batch_size)
            if not items:
                return
            todo = self._skip_already_sent(items)
            t0 = time.perf_counter()
            try:
                if todo:
                    self._execute(todo, stream=True, pubsub=False)
            except RedisError as exc:
                self._outage(exc, todo)
                return
            self.spool.ack(items[-1].id)
            if todo:
                self.metrics.observe((time.perf_counter() - t0) * 1000 / len(todo), count=len(todo))
                self.metrics_registry.inc("publisher_replayed_total", len(todo))
            if len(items) < self.config.batch_size:
                return

    def _skip_already_sent(self, items: list[SpooledEvent]) -> list[SpooledEvent]:
        if not self._already_sent:
            return list(items)
        todo = []
        for it in items:
            if it.event_id in self._already_sent:
                self._already_sent.discard(it.event_id)
                self.metrics_registry.inc("publisher_duplicates_skipped_total")
            else:
                todo.append(it)
        return todo

    def _spool(self, records: list[SpoolRecord]) -> None:
        if not records:
            return
        dropped = self.spool.append_many(records)
        self.metrics_registry.inc("publisher_spooled_total", len(records))
        if dropped:
            self.metrics.dropped += dropped
            self.metrics_registry.inc("publisher_spool_dropped_total", dropped)
            log.warning(
                "spool %s full (redis.spool_max_events=%d): dropped the %d oldest events",
                self.spool.path,
                self.spool.max_events,
                dropped,
            )

    # -- outage bookkeeping ----------------------------------------------------------------------------

    def _outage(self, exc: BaseException, in_flight: Sequence[SpoolRecord]) -> None:
        """Redis failed. Remember what may have landed anyway; log once per outage; schedule a retry."""
        for r in in_flight:
            ids = self._suspects.setdefault(r.stream, set())
            if sum(len(s) for s in self._suspects.values()) < _MAX_SUSPECTS:
                ids.add(r.event_id)
        self.redis_error = explain_redis_error(exc, self.url)
        if self._down_since is None:
            self._down_since = time.monotonic()
            self._backoff = self.config.retry_initial_s
            self.metrics_registry.inc("publisher_outages_total")
            log.warning(
                "%s; events are spooled to %s until it is back (retrying with back-off up to %gs)",
                self.redis_error,
                self.spool.path,
                self.config.retry_max_s,
            )
        self._schedule_retry()
        self.client.connection_pool.disconnect()

    def _schedule_retry(self) -> None:
        wait = self._backoff * random.uniform(0.8, 1.2)
        self._next_retry = time.monotonic() + wait
        self._backoff = min(self._backoff * 2, self.config.retry_max_s)

    def _try_recover(self) -> None:
        self.metrics.reconnects += 1
        try:
            self.client.ping()
            self._resolve_suspects()
        except RedisError as exc:
            self.redis_error = explain_redis_error(exc, self.url)
            log.debug("Redis still away: %s", self.redis_error)
            self._schedule_retry()
            self.client.connection_pool.disconnect()
            return
        down_for = time.monotonic() - (self._down_since or time.monotonic())
        self._down_since = None
        self.redis_error = None
        log.info(
            "Redis at %s is back after %.1fs; replaying %d spooled events",
            redact_url(self.url),
            down_for,
            self.spool.count(),
        )

    def _resolve_suspects(self) -> None:
        """Events in flight when Redis failed may have landed; find those that did so they are not re-sent."""
        for stream, ids in list(self._suspects.items()):
            if ids:
                entries: list[tuple[bytes, dict[bytes, bytes]]] = self.client.xrevrange(  # type: ignore[assignment]
                    stream, "+", "-", count=2 * len(ids) + 100
                )
                for _entry_id, fields in entries:
                    eid = fields.get(b"event_id", b"").decode()
                    if eid in ids:
                        self._already_sent.add(eid)
            del self._suspects[stream]
