"""Sinks against real servers: Mosquitto (killed for a real 60 s), redis-server, an HTTP receiver; a blocked
sink beside them. Delivery (queue, spool, retry, order) is shared; transports differ."""

from __future__ import annotations

import http.server
import json
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import redis
from paho.mqtt.enums import CallbackAPIVersion

from pipeline.config.schema import ConfigError, parse_config
from pipeline.config.sinks import MqttConfig, WebhookConfig
from pipeline.core.events import Event
from pipeline.deliver.delivery import DeliveryStage
from pipeline.deliver.mqtt import MqttTransport, topic_for
from pipeline.deliver.spool import Spool
from pipeline.deliver.webhook import WebhookTransport
from pipeline.detect.detectors.base import NullDetector
from pipeline.run.runner import Pipeline


class MqttSubscriber:
    """A real subscriber with a persistent session (clean_session=False, QoS 1), as a Home Assistant would
    keep: the broker queues messages for it while it is away, and it reconnects on its own."""

    def __init__(self, port: int, topic: str = "vidpipe/#", auth: tuple[str, str] | None = None) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"test-sub-{port}-{topic}", clean_session=False
        )
        self.client.reconnect_delay_set(0.1, 0.5)
        if auth:
            self.client.username_pw_set(*auth)
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()
        assert self.subscribed.wait(10), "subscription not confirmed"

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))

    def events(self) -> list[tuple[str, Event]]:
        with self.lock:
            msgs = list(self.messages)
        return [(t, Event.from_json(p)) for t, p, _ in msgs if not t.endswith("/available")]

    def availability(self) -> list[str]:
        with self.lock:
            return [p.decode() for t, p, _ in self.messages if t.endswith("/available")]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def first_occurrences(events: list[Event]) -> list[Event]:
    seen: set[str] = set()
    out = []
    for e in events:
        if e.event_id not in seen:
            seen.add(e.event_id)
            out.append(e)
    return out


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def stream_events(client: redis.Redis, family: str) -> list[Event]:
    return [Event.from_json(f[b"event"]) for _, f in client.xrange(f"vidpipe:stream:{family}")]


def base_cfg(redis_url: str, tmp_path: Path, cameras: list[dict], sinks: dict) -> Any:
    return parse_config(
        {
            "cameras": cameras,
            "detector": {"model": "none"},
            "redis": {"url": redis_url, "spool_path": str(tmp_path / "spool.sqlite")},
            "sinks": sinks,
        }
    )


def fast_mqtt(url: str, tmp_path: Path, **kw: Any) -> dict:
    return {
        "url": url,
        "spool_path": str(tmp_path / "spool-mqtt.sqlite"),
        "retry_initial_s": 0.1,
        "retry_max_s": 1.0,
        "connect_timeout_s": 1.0,
        "publish_timeout_s": 2.0,
        **kw,
    }


# -- MQTT beside Redis -------------------------------------------------------------------------------------


def test_mqtt_subscriber_and_redis_stream_reader_get_the_same_events(
    demo_mp4, redis_server, mosquitto, tmp_path
):
    sub = MqttSubscriber(mosquitto.port)
    cameras = [{"id": f"cam{i}", "source": str(demo_mp4.path)} for i in range(2)]
    cfg = base_cfg(redis_server.url, tmp_path, cameras, {"mqtt": fast_mqtt(mosquitto.url(), tmp_path)})
    pipe = Pipeline(cfg, detector=NullDetector(), var_dir=tmp_path).start()
    assert pipe.wait(60)
    pipe.join(10)
    client = redis.Redis.from_url(redis_server.url)
    from_redis = stream_events(client, "detections") + stream_events(client, "status")
    assert len([e for e in from_redis if e.type == "detections.frame"]) == 2 * demo_mp4.frames
    wait_for(lambda: len(sub.events()) >= len(from_redis), 10, "MQTT messages")
    time.sleep(0.3)  # nothing more should come
    got = sub.events()
    sub.close()
    assert len(got) == len(from_redis)  # no duplicates on a healthy broker
    by_id = {e.event_id: e for _, e in got}
    assert by_id.keys() == {e.event_id for e in from_redis}
    assert all(by_id[e.event_id] == e for e in from_redis)  # the same JSON, field for field
    for topic, e in got:
        assert topic == topic_for("vidpipe", e) == f"vidpipe/{e.camera_id}/{e.type.replace('.', '/')}"
    for cam in ("cam0", "cam1"):
        seqs = [e.frame_seq for t, e in got if t == f"vidpipe/{cam}/detections/frame"]
        assert seqs == list(range(demo_mp4.frames))  # per topic, production order
    assert sub.availability()[:1] == ["online"] and sub.availability()[-1] == "offline"
    assert pipe.sink_status()["sink:mqtt"]["spooled"] == 0


