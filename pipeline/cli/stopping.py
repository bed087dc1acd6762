"""Signals and the stop deadline of a run: installed first, before anything slow, and honoured at any load.

``StopController.install()`` is the first thing ``run`` does (before the config's model is loaded, before
the local redis-server starts), so a SIGTERM at any moment of start-up or of the run is seen:

* the first SIGINT/SIGTERM sets ``requested`` and calls the registered ``on_stop`` (``Pipeline.stop``:
  decoders stop at once), and starts the clock: the process must be gone ``stop_timeout_s`` later;
* a watchdog thread ends the process at that deadline whatever the main thread is doing (``os._exit``):
  with the run's exit status if the orderly stop had finished (the interpreter's own shutdown hung), else
  with ``EXIT_STOP_DEADLINE``;
* a second signal exits at once (``EXIT_FORCED``). Committed spool rows are durable (SQLite WAL), so the
  spool is intact; the local redis-server dies with the process (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType

from pipeline.core.exit_status import (  # noqa: F401 - re-exported for the CLI
    EXIT_ALL_CAMERAS_FAILED,
    EXIT_CLUSTER_LOST,
    EXIT_FORCED,
    EXIT_OK,
    EXIT_STARTUP,
    EXIT_STOP_DEADLINE,
)

log = logging.getLogger("vidpipe")


def flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()


def _say(level: int, message: str) -> None:
    """Log it; before logging is configured (a signal during the config load), print it."""
    if logging.getLogger().handlers:
        log.log(level, "%s", message)
    else:
        print(message, file=sys.stderr, flush=True)


class StopController:
    """Owns SIGINT/SIGTERM for a run: first signal = stop within ``timeout_s``; second = exit now."""

    def __init__(self, timeout_s: float = 8.0, *, exit_now: Callable[[int], None] = os._exit) -> None:
        self.timeout_s = timeout_s
        self.requested = threading.Event()
        self.signals_seen = 0
        self.requested_at: float | None = None  # time.monotonic() of the first signal
        self.final_status: int | None = None  # set once the orderly stop finished
        self.on_stop: Callable[[], None] | None = None
        self.forced_note = "forced exit"
        self._exit_now = exit_now
        self._watchdog: threading.Thread | None = None
        self._released = False
        self._request_lock = threading.Lock()

    # -- signals ---------------------------------------------------------------------------------------
    def install(self) -> StopController:
        """Handlers for SIGINT/SIGTERM, and a thread that acts on them at once.

        Python runs a signal handler only in the main thread, once that thread is back in the interpreter:
        a main thread inside a long C call (a model load, ``ray.init``) would see it seconds or minutes
        late. The C-level handler also writes the signal number to a wakeup fd (``signal.set_wakeup_fd``)
        at once, whichever thread the kernel interrupted; the listener thread reads it and starts the stop
        (and the deadline) there. The Python-level handler only has to exist."""
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        r, w = os.pipe()
        os.set_blocking(w, False)
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        threading.Thread(target=self._listen, args=(r,), name="signals", daemon=True).start()
        return self

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        """Python-level handler (main thread, maybe late): the listener thread has acted already."""

    def _listen(self, fd: int) -> None:
        while True:
            try:
                data = os.read(fd, 64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum in (signal.SIGINT, signal.SIGTERM) and not self._released:
                    self._signal(signum)

    def release(self) -> None:
        """Hand the signals over (``executor: ray`` installs its own handlers): no deadline, no watchdog."""
        self._released = True
        signal.set_wakeup_fd(-1)

    def _signal(self, signum: int) -> None:
        self.signals_seen += 1
        name = signal.Signals(signum).name
        if self.signals_seen == 1:
            self.request(f"{name}: stopping within {self.timeout_s:g}s (send again to force)")
            return
        _say(logging.WARNING, f"{name} again: {self.forced_note}")
        flush_std_streams()
        self._exit_now(EXIT_FORCED)

    def request(self, message: str) -> None:
        """Start the stop (a signal, or the run's own end): the deadline clock starts now."""
        with self._request_lock:
            if self.requested.is_set():
                return
            self.requested_at = time.monotonic()
            self.requested.set()
        _say(logging.INFO, message)
        self._start_watchdog()
        if self.on_stop is not None:
            self.on_stop()

    # -- deadline --------------------------------------------------------------------------------------
    @property
    def deadline(self) -> float | None:
        return None if self.requested_at is None else self.requested_at + self.timeout_s

    def remaining(self) -> float:
        """Seconds left before the deadline (infinite while no stop was requested)."""
        d = self.deadline
        return float("inf") if d is None else d - time.monotonic()

    @property
    def cut_off_reserve_s(self) -> float:
        """Time kept after the drain for spooling what is left, stopping servers and exiting."""
        return max(1.5, 0.25 * self.timeout_s)

    def finished(self, status: int) -> None:
        """The orderly stop is done: if the interpreter's shutdown hangs, the watchdog exits with ``status``."""
        self.final_status = status

    def _start_watchdog(self) -> None:
        if self._watchdog is not None:
            return
        self._watchdog = threading.Thread(target=self._watch, name="stop-watchdog", daemon=True)
        self._watchdog.start()

    def _watch(self) -> None:
        while (left := self.remaining()) > 0:
            time.sleep(min(left, 0.1))
        status = self.final_status
        if status is None:
            log.error(
                "stop deadline (stop_timeout_s=%gs) passed before the stop finished; exiting now "
                "(events already spooled wait there for the next start)",
                self.timeout_s,
            )
            status = EXIT_STOP_DEADLINE
        flush_std_streams()
        self._exit_now(status)
