"""Supervised stage threads.

A stage runs its ``loop`` in a thread. If ``loop`` raises, the error is logged with the stage and camera
names and the stage is restarted after a back-off, up to ``max_restarts`` times; after that it stops and
reports itself failed. It never takes the process down, and it never dies silently.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from pipeline.core.metrics import MetricsRegistry, StageMetrics
from pipeline.core.states import StageState

log = logging.getLogger(__name__)


class Stage:
    """Base class: subclasses implement ``loop()``, which returns when the stage's work is done."""

    def __init__(
        self,
        name: str,
        camera_id: str = "",
        metrics: MetricsRegistry | None = None,
        max_restarts: int = 5,
        restart_backoff_s: float = 1.0,
    ) -> None:
        self.name = name
        self.camera_id = camera_id
        self.metrics_registry = metrics or MetricsRegistry()
        self.metrics: StageMetrics = self.metrics_registry.stage(name, camera_id)
        self.max_restarts = max_restarts
        self.restart_backoff_s = restart_backoff_s
        self.stop_event = threading.Event()
        self.state = StageState.CREATED
        self.last_error: str | None = None
        self._thread: threading.Thread | None = None
        self.on_exit_callbacks: list[Callable[[], None]] = []

    @property
    def label(self) -> str:
        return f"{self.name}[{self.camera_id}]" if self.camera_id else self.name

    def start(self) -> None:
        self._thread = threading.Thread(target=self._supervise, name=self.label, daemon=True)
        self.state = StageState.RUNNING
        self._thread.start()

    def stop(self) -> None:
        """Ask the stage to finish; it drains its input first where that makes sense."""
        self.stop_event.set()

    def join(self, timeout: float | None = None) -> bool:
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def loop(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def on_exit(self) -> None:
        """Runs once when the stage ends for good (closes output queues so downstream drains)."""

    def _supervise(self) -> None:
        failures = 0
        try:
            while True:
                try:
                    self.state = StageState.RUNNING
                    self.loop()
                    self.state = StageState.STOPPED
                    return
                except Exception as exc:  # noqa: BLE001 - a stage must never take the process down
                    failures += 1
                    self.metrics.errors += 1
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    if failures > self.max_restarts or self.stop_event.is_set():
                        log.exception("stage %s failed for good after %d errors", self.label, failures)
                        self.state = StageState.FAILED
                        return
                    log.exception(
                        "stage %s raised (error %d of at most %d); restarting in %.1fs",
                        self.label,
                        failures,
                        self.max_restarts,
                        self.restart_backoff_s,
                    )
                    self.state = StageState.RESTARTING
                    self.metrics.restarts += 1
                    if self.stop_event.wait(self.restart_backoff_s):
                        self.state = StageState.STOPPED
                        return
        finally:
            try:
                self.on_exit()
            finally:
                for cb in self.on_exit_callbacks:
                    try:
                        cb()
                    except Exception:  # noqa: BLE001
                        log.exception("stage %s: exit callback failed", self.label)