@pytest.mark.slow
def test_mosquitto_killed_for_60s_loses_no_event_and_redis_and_cameras_keep_going(
    demo_mp4, redis_server, mosquitto, tmp_path, caplog
):
    """A real 60 s broker outage (SIGKILL, then restart) under a live-paced camera: the MQTT subscriber ends up
    with every event the Redis stream has, in production order; Redis and the camera never noticed."""
    caplog.set_level(logging.INFO, logger="pipeline.deliver")
    sub = MqttSubscriber(mosquitto.port)
    time.sleep(1.5)  # let the broker save the subscriber's session (autosave every 1 s)
    cameras = [{"id": "door", "source": str(demo_mp4.path), "loop": True, "realtime": True}]
    sinks = {"mqtt": fast_mqtt(mosquitto.url(), tmp_path, notice_interval_s=20.0)}
    cfg = base_cfg(redis_server.url, tmp_path, cameras, sinks)
    client = redis.Redis.from_url(redis_server.url)
    pipe = Pipeline(cfg, detector=NullDetector(), var_dir=tmp_path).start()
    mqtt_stage = pipe.deliveries[1]
    wait_for(lambda: len(sub.events()) >= 50, 20, "first MQTT events")
    mosquitto.kill()
    killed_at = time.monotonic()
    xlen_at_kill = client.xlen("vidpipe:stream:detections")
    time.sleep(60.0)
    during = client.xlen("vidpipe:stream:detections") - xlen_at_kill
    assert not mqtt_stage.connected and mqtt_stage.spool.count() > 0
    mosquitto.restart()
    outage_s = time.monotonic() - killed_at
    wait_for(lambda: mqtt_stage.connected and mqtt_stage.spool.count() == 0, 30, "the MQTT backlog to drain")
    time.sleep(1.0)
    pipe.stop()
    assert pipe.wait(30)
    pipe.join(10)
    # Redis and the camera were not held up: the stream grew at the camera's 25 fps throughout the outage.
    assert during >= 0.9 * 25 * 60, during
    from_redis = stream_events(client, "detections")
    wait_for(
        lambda: len(first_occurrences([e for _, e in sub.events()])) >= len(from_redis), 30, "all events"
    )
    got = [e for t, e in sub.events() if t.endswith("/detections/frame")]
    sub.close()
    unique = first_occurrences(got)
    assert [e.event_id for e in unique] == [e.event_id for e in from_redis]  # none lost, production order
    assert len(got) - len(unique) <= cfg.sinks.mqtt.batch_size  # at most a cut-off batch is re-sent
    notices = [r for r in caplog.records if "still spooling" in r.getMessage()]
    assert 2 <= len(notices) <= 4, (
        outage_s,
        [r.getMessage() for r in notices],
    )  # once every 20 s, not per event
    assert (
        sum(
            "unreachable" in r.getMessage() or "closed the connection" in r.getMessage()
            for r in caplog.records
            if r.levelno == logging.WARNING and "still" not in r.getMessage()
        )
        == 1
    )
    assert any("is back" in r.getMessage() for r in caplog.records)


def test_availability_is_retained_and_the_last_will_says_offline_when_the_process_dies(mosquitto, tmp_path):
    code = f"""
import os, signal
from pipeline.core.events import Event
from pipeline.config.sinks import MqttConfig
from pipeline.deliver.mqtt import MqttTransport
t = MqttTransport(MqttConfig(url={mosquitto.url()!r}))
t.send([t.record(Event(type="status.camera", camera_id="c"))], replay=False)
os.kill(os.getpid(), signal.SIGKILL)  # no clean disconnect: only the broker's last will can say offline
"""
    sub = MqttSubscriber(mosquitto.port)
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1], timeout=60)
    assert proc.returncode == -9
    wait_for(lambda: sub.availability()[-1:] == ["offline"], 10, "the last will")
    assert sub.availability() == ["online", "offline"] and len(sub.events()) == 1
    sub.close()
    late = MqttSubscriber(
        mosquitto.port, topic="vidpipe/available"
    )  # joins afterwards: gets the retained value
    wait_for(lambda: late.availability() == ["offline"], 5, "the retained availability")
    assert late.messages[0][2] is True  # flagged as retained
    late.close()


