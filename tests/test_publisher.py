"""Publisher, spool and LocalRedis against a real redis-server (killed, hung and restarted for real)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from pipeline.config.schema import RedisConfig
from pipeline.core.events import Event
from pipeline.core.queues import BoundedQueue
from pipeline.deliver.publisher import Publisher
from pipeline.deliver.redis_server import LocalRedis, RedisServerError, free_port
from pipeline.deliver.redis_transport import PublisherError, make_client, probe_redis
from pipeline.deliver.spool import Spool, SpoolError, SpoolRecord

STREAM = "vidpipe:stream:detections"


def ev(i: int, camera: str = "cam1", type_: str = "detections.frame") -> Event:
    return Event(type=type_, camera_id=camera, frame_seq=i, data={"i": i})


def fast_config(tmp_path: Path, **kw) -> RedisConfig:
    base = dict(
        spool_path=str(tmp_path / "spool.sqlite"),
        retry_initial_s=0.05,
        retry_max_s=0.2,
        socket_timeout_s=0.5,
        connect_timeout_s=0.5,
        batch_size=64,
    )
    base.update(kw)
    return RedisConfig(**base)


def stream_seqs(client: redis.Redis, stream: str = STREAM) -> list[int]:
    return [json.loads(fields["event"])["frame_seq"] for _, fields in client.xrange(stream)]


def wait_for(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def finish(pub: Publisher) -> None:
    pub.stop()
    assert pub.join(15), "publisher did not stop"
    assert pub.state == "stopped", pub.last_error


def record(i: int) -> SpoolRecord:
    e = ev(i)
    return SpoolRecord(STREAM, "vidpipe:detections:cam1", e.event_id, e.type, e.camera_id, e.to_json())


# -- LocalRedis -----------------------------------------------------------------------------------------


def test_local_redis_kill_and_restart_keep_port_and_persisted_data(make_redis):
    server = make_redis(persistence=True)
    client = redis.Redis.from_url(server.url, socket_timeout=2)
    client.set("k", "v")
    port = server.port
    server.kill()
    assert not server.running
    with pytest.raises(redis.ConnectionError):
        client.ping()
    server.restart()
    assert server.port == port
    assert client.get("k") == b"v"


def test_local_redis_missing_binary_says_how_to_install(tmp_path):
    with pytest.raises(RedisServerError, match="apt-get install redis-server"):
        LocalRedis(data_dir=tmp_path, binary=str(tmp_path / "no-such-redis-server"))


def test_local_redis_port_taken_is_a_clear_error(redis_server, tmp_path):
    with pytest.raises(RedisServerError, match="port in use"):
        LocalRedis(data_dir=tmp_path, port=redis_server.port).start()


# -- publishing -----------------------------------------------------------------------------------------


def test_subscriber_receives_events_on_family_and_camera_channels(redis_server, redis_client, tmp_path):
    sub = redis_client.pubsub()
    sub.psubscribe("vidpipe:detections:*")
    sub.subscribe("vidpipe:status:cam2")
    for _ in range(2):
        assert sub.get_message(timeout=2)["type"] in ("psubscribe", "subscribe")
    pub = Publisher(fast_config(tmp_path), url=redis_server.url)
    pub.start()
    sent = [ev(1, "cam1"), ev(2, "cam2"), ev(3, "cam2", "status.camera")]
    for e in sent:
        pub.publish_event(e)
    got = []
    deadline = time.monotonic() + 5
    while len(got) < 3 and time.monotonic() < deadline:
        msg = sub.get_message(timeout=0.5)
        if msg and msg["type"] in ("pmessage", "message"):
            got.append((msg["channel"], Event.from_json(msg["data"])))
    finish(pub)
    assert [c for c, _ in got] == [
        "vidpipe:detections:cam1",
        "vidpipe:detections:cam2",
        "vidpipe:status:cam2",
    ]
    assert [e for _, e in got] == sent


def test_streams_keep_production_order_per_family_with_filter_fields(redis_server, redis_client, tmp_path):
    pub = Publisher(fast_config(tmp_path, stream_maxlen=10_000), url=redis_server.url)
    pub.start()
    for i in range(300):
        pub.publish_event(ev(i, camera=f"cam{i % 3}"))
        if i % 50 == 0:
            pub.publish_event(ev(i, camera="", type_="status.camera"))
    finish(pub)
    assert stream_seqs(redis_client) == list(range(300))
    assert stream_seqs(redis_client, "vidpipe:stream:status") == list(range(0, 300, 50))
    _, fields = redis_client.xrange(STREAM, count=2)[1]
    assert fields["type"] == "detections.frame" and fields["camera"] == "cam1"
    assert json.loads(fields["event"])["event_id"] == fields["event_id"]
    assert pub.metrics_registry.counters["publisher_published_total"] == 306
    assert pub.spool.count() == 0


def test_redis_killed_mid_run_then_restarted_every_event_arrives_in_order_once(make_redis, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="pipeline.deliver.publisher")
    server = make_redis(persistence=True)  # so events sent before the kill are still there afterwards
    client = redis.Redis.from_url(server.url, decode_responses=True, socket_timeout=5)
    pub = Publisher(fast_config(tmp_path), url=server.url)
    pub.start()
    n = 0

    def produce(count: int) -> None:
        nonlocal n
        for _ in range(count):
            pub.publish_event(ev(n))
            n += 1
            time.sleep(0.0005)

    produce(200)
    wait_for(lambda: client.xlen(STREAM) == 200, what="first 200 events in the stream")
    server.kill()
    produce(300)  # Redis is dead: these must be spooled
    wait_for(lambda: pub.spool.count() > 0 and not pub.connected, what="publisher to notice the outage")
    produce(100)
    server.restart()
    produce(200)
    finish(pub)
    assert stream_seqs(client) == list(range(n))  # none lost, none duplicated, production order
    counters = pub.metrics_registry.counters
    assert counters["publisher_spooled_total"] >= 300
    assert counters["publisher_outages_total"] == 1
    outage_logs = [r for r in caplog.records if r.levelno == logging.WARNING and "unreachable" in r.message]
    assert len(outage_logs) == 1, [r.message for r in caplog.records]
    assert any("is back" in r.message for r in caplog.records)


def test_hung_redis_times_out_spools_and_recovers(make_redis, tmp_path):
    server = make_redis()
    client = redis.Redis.from_url(server.url, decode_responses=True, socket_timeout=5)
    pub = Publisher(fast_config(tmp_path, socket_timeout_s=0.3), url=server.url)
    pub.start()
    pub.publish_event(ev(0))
    wait_for(lambda: client.xlen(STREAM) == 1, what="first event")
    server.pause()  # SIGSTOP: TCP still accepts, nothing answers
    try:
        for i in range(1, 50):
            pub.publish_event(ev(i))
        wait_for(lambda: not pub.connected, timeout=5, what="the hang to be detected")
        assert "did not answer" in pub.status()["error"]
        assert pub.queue.qsize() < 50  # the publisher is not stuck on the hung socket
    finally:
        server.resume()
    finish(pub)
    assert stream_seqs(client) == list(range(50))


def test_in_flight_batch_that_partly_landed_is_not_duplicated(redis_server, redis_client, tmp_path):
    pub = Publisher(fast_config(tmp_path), url=redis_server.url)
    records = [record(i) for i in range(5)]
    for r in records[:3]:  # a batch that reached Redis only in part before the connection broke
        redis_client.xadd(STREAM, {"event": r.event_json, "event_id": r.event_id})
    pub._outage(redis.ConnectionError("connection reset"), records)
    pub._spool(records)
    pub.start()
    finish(pub)
    assert stream_seqs(redis_client) == [0, 1, 2, 3, 4]
    assert pub.metrics_registry.counters["publisher_duplicates_skipped_total"] == 3


# -- spool ----------------------------------------------------------------------------------------------


def test_spool_overflow_drops_oldest_and_persists_the_count(tmp_path):
    path = tmp_path / "s.sqlite"
    with Spool(path, max_events=5) as spool:
        assert spool.append_many([record(i) for i in range(4)]) == 0
        assert spool.append_many([record(i) for i in range(4, 8)]) == 3
        assert spool.count() == 5
        assert spool.dropped == 3
        batch = spool.peek_batch(10)
        assert [json.loads(b.event_json)["frame_seq"] for b in batch] == [3, 4, 5, 6, 7]
        assert spool.ack(batch[1].id) == 2
        assert spool.count() == 3
    with Spool(path, max_events=5) as spool:
        assert spool.dropped == 3
        assert [json.loads(b.event_json)["frame_seq"] for b in spool.peek_batch(10)] == [5, 6, 7]


def test_outage_longer_than_spool_keeps_newest_events_and_counts_drops(tmp_path):
    port = free_port()
    cfg = fast_config(tmp_path, spool_max_events=10)
    pub = Publisher(cfg, url=f"redis://127.0.0.1:{port}/0")
    pub.start()
    for i in range(25):
        pub.publish_event(ev(i))
    wait_for(lambda: pub.metrics_registry.counters["publisher_spooled_total"] == 25, what="25 spooled")
    assert pub.spool.count() == 10
    assert pub.metrics_registry.counters["publisher_spool_dropped_total"] == 15
    assert pub.metrics.total_drops() == 15
    with LocalRedis(data_dir=tmp_path / "r", port=port) as server:
        finish(pub)
        client = redis.Redis.from_url(server.url, decode_responses=True)
        assert stream_seqs(client) == list(range(15, 25))


def test_spool_survives_publisher_restart_and_pubsub_is_not_replayed(make_redis, tmp_path):
    port = free_port()
    cfg = fast_config(tmp_path)
    first = Publisher(cfg, url=f"redis://127.0.0.1:{port}/0")  # nothing listens there yet
    first.start()
    for i in range(40):
        first.publish_event(ev(i))
    finish(first)
    with Spool(cfg.spool_path) as spool:  # the publisher closed it, so it opens again here
        assert spool.count() == 40

    server = make_redis(port=port)
    client = redis.Redis.from_url(server.url, decode_responses=True)
    sub = client.pubsub()
    sub.psubscribe("vidpipe:*")
    assert sub.get_message(timeout=2)["type"] == "psubscribe"
    second = Publisher(cfg, url=server.url)
    second.start()
    second.publish_event(ev(40))
    finish(second)
    assert stream_seqs(client) == list(range(41))
    live = [m for m in iter(lambda: sub.get_message(timeout=0.3), None) if m["type"] == "pmessage"]
    assert [json.loads(m["data"])["frame_seq"] for m in live] == [40]


def test_events_spooled_before_a_crash_are_replayed_on_next_start(redis_server, redis_client, tmp_path):
    path = tmp_path / "crash.sqlite"
    code = f"""
