"""Redis transport: pub/sub for live subscribers, Streams for durable consumers (the contract in docs/events.md).

Live sends go to both; replayed (spooled) events go to the stream only, because a minutes-old
``doors.decision`` delivered on pub/sub as if live would be worse than none. A batch cut off by a failure may
have landed in part: its event ids are remembered and, once Redis answers again, looked up at the stream's
tail, so the replay skips what already arrived (no duplicates in a stream).
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, RedisError, ResponseError
from redis.retry import Retry

from pipeline.config.schema import RedisConfig
from pipeline.core.events import Event
from pipeline.core.sources import redact_url
from pipeline.deliver.base import Transport
from pipeline.deliver.spool import SpoolRecord

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


class RedisTransport(Transport):
    name = "redis"
    title = "Redis"
    errors = (RedisError,)

    def __init__(self, config: RedisConfig, url: str) -> None:
        self.config = config
        self.url = url
        self.target = redact_url(url)
        self.prefix = config.prefix
        self.client: redis.Redis = make_client(url, config)
        self._suspects: dict[str, set[str]] = {}  # stream -> event ids that may already be in it
        self._already_sent: set[str] = set()  # spooled event ids confirmed present in their stream

    def addresses(self, event: Event) -> tuple[str, str]:
        return stream_for(self.prefix, event.family), channel_for(self.prefix, event)

    def send(self, records: Sequence[SpoolRecord], *, replay: bool) -> int:
        todo = self._skip_already_sent(records) if replay else list(records)
        if todo:
            self._execute(todo, stream=True, pubsub=not replay)
        return len(todo)

    def send_live(self, records: Sequence[SpoolRecord]) -> None:
        self._execute(records, stream=False, pubsub=True)

    def recover(self) -> None:
        self.client.ping()
        self._resolve_suspects()

    def failed(self, exc: BaseException, in_flight: Sequence[SpoolRecord]) -> str:
        for r in in_flight:
            ids = self._suspects.setdefault(r.stream, set())
            if sum(len(s) for s in self._suspects.values()) < _MAX_SUSPECTS:
                ids.add(r.event_id)
        self.client.connection_pool.disconnect()
        return explain_redis_error(exc, self.url)

    def close(self) -> None:
        self.client.close()

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

    def _skip_already_sent(self, records: Sequence[SpoolRecord]) -> list[SpoolRecord]:
        if not self._already_sent:
            return list(records)
        todo = []
        for r in records:
            if r.event_id in self._already_sent:
                self._already_sent.discard(r.event_id)
            else:
                todo.append(r)
        return todo

    def _resolve_suspects(self) -> None:
        """Events in flight when Redis failed may have landed; find those that did so they are not re-sent."""
        for stream, ids in list(self._suspects.items()):
            if ids:
                entries = self.client.xrevrange(stream, "+", "-", count=2 * len(ids) + 100) or []
                for _entry_id, fields in entries:
                    raw = (fields or {}).get(b"event_id", b"")
                    eid = raw.decode() if isinstance(raw, bytes) else str(raw)
                    if eid in ids:
                        self._already_sent.add(eid)
            del self._suspects[stream]
