"""Second factor for a door: signed PIN pad / badge reader messages arriving on a Redis pub/sub channel.

A reader publishes a message signed with its own key (format and checks: :mod:`reader_messages`, docs/doors.md);
``person`` is optional: a badge bound to a person must match the face, a PIN pad without one only proves
someone is at the door. The door policy asks :meth:`SecondFactorListener.check` whether an accepted message
arrived within ``within_s`` of the face match; a message is used up by the grant it allows, so one badge
swipe opens the door once. Accepted messages are kept in a bounded deque (the newest ``max_events``), stamped
with the time they were received here. Refused ones (unsigned, forged, unknown reader, other door, stale,
future, replayed, malformed) are counted by reason (``refused``) and logged, at most once per reason every
10 s (a flood cannot fill the log).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable

import redis

from pipeline.analyze.doors.reader_messages import DoorReaders, ReaderMessageError, ReaderVerifier
from pipeline.config.doors import DoorConfig

log = logging.getLogger(__name__)
_LOG_EVERY_S = 10.0


def door_readers(doors: Iterable[DoorConfig]) -> dict[str, DoorReaders]:
    """The reader keys of every door with a second factor. Raises ValueError (naming the door) for a door
    with no reader, or a reader key that is missing or too short: unsigned messages are never accepted."""
    out: dict[str, DoorReaders] = {}
    for d in doors:
        sf = d.second_factor
        if sf is None:
            continue
        if not sf.readers:
            raise ValueError(
                f"door {d.id!r}: second_factor.readers is empty; reader messages must be signed, so list each "
                "reader with its key: readers: {badge-1: {secret_env: READER_BADGE_1_KEY}} (docs/doors.md)"
            )
        out[d.id] = DoorReaders({r: cfg.key(d.id, r) for r, cfg in sf.readers.items()}, sf.max_age_s)
    return out


class SecondFactorListener:
    def __init__(
        self,
        url: str,
        channels: list[str],
        readers: dict[str, DoorReaders],
        max_events: int = 1000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.channels = sorted(set(channels))
        self.clock = clock
        self.verifier = ReaderVerifier(readers, not_before=clock())
        self.refused: Counter[str] = Counter()
        self._logged: dict[str, float] = {}
        self._events: deque[tuple[float, str, str | None]] = deque(maxlen=max_events)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._client = redis.Redis.from_url(url, socket_timeout=5)
        self._thread = threading.Thread(target=self._run, name="second-factor", daemon=True)
        self._ready = threading.Event()
        self._thread.start()
        self._ready.wait(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(*self.channels)
                self._ready.set()
                while not self._stop.is_set():
                    msg = pubsub.get_message(timeout=0.5)
                    if msg and msg.get("type") == "message":
                        self._add(msg["data"])
            except redis.RedisError as exc:
                log.warning("second factor: Redis unavailable (%s); retrying", exc)
                self._stop.wait(1.0)
            finally:
                pubsub.close()

    def _add(self, raw: bytes | str) -> None:
        now = self.clock()
        with self._lock:
            try:
                door, person = self.verifier.verify(raw, now)
            except ReaderMessageError as exc:
                self.refused[exc.reason] += 1
                last = self._logged.get(exc.reason)
                if last is None or now - last >= _LOG_EVERY_S:
                    self._logged[exc.reason] = now
                    log.warning(
                        "second factor: refused a reader message (%s; %d refused for this reason so far)",
                        exc,
                        self.refused[exc.reason],
                    )
                return
            self._events.append((now, door, person))

    def check(self, door_id: str, person: str, since: float, until: float) -> bool:
        """Whether an accepted message for this door (and this person, when it names one) arrived in
        [since, until]; the first such message is consumed."""
        with self._lock:
            for i, (t, door, who) in enumerate(self._events):
                if door == door_id and since <= t <= until and (who is None or who == person):
                    del self._events[i]
                    return True
        return False

    def close(self) -> None:
        self._stop.set()
        self._thread.join(3)
        self._client.close()