import os, signal
from pipeline.deliver.spool import Spool
from tests.test_publisher import record
spool = Spool({str(path)!r})
for i in range(30):
    spool.append(record(i))
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1], timeout=60)
    assert proc.returncode == -9
    pub = Publisher(fast_config(tmp_path, spool_path=str(path)), url=redis_server.url)
    pub.start()
    finish(pub)
    assert stream_seqs(redis_client) == list(range(30))


def test_spool_file_in_use_by_another_publisher_is_refused(tmp_path):
    with Spool(tmp_path / "s.sqlite"), pytest.raises(SpoolError, match="in use by another process"):
        Spool(tmp_path / "s.sqlite")


def test_corrupt_spool_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(SpoolError, match=r"bad\.sqlite.*redis\.spool_path"):
        Spool(bad)


# -- errors, shutdown -----------------------------------------------------------------------------------


def test_wrong_password_is_a_clear_logged_error_and_events_are_spooled(make_redis, tmp_path, caplog):
    server = make_redis(password="right-secret")
    bad_url = f"redis://:wrong-secret@127.0.0.1:{server.port}/0"
    reason = probe_redis(bad_url)
    assert reason is not None and "refused the credentials in redis.url" in reason
    assert "wrong-secret" not in reason
    pub = Publisher(fast_config(tmp_path), url=bad_url)
    pub.start()
    for i in range(5):
        pub.publish_event(ev(i))
    wait_for(lambda: pub.spool.count() == 5, what="events spooled")
    assert pub.is_alive() and not pub.connected
    finish(pub)
    with Spool(tmp_path / "spool.sqlite") as spool:
        assert spool.count() == 5
    text = "\n".join(r.message for r in caplog.records)
    assert "credentials" in text and "wrong-secret" not in text


