"""Per-stage, per-camera metrics: throughput, latency percentiles, queue depth, drops, reconnects.

One process-wide ``MetricsRegistry`` collects them; it renders a one-line-per-stage status for the terminal
and Prometheus' text exposition format for the HTTP endpoint (``pipeline/serve/metrics_http.py``).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

_WINDOW_S = 10.0  # fps is measured over this sliding window
_LATENCY_SAMPLES = 512


@dataclass
class StageMetrics:
    stage: str
    camera_id: str
    processed: int = 0
    errors: int = 0
    restarts: int = 0
    reconnects: int = 0
    dropped: int = 0
    skipped: int = 0  # on purpose (detect_fps thinning), unlike drops
    _times: collections.deque = field(default_factory=lambda: collections.deque(maxlen=4096))
    _latencies_ms: collections.deque = field(
        default_factory=lambda: collections.deque(maxlen=_LATENCY_SAMPLES)
    )
    _lock: threading.Lock = field(default_factory=threading.Lock)
    queue_depth: Callable[[], int] | None = None
    queue_drops: Callable[[], int] | None = None
    note: Callable[[], str] | None = None  # extra words for the status line (a main stream's health)

    def observe(self, latency_ms: float | None = None, count: int = 1) -> None:
        now = time.monotonic()
        with self._lock:
            self.processed += count
            for _ in range(count):
                self._times.append(now)
            if latency_ms is not None:
                self._latencies_ms.append(latency_ms)

    def fps(self) -> float:
        now = time.monotonic()
        with self._lock:
            while self._times and now - self._times[0] > _WINDOW_S:
                self._times.popleft()
            n = len(self._times)
            if n < 2:
                return 0.0
            span = max(now - self._times[0], 1e-6)
        return n / span

    def latency_percentiles(self) -> tuple[float, float]:
        with self._lock:
            if not self._latencies_ms:
                return 0.0, 0.0
            arr = np.fromiter(self._latencies_ms, dtype=np.float64)
        p50, p95 = np.percentile(arr, [50, 95])
        return float(p50), float(p95)

    def total_drops(self) -> int:
        return self.dropped + (self.queue_drops() if self.queue_drops else 0)


class MetricsRegistry:
    def __init__(self) -> None:
        self._stages: dict[tuple[str, str], StageMetrics] = {}
        self._lock = threading.Lock()
        self.counters: dict[str, float] = collections.defaultdict(float)
        self._frame_ages: dict[str, collections.deque[float]] = {}
        self._decoder_lags: dict[str, float] = {}
        self._camera_values: dict[str, dict[str, float]] = {}  # name -> camera -> value
        self.started = time.time()

    def stage(self, stage: str, camera_id: str = "") -> StageMetrics:
        key = (stage, camera_id)
        with self._lock:
            if key not in self._stages:
                self._stages[key] = StageMetrics(stage=stage, camera_id=camera_id)
            return self._stages[key]

    def observe_frame_age(self, camera_id: str, age_s: float) -> None:
        """How old a frame was when the detector took it (the live latency a user sees)."""
        with self._lock:
            q = self._frame_ages.get(camera_id)
            if q is None:
                q = self._frame_ages[camera_id] = collections.deque(maxlen=_LATENCY_SAMPLES)
            q.append(age_s)

    def frame_ages(self) -> dict[str, dict[str, float]]:
        """Per camera: quantile ("0.5", "0.95") -> frame age at detection in seconds."""
        with self._lock:
            samples = {cam: list(q) for cam, q in self._frame_ages.items() if q}
        out: dict[str, dict[str, float]] = {}
        for cam, values in samples.items():
            p50, p95 = np.percentile(np.asarray(values, dtype=np.float64), [50, 95])
            out[cam] = {"0.5": float(p50), "0.95": float(p95)}
        return out

    def set_decoder_lag(self, camera_id: str, lag_s: float) -> None:
        """How far a live camera's decoding is behind its live edge (now - capture time of the frame just
        decoded; for a realtime file, behind its playback clock). Exported as ``vidpipe_decoder_lag_seconds``."""
        with self._lock:
            self._decoder_lags[camera_id] = lag_s

    def decoder_lags(self) -> dict[str, float]:
        with self._lock:
            return dict(self._decoder_lags)

    def set_camera_value(self, name: str, camera_id: str, value: float) -> None:
        """A per-camera gauge or (name ending in ``_total``) counter, exported as ``vidpipe_<name>{camera}``,
        e.g. ``record_stream_up`` and ``clip_fallbacks_total`` of a camera's main stream."""
        with self._lock:
            self._camera_values.setdefault(name, {})[camera_id] = value

    def camera_values(self) -> dict[str, dict[str, float]]:
        with self._lock:
            return {name: dict(v) for name, v in self._camera_values.items()}

    def inc(self, name: str, value: float = 1.0) -> None:
        """Process-wide counter (e.g. ``publisher_spooled_total``)."""
        with self._lock:
            self.counters[name] += value

    def all(self) -> list[StageMetrics]:
        with self._lock:
            return list(self._stages.values())

    def status_line(self) -> str:
        parts = []
        for m in self.all():
            p50, p95 = m.latency_percentiles()
            label = f"{m.stage}[{m.camera_id}]" if m.camera_id else m.stage
            q = f" q={m.queue_depth()}" if m.queue_depth else ""
            extra = f" reconn={m.reconnects}" if m.reconnects else ""
            extra += m.note() if m.note else ""
            parts.append(
                f"{label}: {m.fps():.1f}fps p50={p50:.1f}ms p95={p95:.1f}ms{q} drop={m.total_drops()}{extra}"
            )
        return " | ".join(parts)

    def prometheus_text(self) -> str:
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, rows: list[tuple[dict[str, str], float]]) -> None:
            lines.append(f"# HELP vidpipe_{name} {help_text}")
            lines.append(f"# TYPE vidpipe_{name} {kind}")
            for labels, value in rows:
                lab = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
                lines.append(f"vidpipe_{name}{{{lab}}} {value}")

        stages = self.all()

        def lab(m: StageMetrics) -> dict[str, str]:
            return {"stage": m.stage, "camera": m.camera_id}

        metric(
            "frames_processed_total",
            "counter",
            "Items processed by a stage.",
            [(lab(m), m.processed) for m in stages],
        )
        metric(
            "stage_fps",
            "gauge",
            "Items per second over the last 10 s.",
            [(lab(m), round(m.fps(), 3)) for m in stages],
        )
        p = {id(m): m.latency_percentiles() for m in stages}
        metric(
            "stage_latency_ms",
            "gauge",
            "Per-item latency percentiles in milliseconds.",
            [({**lab(m), "quantile": "0.5"}, round(p[id(m)][0], 3)) for m in stages]
            + [({**lab(m), "quantile": "0.95"}, round(p[id(m)][1], 3)) for m in stages],
        )
        metric(
            "queue_depth",
            "gauge",
            "Items waiting in the stage's input queue.",
            [(lab(m), m.queue_depth()) for m in stages if m.queue_depth],
        )
        metric(
            "dropped_total",
            "counter",
            "Items dropped because a queue overflowed (a 'latest' queue replacing a frame not yet detected).",
            [(lab(m), m.total_drops()) for m in stages],
        )
        metric(
            "skipped_total",
            "counter",
            "Frames skipped on purpose: thinned out by detect_fps before they were queued.",
            [(lab(m), m.skipped) for m in stages],
        )
        ages = self.frame_ages()
        metric(
            "frame_age_at_detection_seconds",
            "gauge",
            f"Age of a frame (now - capture_time) when the detector got it; last {_LATENCY_SAMPLES} frames.",
            [({"camera": cam, "quantile": q}, round(v, 4)) for cam, a in ages.items() for q, v in a.items()],
        )
        metric(
            "decoder_lag_seconds",
            "gauge",
            "Live edge minus decoded time: how far decoding is behind the camera (0 = keeping up).",
            [({"camera": cam}, round(v, 3)) for cam, v in self.decoder_lags().items()],
        )
        metric(
            "errors_total", "counter", "Errors raised inside a stage.", [(lab(m), m.errors) for m in stages]
        )
        metric(
            "restarts_total",
            "counter",
            "Stage restarts after an error.",
            [(lab(m), m.restarts) for m in stages],
        )
        metric(
            "reconnects_total",
            "counter",
            "Source reconnect attempts.",
            [(lab(m), m.reconnects) for m in stages],
        )
        for name, per_camera in sorted(self.camera_values().items()):
            kind = "counter" if name.endswith("_total") else "gauge"
            metric(name, kind, _CAMERA_VALUE_HELP.get(name, f"Per-camera {name}."),
                   [({"camera": cam}, v) for cam, v in sorted(per_camera.items())])  # fmt: skip
        with self._lock:
            counters = dict(self.counters)
        for name, value in sorted(counters.items()):
            metric(name, "counter", f"Process counter {name}.", [({}, value)])
        return "\n".join(lines) + "\n"


_CAMERA_VALUE_HELP = {
    "record_stream_up": "1 while the camera's record_source (main stream) delivers packets, else 0.",
    "clip_fallbacks_total": "Clips cut from the detect stream because the camera's main stream was down.",
}


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
