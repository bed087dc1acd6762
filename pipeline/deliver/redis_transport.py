"""Redis transport: pub/sub for live subscribers, Streams for durable consumers (the contract in docs/events.md).

Live sends go to both; replayed (spooled) events go to the stream only, because a minutes-old
``doors.decision`` delivered on pub/sub as if live would be worse than none. A batch cut off by a failure may
have landed in part: its event ids are remembered and, once Redis answers again, looked up at the stream's
tail, so the replay skips what already arrived (no duplicates in a stream).

Fencing (``executor: ray``): a shard's transport is given a :class:`Fence` (the key ``{prefix}:fence:{shard}``
and the epoch of its placement). It then writes through one Lua script that compares its epoch with the
key's value and refuses the whole batch when the key has moved on (a newer placement of the shard exists):
nothing is added to a stream or published, the refusal is counted in ``{prefix}:fence:{shard}:refused``, and
the sender gets :class:`FencedError`, so its records stay in its spool (they are delivered by whoever opens
that spool after the fenced process has died, never by the fenced process). Each stream entry written this
way has one more field, ``epoch``; the event JSON is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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


class FencedError(RedisError):
    """Redis refused a batch: its sender's placement epoch is older than the shard's fence (it was replaced)."""


@dataclass(frozen=True)
class Fence:
    """The fencing token of one shard placement: ``key`` holds the shard's newest epoch."""

    key: str
    epoch: int

    @property
    def refused_key(self) -> str:
        return f"{self.key}:refused"


def fence_key(prefix: str, shard_id: str) -> str:
    return f"{prefix}:fence:{shard_id}"


# KEYS: fence, refused counter, then one stream per record. ARGV: epoch, maxlen, "1"/"0" for stream and for
# pub/sub, then channel, event JSON, type, camera, event id per record. Refuses all or writes all.
_FENCED_WRITE = """
local fence = tonumber(redis.call('GET', KEYS[1]) or '0')
local epoch = tonumber(ARGV[1])
local n = #KEYS - 2
if epoch < fence then
  redis.call('INCRBY', KEYS[2], n)
  return -fence
end
for i = 1, n do
  local b = 4 + (i - 1) * 5
  if ARGV[3] == '1' then
    redis.call('XADD', KEYS[i + 2], 'MAXLEN', '~', ARGV[2], '*', 'event', ARGV[b + 2], 'type', ARGV[b + 3],
      'camera', ARGV[b + 4], 'event_id', ARGV[b + 5], 'epoch', ARGV[1])
  end
  if ARGV[4] == '1' then
    redis.call('PUBLISH', ARGV[b + 1], ARGV[b + 2])
  end
end
return n
"""


def channel_for(prefix: str, event: Event) -> str:
    return f"{prefix}:{event.family}:{event.camera_id}"


def stream_for(prefix: str, family: str) -> str:
    return f"{prefix}:stream:{family}"


def explain_redis_error(exc: BaseException, url: str) -> str:
    """A one-line reason for a Redis failure that says what to check."""
    where = redact_url(url)
    text = str(exc)
    if isinstance(exc, FencedError):
        return f"Redis at {where}: {exc}"
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
        self.fence: Fence | None = None  # set by a Ray shard: its writes are then checked against it
        self.refused = 0  # records Redis refused because ``fence`` was stale
        self._fenced_write = self.client.register_script(_FENCED_WRITE)

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
        if isinstance(exc, FencedError):  # all or nothing: none of them landed
            return explain_redis_error(exc, self.url)
        for r in in_flight:
            ids = self._suspects.setdefault(r.stream, set())
            if sum(len(s) for s in self._suspects.values()) < _MAX_SUSPECTS:
                ids.add(r.event_id)
        self.client.connection_pool.disconnect()
        return explain_redis_error(exc, self.url)

    def close(self) -> None:
        self.client.close()

    def _execute(self, records: Sequence[SpoolRecord], stream: bool, pubsub: bool) -> None:
        if self.fence is not None:
            self._execute_fenced(self.fence, records, stream, pubsub)
            return
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

    def _execute_fenced(
        self, fence: Fence, records: Sequence[SpoolRecord], stream: bool, pubsub: bool
    ) -> None:
        if not records:
            return
        keys = [fence.key, fence.refused_key, *(r.stream for r in records)]
        args: list[str | int] = [fence.epoch, self.config.stream_maxlen, int(stream), int(pubsub)]
        for r in records:
            args += [r.channel, r.event_json, r.type, r.camera_id, r.event_id]
        result = int(self._fenced_write(keys=keys, args=args))
        if result < 0:
            self.refused += len(records)
            raise FencedError(
                f"{len(records)} events of placement epoch {fence.epoch} refused: {fence.key} is at "
                f"epoch {-result} (this shard was placed again elsewhere); they stay in the spool"
            )

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