def test_malformed_url_and_dropping_queue_are_rejected_with_the_key_named(tmp_path):
    with pytest.raises(PublisherError, match="redis.url"):
        Publisher(fast_config(tmp_path), url="http://127.0.0.1:6379")
    tls = make_client("rediss://:pw@127.0.0.1:1/0", fast_config(tmp_path))
    assert tls.connection_pool.connection_class is redis.SSLConnection  # TLS comes from the URL scheme
    with pytest.raises(ValueError, match="policy 'block'"):
        Publisher(fast_config(tmp_path), BoundedQueue(10, "latest", "events"), url="redis://127.0.0.1:1/0")


def test_shutdown_flushes_everything_queued(redis_server, redis_client, tmp_path):
    queue: BoundedQueue[Event] = BoundedQueue(5000, "block", "events")
    pub = Publisher(fast_config(tmp_path), queue, url=redis_server.url)
    for i in range(2000):
        pub.publish_event(ev(i))  # queued before the stage even runs
    pub.start()
    finish(pub)  # stop() straight away: the queue must still be drained
    assert stream_seqs(redis_client) == list(range(2000))


def test_publish_event_spools_directly_when_the_queue_stays_full(redis_server, redis_client, tmp_path):
    queue: BoundedQueue[Event] = BoundedQueue(2, "block", "events")
    pub = Publisher(fast_config(tmp_path, enqueue_timeout_s=0.05), queue, url=redis_server.url)
    t0 = time.monotonic()
    for i in range(5):
        pub.publish_event(ev(i))
    assert time.monotonic() - t0 < 2  # the caller was never stuck
    assert pub.spool.count() == 3
    pub.start()
    finish(pub)
    assert sorted(stream_seqs(redis_client)) == list(range(5))


def test_the_back_message_counts_the_events_it_is_about_to_replay(make_redis, tmp_path, caplog):
    """It used to count after the first batch was acknowledged: "replaying 0 spooled events" just after
    replaying them."""
    caplog.set_level(logging.INFO, logger="pipeline.deliver.publisher")
    server = make_redis()
    pub = Publisher(fast_config(tmp_path), url=server.url)
    pub.start()
    server.kill()
    for i in range(10):  # fewer than one batch (64)
        pub.publish_event(ev(i))
    wait_for(lambda: pub.spool.count() == 10 and not pub.connected, what="10 events spooled")
    server.restart()
    wait_for(lambda: pub.connected and pub.spool.count() == 0, what="the replay")
    finish(pub)
    back = [r.message for r in caplog.records if "is back after" in r.message]
    assert len(back) == 1 and back[0].endswith("replaying 10 spooled events"), back
