"""One delivery stage per sink: bounded queue → transport, with an on-disk spool while the destination is away.

What every sink gets, whatever its transport:
  * ``submit`` never blocks a camera thread for long: it waits at most ``enqueue_timeout_s`` for room (once per
    overflow), then parks the queue's events and the new one in the spool, oldest first.
  * While the destination is away (any of ``transport.errors``), events go to the spool; the outage is logged
    once, then "still spooling" once every ``notice_interval_s`` (a minute); retries back off doubling up to
    ``retry_max_s``. Once the destination answers, the spool is replayed oldest first and newer events queue
    up behind it, so the destination sees production order.
  * A spool left by an earlier run is announced at start (how many events) and replayed first.
  * A stage that falls behind (a slow webhook) fills its own queue only; once full, ``submit`` spools.
  * ``cut_off()`` (the stop deadline is near): sending stops, what is queued goes to the spool, and events
    submitted afterwards go straight to the spool; the spool stays open until the process ends.
  * De-duplication after a cut-off batch is the transport's job where the destination allows it (Redis
    Streams); elsewhere delivery is at least once and consumers de-duplicate by ``event_id``.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections.abc import Sequence
from typing import Any

from pipeline.core.events import Event
from pipeline.core.metrics import MetricsRegistry
from pipeline.core.queues import BoundedQueue, QueueClosed
from pipeline.core.stage import Stage
from pipeline.deliver.base import DeliverySettings, Transport
from pipeline.deliver.spool import Spool, SpoolRecord


class DeliveryStage(Stage):
    """Moves events from its own queue to ``transport`` (or its own spool while the destination is away).

    name: stage name (``publisher`` for Redis, ``sink:mqtt``, ...). counter_prefix: prefix of its counters
      (``publisher_published_total``, ``sink_mqtt_spooled_total``, ...). spool_key: the config key of the
      spool path, named in errors. logger: where it logs (Redis keeps ``pipeline.deliver.publisher``).
    """

    def __init__(
        self,
        name: str,
        transport: Transport,
        settings: DeliverySettings,
        queue: BoundedQueue[Event] | None = None,
        metrics: MetricsRegistry | None = None,
        *,
        spool: Spool | None = None,
        spool_key: str = "spool_path",
        counter_prefix: str | None = None,
        logger: logging.Logger | None = None,
        notice_interval_s: float = 60.0,
    ) -> None:
        super().__init__(name, metrics=metrics, restart_backoff_s=1.0)
        self.transport = transport
        self.settings = settings
        self.log = logger or logging.getLogger(f"pipeline.deliver.{transport.name}")
        self.counter_prefix = counter_prefix or re.sub(r"\W", "_", f"sink_{transport.name}")
        self.notice_interval_s = notice_interval_s
        self.queue: BoundedQueue[Event] = queue or BoundedQueue(settings.queue_size, "block", name)
        if self.queue.policy != "block":
            raise ValueError(
                f"{name} input queue {self.queue.name!r} must use policy 'block' "
                f"(got {self.queue.policy!r}): events must not be dropped in memory"
            )
        self._own_spool = spool is None
        self.spool = (
            spool
            if spool is not None
            else Spool(settings.spool_path, settings.spool_max_events, key=spool_key)
        )
        self.metrics.queue_depth = self.queue.qsize
        self.error: str | None = None  # why the destination is away right now; None while connected
        self._down_since: float | None = None
        self._next_retry = 0.0
        self._next_notice = 0.0
        self._backoff = settings.retry_initial_s
        self._overflowing = False
        self._overflow_lock = threading.Lock()
        self._announced = False
        self._cut = threading.Event()
        # records handed to transport.send but not yet durable anywhere (not spooled): a cut-off spools
        # them, since the send may hang past the deadline (at least once: they may also have landed)
        self._in_flight: Sequence[SpoolRecord] = ()
        self._in_flight_lock = threading.Lock()
        self._in_transport = False  # blocked in transport I/O on records that are already durable

    # -- public API ------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._down_since is None

    def submit(self, event: Event) -> None:
        """Hand an event over. Never waits longer than ``enqueue_timeout_s``, and only once per overflow: a
        stuck transport cannot stall the caller (a camera thread) for more than that."""
        try:
            wait = 0.0 if self._overflowing else self.settings.enqueue_timeout_s
            if self.queue.put(event, timeout=wait):
                self._overflowing = False
                return
            reason = f"{self.name} queue full for {wait}s"
        except QueueClosed:
            reason = f"{self.name} queue closed"
        with self._overflow_lock:
            if not self._overflowing:
                self.log.warning("%s: spooling events directly to %s", reason, self.spool.path)
            self._overflowing = True
            try:  # what is still queued is older than this event: spool it first, so order is kept
                older = self.queue.get_batch(self.queue.maxsize, timeout=0)
            except QueueClosed:
                older = []
            self._spool([self.transport.record(e) for e in older] + [self.transport.record(event)])

    def cut_off(self) -> None:
        """Stop sending now: park what is queued in the spool and spool every later event directly.

        For a stop with a deadline: what was not sent by then waits in the spool for the next start. The
        spool is not closed (late events from analytics still land there); the process exit releases it."""
        self._cut.set()
        self.stop_event.set()
        self.queue.close()
        with self._in_flight_lock:
            in_flight, self._in_flight = self._in_flight, ()
        self._spool(in_flight)  # older than anything still queued
        self._park_queue()

    def settled_after_cut_off(self) -> bool:
        """After ``cut_off``: nothing of this stage's is only in memory any more (its thread ended, or it is
        blocked in transport I/O on records that are already spooled)."""
        return not self.is_alive() or self._in_transport

    @property
    def was_cut_off(self) -> bool:
        return self._cut.is_set()

    def _park_queue(self) -> None:
        """Move whatever is still queued to the spool, oldest first (after a cut-off)."""
        while True:
            try:
                older = self.queue.get_batch(self.queue.maxsize, timeout=0)
            except QueueClosed:
                return
            if not older:
                return
            self._spool([self.transport.record(e) for e in older])

    def status(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "target": self.transport.target,
            "error": self.error,
            "spooled": self.spool.count(),
            "spool_dropped": self.spool.dropped,
            "queue": self.queue.qsize(),
        }

    # -- stage loop ------------------------------------------------------------------------------------

    def loop(self) -> None:
        self._announce_backlog()
        batch_size = self.settings.batch_size
        while not self._cut.is_set():
            stopping = self.stop_event.is_set()
            try:
                batch = self.queue.get_batch(batch_size, timeout=0 if stopping else self._wait_s())
            except QueueClosed:
                break
            if stopping and not batch:
                break
            if self._cut.is_set():
                self._spool([self.transport.record(e) for e in batch])
                break
            self._handle([self.transport.record(e) for e in batch])
            self._notice_if_due()
        if self._cut.is_set():
            self._park_queue()
        else:
            self._final_flush()

    def on_exit(self) -> None:
        try:
            backlog = self.spool.count()
            if backlog:
                self.log.warning(
                    "%s stopped with %d events in spool %s; they are sent on the next start",
                    self.name,
                    backlog,
                    self.spool.path,
                )
            if self._own_spool and not self._cut.is_set():
                self.spool.close()
        finally:
            self.transport.close()

    def _announce_backlog(self) -> None:
        if self._announced:
            return
        self._announced = True
        backlog = self.spool.count()
        if backlog:
            self.metrics_registry.inc(f"{self.counter_prefix}_start_backlog_total", backlog)
            self.log.warning(
                "%s: %d events from an earlier run wait in spool %s; replaying them to %s in order, "
                "before new events",
                self.name,
                backlog,
                self.spool.path,
                self.transport.target,
            )

    def _notice_if_due(self) -> None:
        """While the destination is away, say so once every ``notice_interval_s`` (not once per event)."""
        if self._down_since is None:
            return
        now = time.monotonic()
        if now >= self._next_notice:
            self._next_notice = now + self.notice_interval_s
            self.log.warning(
                "%s still spooling after %.0fs (%s); %d events wait in spool %s",
                self.name,
                now - self._down_since,
                self.error,
                self.spool.count(),
                self.spool.path,
            )

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
        if records:  # a backlog is being replayed: queue behind it so the destination keeps production order
            self._park(records)
        self._drain(max_batches=4)

    def _park(self, records: list[SpoolRecord]) -> None:
        if not records:
            return
        self._spool(records)
        try:
            self.transport.send_live(records)
        except self.transport.errors as exc:
            self._outage(exc, [])

    def _final_flush(self) -> None:
        if not self.spool.count():
            return
        if self._down_since is not None:
            self._try_recover()  # one last attempt, however long the back-off
        deadline = time.monotonic() + self.settings.flush_timeout_s
        while (
            self._down_since is None
            and self.spool.count()
            and time.monotonic() < deadline
            and not self._cut.is_set()
        ):
            self._drain(max_batches=1)

    # -- transport I/O ---------------------------------------------------------------------------------

    def _send_or_spool(self, records: list[SpoolRecord]) -> None:
        t0 = time.perf_counter()
        with self._in_flight_lock:
            if self._cut.is_set():
                self._spool(records)
                return
            self._in_flight = records
        self._in_transport = True
        try:
            sent = self.transport.send(records, replay=False)
        except self.transport.errors as exc:
            self._outage(exc, records)
            with self._in_flight_lock:
                if self._in_flight:  # not already spooled by a cut-off
                    self._spool(records)
                self._in_flight = ()
            return
        finally:
            self._in_transport = False
        with self._in_flight_lock:
            self._in_flight = ()
        if sent:
            self.metrics.observe((time.perf_counter() - t0) * 1000 / sent, count=sent)
        self.metrics_registry.inc(f"{self.counter_prefix}_published_total", sent)

    def _drain(self, max_batches: int) -> None:
        """Replay up to ``max_batches`` spool batches, oldest first."""
        batch_size = self.settings.batch_size
        for _ in range(max_batches):
            items = self.spool.peek_batch(batch_size)
            if not items:
                return
            t0 = time.perf_counter()
            try:
                sent = self.transport.send(items, replay=True)
            except self.transport.errors as exc:
                self._outage(exc, items)
                return
            self.spool.ack(items[-1].id)
            self._count_replayed(len(items), sent, t0)
            if len(items) < batch_size:
                return

    def _count_replayed(self, n: int, sent: int, t0: float) -> None:
        if sent:
            self.metrics.observe((time.perf_counter() - t0) * 1000 / sent, count=sent)
            self.metrics_registry.inc(f"{self.counter_prefix}_replayed_total", sent)
        if sent < n:
            self.metrics_registry.inc(f"{self.counter_prefix}_duplicates_skipped_total", n - sent)

    def _spool(self, records: Sequence[SpoolRecord]) -> None:
        if not records:
            return
        dropped = self.spool.append_many(records)
        self.metrics_registry.inc(f"{self.counter_prefix}_spooled_total", len(records))
        if dropped:
            self.metrics.dropped += dropped
            self.metrics_registry.inc(f"{self.counter_prefix}_spool_dropped_total", dropped)
            self.log.warning(
                "spool %s full (spool_max_events=%d): dropped the %d oldest events",
                self.spool.path,
                self.spool.max_events,
                dropped,
            )

    # -- outage bookkeeping ----------------------------------------------------------------------------

    def _outage(self, exc: BaseException, in_flight: Sequence[SpoolRecord]) -> None:
        """The destination failed. The transport remembers what may have landed; log once; schedule a retry."""
        self.error = self.transport.failed(exc, in_flight)
        if self._down_since is None:
            self._down_since = time.monotonic()
            self._next_notice = self._down_since + self.notice_interval_s
            self._backoff = self.settings.retry_initial_s
            self.metrics_registry.inc(f"{self.counter_prefix}_outages_total")
            self.log.warning(
                "%s; events are spooled to %s until it is back (retrying with back-off up to %gs)",
                self.error,
                self.spool.path,
                self.settings.retry_max_s,
            )
        self._schedule_retry()

    def _schedule_retry(self) -> None:
        wait = self._backoff * random.uniform(0.8, 1.2)
        self._next_retry = time.monotonic() + wait
        self._backoff = min(self._backoff * 2, self.settings.retry_max_s)

    def _try_recover(self) -> None:
        """Back means: the transport reconnected AND the oldest spooled batch went through (a webhook has no
        other way to tell), so a destination that accepts connections but fails sends is not "back"."""
        self.metrics.reconnects += 1
        items = self.spool.peek_batch(self.settings.batch_size)
        t0 = time.perf_counter()
        try:
            self.transport.recover()
            sent = self.transport.send(items, replay=True) if items else 0
        except self.transport.errors as exc:
            self.error = self.transport.failed(exc, items)
            self.log.debug("%s still away: %s", self.transport.name, self.error)
            self._schedule_retry()
            return
        waiting = self.spool.count()  # before the first batch is acknowledged: what the replay covers
        down_for = time.monotonic() - (self._down_since or time.monotonic())
        self.log.info(
            "%s at %s is back after %.1fs; replaying %d spooled events",
            self.transport.title,
            self.transport.target,
            down_for,
            waiting,
        )
        if items:
            self.spool.ack(items[-1].id)
            self._count_replayed(len(items), sent, t0)
        self._down_since = None
        self.error = None
