"""Bounded queues between stages, with an explicit overflow policy.

``block``: the producer waits for room (files: every frame, in order).
``latest``: the oldest item is dropped to make room and the drop is counted (live cameras: stay current).

A queue can be closed: ``get`` then drains what is left and finally raises ``QueueClosed``; ``put`` on a
closed queue raises ``QueueClosed`` so a producer stops instead of blocking forever during shutdown.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Generic, Literal, TypeVar

T = TypeVar("T")
QueuePolicy = Literal["latest", "block"]


class QueueClosed(Exception):
    """The queue was closed and, for ``get``, is empty."""


class BoundedQueue(Generic[T]):
    def __init__(
        self,
        maxsize: int,
        policy: QueuePolicy = "block",
        name: str = "",
        wakeup: threading.Event | None = None,
    ) -> None:
        if maxsize < 1:
            raise ValueError(f"queue {name!r}: maxsize must be >= 1, got {maxsize}")
        if policy not in ("latest", "block"):
            raise ValueError(f"queue {name!r}: policy must be 'latest' or 'block', got {policy!r}")
        self.name = name
        self.maxsize = maxsize
        self.policy: QueuePolicy = policy
        self._items: collections.deque[T] = collections.deque()
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._closed = False
        self.dropped = 0
        self.put_count = 0
        # Set on every put and on close: lets one consumer wait on several queues at once.
        self.wakeup = wakeup

    def put(self, item: T, timeout: float | None = None) -> bool:
        """Add an item. Returns False when a ``block`` queue stayed full for ``timeout`` seconds."""
        with self._lock:
            if self._closed:
                raise QueueClosed(self.name)
            if len(self._items) >= self.maxsize:
                if self.policy == "latest":
                    self._items.popleft()
                    self.dropped += 1
                else:
                    deadline = None if timeout is None else time.monotonic() + timeout
                    while len(self._items) >= self.maxsize and not self._closed:
                        remaining = None if deadline is None else deadline - time.monotonic()
                        if remaining is not None and remaining <= 0:
                            return False
                        self._not_full.wait(remaining)
                    if self._closed:
                        raise QueueClosed(self.name)
            self._items.append(item)
            self.put_count += 1
            self._not_empty.notify()
        if self.wakeup is not None:
            self.wakeup.set()
        return True

    def get(self, timeout: float | None = None) -> T | None:
        """Next item; None on timeout; raises QueueClosed once closed and drained."""
        with self._lock:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._items:
                if self._closed:
                    raise QueueClosed(self.name)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._not_empty.wait(remaining)
            item = self._items.popleft()
            self._not_full.notify()
            return item

    def get_batch(self, max_items: int, timeout: float | None = None) -> list[T]:
        """Up to ``max_items`` items: waits up to ``timeout`` for the first, then takes what is there."""
        first = self.get(timeout)
        if first is None:
            return []
        batch = [first]
        with self._lock:
            while self._items and len(batch) < max_items:
                batch.append(self._items.popleft())
            self._not_full.notify_all()
        return batch

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._not_empty.notify_all()
            self._not_full.notify_all()
        if self.wakeup is not None:
            self.wakeup.set()

    @property
    def closed(self) -> bool:
        return self._closed

    def qsize(self) -> int:
        with self._lock:
            return len(self._items)
