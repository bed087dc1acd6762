"""End to end through the spine with real servers: RTSP (GStreamer) → pipeline → redis-server → subscriber."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
import yaml

from pipeline.config.schema import parse_config
from pipeline.core.events import Event
from pipeline.detect.detectors.base import NullDetector
from pipeline.run.runner import Pipeline
from pipeline.serve.metrics_http import MetricsServer

REPO = Path(__file__).resolve().parents[1]


class Subscriber:
    """A real pub/sub subscriber on its own thread, collecting every event of the prefix."""

    def __init__(self, url: str, pattern: str = "vidpipe:*") -> None:
        self.client = redis.Redis.from_url(url)
        self.pubsub = self.client.pubsub()
        self.pubsub.psubscribe(pattern)
        while self.pubsub.get_message(timeout=1.0) is None:  # wait for the psubscribe confirmation
            pass
        self.events: list[tuple[str, Event]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self.pubsub.get_message(timeout=0.2)
            if msg and msg["type"] == "pmessage":
                self.events.append((msg["channel"].decode(), Event.from_json(msg["data"])))

    def wait_for(self, pred, timeout: float) -> bool:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(pred(e) for _, e in list(self.events)):
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self._stop.set()
        self._t.join(2)
        self.pubsub.close()


def _status(ev: Event, status: str, cam: str | None = None) -> bool:
    return (
        ev.type == "status.camera"
        and ev.data.get("status") == status
        and (cam is None or ev.camera_id == cam)
    )


def _cfg(redis_url: str, tmp_path: Path, cameras: list[dict], **redis_extra) -> object:
    return parse_config(
        {
            "cameras": cameras,
            "detector": {"model": "none"},
            "redis": {"url": redis_url, "spool_path": str(tmp_path / "spool.sqlite"), **redis_extra},
        }
    )


def _stream_events(client: redis.Redis, family: str) -> list[Event]:
    return [Event.from_json(f[b"event"]) for _, f in client.xrange(f"vidpipe:stream:{family}")]


def test_rtsp_camera_events_reach_a_redis_subscriber_and_survive_a_server_restart(
    rtsp_server, redis_server, tmp_path
):
    cfg = _cfg(
        redis_server.url,
        tmp_path,
        [
            {
                "id": "door1",
                "source": rtsp_server.url,
                "read_timeout_s": 2,
                "open_timeout_s": 5,
                "reconnect": {"initial_s": 0.2, "max_s": 1.0},
            }
        ],
    )
    sub = Subscriber(redis_server.url)
    pipe = Pipeline(cfg, detector=NullDetector(), var_dir=tmp_path).start()
    try:
        assert sub.wait_for(lambda e: _status(e, "online", "door1"), 20), "camera never came online"
        assert sub.wait_for(lambda e: e.type == "detections.frame" and e.camera_id == "door1", 10)
        n_before = sum(1 for _, e in sub.events if e.type == "detections.frame")

        rtsp_server.stop()
        assert sub.wait_for(lambda e: _status(e, "offline", "door1"), 10), "disconnect not reported"
        rtsp_server.start()

        def back_online() -> bool:
            kinds = [e.data.get("status") for _, e in list(sub.events) if e.type == "status.camera"]
            return "online" in kinds[kinds.index("offline") :]

        deadline = time.time() + 30
        while time.time() < deadline and not back_online():
            time.sleep(0.1)
        assert back_online(), "no online status after the server came back"
        deadline = time.time() + 15
        while time.time() < deadline:
            n_after = sum(1 for _, e in sub.events if e.type == "detections.frame")
            if n_after > n_before + 10:
                break
            time.sleep(0.1)
        assert n_after > n_before + 10, "frames did not flow again after the reconnect"
    finally:
        pipe.stop()
        assert pipe.join(30), "pipeline did not shut down"
        sub.close()

    channels = {ch for ch, _ in sub.events}
    assert "vidpipe:status:door1" in channels and "vidpipe:detections:door1" in channels
    # The durable stream holds the same detections in capture order with strictly increasing frame numbers.
    client = redis.Redis.from_url(redis_server.url)
    seqs = [e.frame_seq for e in _stream_events(client, "detections")]
    assert len(seqs) >= n_after and seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    statuses = [e.data["status"] for e in _stream_events(client, "status")]
    i_off = statuses.index("offline")
    assert "online" in statuses[:i_off] and "online" in statuses[i_off:]


def test_a_hung_rtsp_server_is_noticed_within_the_read_timeout(rtsp_server, redis_server, tmp_path):
    cfg = _cfg(
        redis_server.url,
        tmp_path,
        [{"id": "cam", "source": rtsp_server.url, "read_timeout_s": 1.5, "reconnect": {"initial_s": 0.2}}],
    )
    sub = Subscriber(redis_server.url)
    pipe = Pipeline(cfg, detector=NullDetector(), var_dir=tmp_path).start()
    try:
        assert sub.wait_for(lambda e: e.type == "detections.frame", 20)
        rtsp_server.pause()  # SIGSTOP: socket open, nothing sent
        t0 = time.time()
        assert sub.wait_for(lambda e: _status(e, "offline"), 10)
        noticed = next(e.ts for _, e in sub.events if _status(e, "offline"))
        assert noticed - t0 < 1.5 + 2.0, f"hung stream noticed after {noticed - t0:.1f}s"
    finally:
        rtsp_server.resume()
        pipe.stop()
        assert pipe.join(30)
        sub.close()


def test_failing_cameras_never_stop_the_others(demo_mp4, demo_mkv, damaged_copy, redis_server, tmp_path):
    truncated = damaged_copy(demo_mkv, keep_fraction=0.4)  # MKV: header first, so the start still decodes
    truncated_mp4 = damaged_copy(demo_mp4, keep_fraction=0.4)  # MP4 with its index (moov) cut off
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(os.urandom(20000))
    cfg = _cfg(
        redis_server.url,
        tmp_path,
        [
            {"id": "good", "source": str(demo_mp4.path)},
            {"id": "missing", "source": str(tmp_path / "nope.mp4")},
            {"id": "garbage", "source": str(garbage)},
            {"id": "truncated", "source": str(truncated)},
            {"id": "truncated_mp4", "source": str(truncated_mp4)},
            {
                "id": "unreachable",
                "source": "rtsp://127.0.0.1:9/none",
                "open_timeout_s": 1,
                "reconnect": {"initial_s": 0.1, "max_s": 0.5},
            },
        ],
    )
    pipe = Pipeline(cfg, detector=NullDetector(), var_dir=tmp_path).start()
    client = redis.Redis.from_url(redis_server.url)
    deadline = time.time() + 30
    while time.time() < deadline and pipe.decoders["good"].is_alive():
        time.sleep(0.1)
    time.sleep(1.0)
    pipe.stop()
    assert pipe.join(30)

    dets = _stream_events(client, "detections")
    good = [e.frame_seq for e in dets if e.camera_id == "good"]
    assert good == list(range(demo_mp4.frames)), "the healthy camera lost or reordered frames"
    trunc = [e.frame_seq for e in dets if e.camera_id == "truncated"]
    assert 0 < len(trunc) < demo_mp4.frames
    statuses = {(e.camera_id, e.data["status"]) for e in _stream_events(client, "status")}
    assert ("missing", "failed") in statuses
    assert ("garbage", "failed") in statuses
    assert ("truncated_mp4", "failed") in statuses
    assert ("truncated", "ended") in statuses
    assert ("unreachable", "reconnecting") in statuses
    assert ("good", "ended") in statuses
    reasons = [e.data.get("reason", "") for e in _stream_events(client, "status") if e.camera_id == "missing"]
    assert any("nope.mp4" in r for r in reasons), reasons


def test_metrics_endpoint_serves_prometheus_text(demo_mp4, redis_server, tmp_path):
    import urllib.request

    cfg = _cfg(redis_server.url, tmp_path, [{"id": "m", "source": str(demo_mp4.path)}])
    pipe = Pipeline(cfg, detector=NullDetector(), var_dir=tmp_path)
    srv = MetricsServer(pipe.metrics, port=0, health=pipe.health).start()
    try:
        pipe.start()
        assert pipe.wait(30)
        body = urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/metrics", timeout=5).read().decode()
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/healthz", timeout=5).read())
    finally:
        srv.stop()
        pipe.join(10)
    line = next(
        ln for ln in body.splitlines() if ln.startswith('vidpipe_frames_processed_total{stage="analytics"')
    )
    assert float(line.split()[-1]) == demo_mp4.frames
    assert "# TYPE vidpipe_stage_latency_ms gauge" in body
    assert health["cameras"]["m"]["decoder"] in ("stopped", "running")


def _write_cfg(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_cli_runs_prints_events_and_exits_cleanly_on_sigterm(demo_mp4, redis_server, tmp_path):
    cfg = _write_cfg(
        tmp_path,
        {
            "cameras": [{"id": "loop", "source": str(demo_mp4.path), "loop": True, "realtime": True}],
            "detector": {"model": "none"},
            "redis": {"url": redis_server.url, "spool_path": str(tmp_path / "spool.sqlite")},
            "metrics": {"status_interval_s": 0.5},
        },
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "run_pipeline.py"),
            "--config",
            str(cfg),
            "--print-events",
            "--var-dir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    client = redis.Redis.from_url(redis_server.url)
    deadline = time.time() + 30
    while time.time() < deadline and client.xlen("vidpipe:stream:detections") < 20:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-3000:]
    printed = [Event.from_json(line) for line in out.splitlines() if line.startswith("{")]
    stream = _stream_events(client, "detections")
    # every event printed was also delivered to the stream (flushed on shutdown), none lost
    printed_ids = {e.event_id for e in printed if e.type == "detections.frame"}
    assert printed_ids and printed_ids == {e.event_id for e in stream}
    assert "[status]" in err and "PSUBSCRIBE" in err


def test_cli_bad_config_is_a_clear_error(tmp_path):
    cfg = _write_cfg(tmp_path, {"cameras": [{"id": "x", "source": "a.mp4", "detect_fps": -5}]})
    r = subprocess.run(
        [sys.executable, str(REPO / "run_pipeline.py"), "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert str(cfg) in r.stderr and "cameras[0].detect_fps" in r.stderr and "greater than 0" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("max_batch", [1, 4])
def test_file_cameras_deliver_every_frame_in_order_through_the_whole_spine(
    demo_mp4, redis_server, tmp_path, max_batch
):
    cfg = parse_config(
        {
            "cameras": [{"id": f"f{i}", "source": str(demo_mp4.path)} for i in range(3)],
            "detector": {"model": "none", "batch": {"max_batch": max_batch, "max_wait_ms": 5}},
            "redis": {"url": redis_server.url, "spool_path": str(tmp_path / "spool.sqlite")},
        }
    )
    pipe = Pipeline(cfg, detector=NullDetector(), var_dir=tmp_path).start()
    assert pipe.wait(60)
    pipe.join(10)
    client = redis.Redis.from_url(redis_server.url)
    dets = _stream_events(client, "detections")
    for i in range(3):
        assert [e.frame_seq for e in dets if e.camera_id == f"f{i}"] == list(range(demo_mp4.frames))
    if max_batch > 1:
        assert max(pipe.detect.batch_sizes) > 1


def test_redis_killed_mid_run_loses_nothing_and_keeps_order(demo_mp4, make_redis, tmp_path):
    """Redis dies (SIGKILL) while a camera runs and comes back empty: every event produced meanwhile reaches the
    stream after the restart, in production order (the spool holds them during the outage)."""
    server = make_redis(persistence=True)
    cfg = parse_config(
        {
            "cameras": [{"id": "c", "source": str(demo_mp4.path), "realtime": True, "queue_policy": "block"}],
            "detector": {"model": "none"},
            "redis": {
                "url": server.url,
                "spool_path": str(tmp_path / "spool.sqlite"),
                "socket_timeout_s": 0.5,
                "connect_timeout_s": 0.5,
                "retry_initial_s": 0.1,
                "retry_max_s": 0.5,
            },
        }
    )
    client = redis.Redis.from_url(server.url)
    pipe = Pipeline(cfg, detector=NullDetector(), var_dir=tmp_path).start()
    deadline = time.time() + 20
    while time.time() < deadline and client.xlen("vidpipe:stream:detections") < 10:
        time.sleep(0.02)
    server.kill()
    time.sleep(1.0)  # about 25 frames are produced while Redis is down
    status = pipe.publisher.status()
    assert status["connected"] is False and status["spooled"] > 0, status
    server.restart()
    assert pipe.wait(60)
    pipe.join(10)
    client = redis.Redis.from_url(server.url)
    seqs = [e.frame_seq for e in _stream_events(client, "detections")]
    assert seqs == list(range(demo_mp4.frames)), "events were lost, duplicated or reordered across the outage"