def test_hung_broker_times_out_spools_and_recovers_in_order(mosquitto, tmp_path):
    sub = MqttSubscriber(mosquitto.port)
    cfg = MqttConfig(**fast_mqtt(mosquitto.url(), tmp_path, publish_timeout_s=0.5, batch_size=10))
    stage = DeliveryStage("sink:mqtt", MqttTransport(cfg), cfg)
    stage.start()
    sent = [Event(type="tracks.update", camera_id="c", frame_seq=i) for i in range(60)]
    for e in sent[:10]:
        stage.submit(e)
    wait_for(lambda: len(sub.events()) == 10, 10, "first 10 events")
    mosquitto.pause()  # SIGSTOP: TCP still accepts, nothing answers
    try:
        for e in sent[10:40]:
            stage.submit(e)
        wait_for(lambda: not stage.connected, 10, "the hang to be noticed")
        assert "did not acknowledge" in (stage.error or "") or "did not answer" in (stage.error or "")
    finally:
        mosquitto.resume()
    for e in sent[40:]:
        stage.submit(e)
    wait_for(lambda: len(first_occurrences([e for _, e in sub.events()])) == 60, 20, "all 60 events")
    stage.stop()
    assert stage.join(15)
    sub.close()
    assert [e.frame_seq for e in first_occurrences([e for _, e in sub.events()])] == list(range(60))


def test_mqtt_wrong_password_is_a_clear_error_and_events_wait_in_the_spool(make_mosquitto, tmp_path, caplog):
    broker = make_mosquitto(users={"vidpipe": "right-secret"})
    cfg = MqttConfig(**fast_mqtt(broker.url("vidpipe", "wrong-secret"), tmp_path))
    stage = DeliveryStage("sink:mqtt", MqttTransport(cfg), cfg)
    stage.start()
    for i in range(5):
        stage.submit(Event(type="detections.frame", camera_id="c", frame_seq=i))
    wait_for(lambda: stage.spool.count() == 5, 10, "events spooled")
    assert "refused the credentials in sinks.mqtt.url" in (stage.error or "")
    stage.stop()
    assert stage.join(15)
    text = caplog.text
    assert "refused the credentials" in text and "wrong-secret" not in text and "***" in text


def test_mqtts_with_credentials_in_the_url_delivers_and_an_untrusted_certificate_is_an_outage(
    make_mosquitto, tmp_path
):
    broker = make_mosquitto(users={"vidpipe": "s3cret"}, tls=True)
    sub = MqttSubscriber(broker.port, auth=("vidpipe", "s3cret"))
    cfg = MqttConfig(
        **fast_mqtt(broker.url("vidpipe", "s3cret", tls=True), tmp_path), ca_file=str(broker.ca_file)
    )
    stage = DeliveryStage("sink:mqtt", MqttTransport(cfg), cfg)
    stage.start()
    sent = [Event(type="doors.decision", camera_id="door", frame_seq=i) for i in range(20)]
    for e in sent:
        stage.submit(e)
    wait_for(lambda: len(sub.events()) == 20, 15, "20 events over TLS")
    stage.stop()
    assert stage.join(15)
    sub.close()
    assert [e for _, e in sub.events()] == sent

    untrusted = MqttConfig(**fast_mqtt(broker.url("vidpipe", "s3cret", tls=True), tmp_path / "u"))
    stage = DeliveryStage("sink:mqtt", MqttTransport(untrusted), untrusted)  # system CAs: self-signed fails
    stage.start()
    stage.submit(sent[0])
    wait_for(lambda: stage.error is not None, 10, "the TLS failure")
    assert "CERTIFICATE_VERIFY_FAILED" in stage.error or "certificate verify failed" in stage.error
    assert stage.spool.count() == 1
    stage.stop()
    assert stage.join(15)


