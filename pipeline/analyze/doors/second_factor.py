"""Second factor for a door: PIN pad / badge reader events arriving on a Redis pub/sub channel.

A reader publishes JSON ``{"door_id": "front", "person": "alice"}`` (``person`` optional: a badge bound to
a person must match the face; a PIN pad without one only proves someone is at the door). The door policy asks
:meth:`SecondFactorListener.check` whether such an event arrived within ``within_s`` of the face match; an event
is used up by the grant it allows, so one badge swipe opens the door once. Events are kept in a bounded
deque (the newest ``max_events``), stamped with the time they were received here (the reader's clock is not
trusted). Unparseable messages are logged and dropped.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable

import redis

log = logging.getLogger(__name__)


class SecondFactorListener:
    def __init__(
        self, url: str, channels: list[str], max_events: int = 1000, clock: Callable[[], float] = time.time
    ) -> None:
        self.channels = sorted(set(channels))
        self.clock = clock
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
        try:
            data = json.loads(raw)
            door = data["door_id"]
            person = data.get("person")
            if not isinstance(door, str) or not (person is None or isinstance(person, str)):
                raise ValueError("door_id must be a string, person a string or absent")
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("second factor: ignored a malformed event (%s): %.120r", exc, raw)
            return
        with self._lock:
            self._events.append((self.clock(), door, person))

    def check(self, door_id: str, person: str, since: float, until: float) -> bool:
        """Whether an event for this door (and this person, when it names one) arrived in [since, until];
        the first such event is consumed."""
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