def test_a_spool_backlog_is_announced_at_start_and_replayed_first(mosquitto, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    cfg = MqttConfig(**fast_mqtt(mosquitto.url(), tmp_path))
    transport = MqttTransport(cfg)
    with Spool(cfg.spool_path) as spool:  # left by an earlier run that could not reach the broker
        spool.append_many(
            [transport.record(Event(type="tracks.new", camera_id="c", frame_seq=i)) for i in range(30)]
        )
    sub = MqttSubscriber(mosquitto.port)
    stage = DeliveryStage("sink:mqtt", transport, cfg)
    stage.start()
    stage.submit(Event(type="tracks.new", camera_id="c", frame_seq=30))
    wait_for(lambda: len(sub.events()) == 31, 10, "31 events")
    stage.stop()
    assert stage.join(15)
    sub.close()
    assert [e.frame_seq for _, e in sub.events()] == list(range(31))
    notice = [r.getMessage() for r in caplog.records if "from an earlier run" in r.getMessage()]
    assert len(notice) == 1 and "30 events" in notice[0] and cfg.spool_path in notice[0], notice


# -- a blocked or hung sink beside Redis ---------------------------------------------------------------------


class _HungServer:
    """Accepts TCP connections and never answers (a hung webhook receiver)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()


def test_blocked_sink_and_hung_webhook_stall_neither_cameras_nor_redis(demo_mp4, redis_server, tmp_path):
    """Before sinks had their own stages, the first call of a blocked callable held the camera thread forever."""
    release = threading.Event()
    seen_threads: set[str] = set()

    def blocked_sink(event: Event) -> None:
        seen_threads.add(threading.current_thread().name)
        release.wait(60)

    hung = _HungServer()
    cameras = [{"id": f"cam{i}", "source": str(demo_mp4.path)} for i in range(2)]
    hook = {
        "url": f"http://127.0.0.1:{hung.port}/hook",
        "timeout_s": 1.0,
        "flush_timeout_s": 1.0,
        "spool_path": str(tmp_path / "hook.sqlite"),
    }
    cfg = base_cfg(redis_server.url, tmp_path, cameras, {"webhooks": [hook]})
    client = redis.Redis.from_url(redis_server.url)
    pipe = Pipeline(cfg, detector=NullDetector(), var_dir=tmp_path, event_sinks=[blocked_sink]).start()
    try:
        wait_for(
            lambda: client.xlen("vidpipe:stream:detections") == 2 * demo_mp4.frames,
            30,
            "every frame in Redis",
        )
        assert all(pipe.decoders[c].state == "stopped" for c in ("cam0", "cam1"))  # cameras ran to the end
        hook_stage = next(d for d in pipe.deliveries if d.name == "sink:webhook-webhook")
        wait_for(lambda: not hook_stage.connected, 10, "the hung webhook to count as an outage")
        assert "did not answer" in (hook_stage.error or "")
    finally:
        release.set()
        hung.close()
    assert pipe.wait(60)
    pipe.join(10)
    assert seen_threads and not any(n.startswith(("decoder", "analytics", "detect")) for n in seen_threads), (
        seen_threads
    )
    with Spool(tmp_path / "hook.sqlite", key="sinks.webhooks[0].spool_path") as spool:
        assert spool.count() >= 2 * demo_mp4.frames  # the webhook's events wait for it on disk


# -- webhook -----------------------------------------------------------------------------------------------


def test_webhook_gets_json_batches_retries_503_and_keeps_order(tmp_path):
    received: list[dict] = []
    calls = {"n": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            calls["n"] += 1
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if calls["n"] <= 2:
                self.send_response(503)
                self.end_headers()
                return
            received.extend(json.loads(body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cfg = WebhookConfig(
            url=f"http://127.0.0.1:{server.server_address[1]}/events",
            spool_path=str(tmp_path / "hook.sqlite"),
            retry_initial_s=0.05,
            retry_max_s=0.2,
            batch_size=10,
        )
        stage = DeliveryStage("sink:webhook", WebhookTransport(cfg), cfg)
        stage.start()
        sent = [Event(type="faces.unknown", camera_id="door", frame_seq=i) for i in range(50)]
        for e in sent:
            stage.submit(e)
        wait_for(lambda: len(received) == 50, 15, "50 events at the receiver")
        stage.stop()
        assert stage.join(15)
    finally:
        server.shutdown()
    assert [Event.model_validate(e) for e in received] == sent
    assert stage.metrics_registry.counters["sink_webhook_webhook_outages_total"] == 1


# -- config ------------------------------------------------------------------------------------------------


def test_sink_config_errors_name_the_key(tmp_path):
    cams = [{"id": "c", "source": "a.mp4"}]
    with pytest.raises(ConfigError, match=r"sinks\.mqtt\.url.*mqtt://"):
        parse_config({"cameras": cams, "sinks": {"mqtt": {"url": "http://broker"}}})
    with pytest.raises(ConfigError, match=r"sinks\.mqtt\.qos"):
        parse_config({"cameras": cams, "sinks": {"mqtt": {"url": "mqtt://b", "qos": 3}}})
    with pytest.raises(ConfigError, match=r"name 'a' is used twice"):
        parse_config({"cameras": cams, "sinks": {"webhooks": [{"name": "a", "url": "http://x"}] * 2}})
    cfg = parse_config(
        {
            "cameras": cams,
            "redis": {"url": "redis://127.0.0.1:1/0", "spool_path": str(tmp_path / "s.sqlite")},
            "sinks": {"mqtt": {"url": "mqtt://b", "spool_path": str(tmp_path / "s.sqlite")}},
        }
    )
    with pytest.raises(ValueError, match=r"sinks\.mqtt\.spool_path .* is also redis\.spool_path"):
        Pipeline(cfg, detector=NullDetector(), var_dir=tmp_path)
    with Spool(tmp_path / "s.sqlite"):  # the Redis spool the failed start had opened was released again
        pass


def test_redis_restart_with_a_spool_backlog_says_how_many_events_wait(redis_server, tmp_path, caplog):
    """The defect: a restart with a spool backlog said nothing. Now one line says how many and where."""
    from pipeline.config.schema import RedisConfig
    from pipeline.deliver.publisher import Publisher

    cfg = RedisConfig(spool_path=str(tmp_path / "spool.sqlite"))
    first = Publisher(cfg, url="redis://127.0.0.1:1/0")  # nothing listens there: everything is spooled
    first.start()
    for i in range(12):
        first.submit(Event(type="detections.frame", camera_id="c", frame_seq=i))
    first.stop()
    assert first.join(15)
    caplog.clear()
    caplog.set_level(logging.INFO)
    second = Publisher(cfg, url=redis_server.url)
    second.start()
    second.stop()
    assert second.join(15)
    notice = [r.getMessage() for r in caplog.records if "from an earlier run" in r.getMessage()]
    assert len(notice) == 1 and "12 events" in notice[0] and "in order" in notice[0], notice
    client = redis.Redis.from_url(redis_server.url)
    assert [e.frame_seq for e in stream_events(client, "detections")] == list(range(12))


def test_cli_with_an_mqtt_sink_prints_delivers_and_keeps_its_spool_under_var_dir(
    demo_mp4, redis_server, make_mosquitto, tmp_path
):
    import yaml

    broker = make_mosquitto(users={"vidpipe": "top-secret"})
    sub = MqttSubscriber(broker.port, auth=("vidpipe", "top-secret"))
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(
        yaml.safe_dump(
            {
                "cameras": [{"id": "cli", "source": str(demo_mp4.path)}],
                "detector": {"model": "none"},
                "redis": {"url": redis_server.url, "spool_path": str(tmp_path / "spool.sqlite")},
                "sinks": {"mqtt": {"url": broker.url("vidpipe", "top-secret")}},
            }
        )
    )
    var_dir = tmp_path / "var"
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).parents[1] / "run_pipeline.py"), "--config", str(cfg_path),
         "--print-events", "--var-dir", str(var_dir)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = [Event.from_json(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    wait_for(lambda: len(sub.events()) >= len(printed), 10, "MQTT events")
    sub.close()
    assert {e.event_id for e in printed} == {e.event_id for _, e in sub.events()}
    assert len([e for e in printed if e.type == "detections.frame"]) == demo_mp4.frames
    assert "mosquitto_sub" in proc.stderr and "top-secret" not in proc.stderr + proc.stdout
    assert (var_dir / "spool-mqtt.sqlite").exists()  # --var-dir moved the default spool path


def test_a_pipeline_that_fails_to_build_releases_every_spool(tmp_path):
    """A camera whose analyzers cannot be built (a bad gallery ...) fails the Pipeline's construction after
    the sinks' spools were opened and locked: they must be released, or a retry in the same process (a shard,
    a test) finds its own spools "in use by another process"."""
    from pipeline.deliver.spool import Spool

    cfg = parse_config(
        {
            "cameras": [{"id": "a", "source": "/v/a.mp4"}],
            "detector": {"model": "none"},
            "redis": {"url": "redis://127.0.0.1:1", "spool_path": str(tmp_path / "spool.sqlite")},
            "sinks": {"webhooks": [{"name": "hook", "url": "http://127.0.0.1:1/"}]},
        }
    )

    def no_analyzers(camera_id: str) -> list:
        raise RuntimeError(f"camera {camera_id}: cannot build analyzers")

    with pytest.raises(RuntimeError, match="cannot build analyzers"):
        Pipeline(cfg, detector=NullDetector(), var_dir=tmp_path, analyzers_factory=no_analyzers)
    for path in [tmp_path / "spool.sqlite", tmp_path / "spool-webhook-hook.sqlite"]:
        Spool(path).close()  # not "in use by another process"
