"""Per-event cost of the sink split: the delivery stage + Redis transport against the publisher it replaced.

Both run in the same process against the same local redis-server, alternating, with the same realistic
``detections.frame`` events (~1 KB JSON). The old publisher is loaded from git (``--old-rev``, default the
commit before the split), so the peer is the real old code, not a re-implementation.

Measured per event:
  * caller: time inside ``submit``/``publish_event`` (what a camera thread pays);
  * end to end: first submit until the last event is in the stream, divided by the event count.
And, with a real Mosquitto: the same for the MQTT sink (QoS 1, waiting for every PUBACK).

    .venv/bin/python benchmarks/bench_sinks.py [--events 5000] [--reps 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from benchmarks.bench_publisher import make_event, wait  # noqa: E402
from pipeline.config.schema import RedisConfig  # noqa: E402
from pipeline.deliver.publisher import Publisher  # noqa: E402
from pipeline.deliver.redis_server import LocalRedis  # noqa: E402

STREAM = "vidpipe:stream:detections"
OLD_REV = "48bc4a7"  # main before the sinks split


def load_old_publisher(rev: str) -> ModuleType:
    src = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:pipeline/publisher.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    spec = importlib.util.spec_from_loader("old_publisher", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    exec(compile(src, f"{rev}:pipeline/publisher.py", "exec"), module.__dict__)  # noqa: S102
    return module


def run_once(make: Any, events: list, client: redis.Redis | None, done: Any) -> tuple[float, float]:
    stage = make()
    stage.start()
    if client is not None:
        client.delete(STREAM)
    submit = getattr(stage, "publish_event", None) or stage.submit
    in_caller = 0.0
    t0 = time.perf_counter()
    for e in events:
        t = time.perf_counter()
        submit(e)
        in_caller += time.perf_counter() - t
    wait(done)
    total = time.perf_counter() - t0
    stage.stop()
    stage.join(30)
    n = len(events)
    return in_caller / n * 1e6, total / n * 1e6


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=5000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--old-rev", default=OLD_REV)
    args = ap.parse_args()
    n = args.events
    events = [make_event(i) for i in range(n)]
    old = load_old_publisher(args.old_rev)
    results: dict[str, list[tuple[float, float]]] = {
        "old publisher (Redis)": [],
        "delivery stage + Redis": [],
    }
    with tempfile.TemporaryDirectory() as tmp, LocalRedis(data_dir=f"{tmp}/redis") as server:
        client = redis.Redis.from_url(server.url)
        cfg = RedisConfig(spool_path=f"{tmp}/spool.sqlite", queue_size=n + 1, stream_maxlen=10 * n)

        def in_stream() -> bool:
            return client.xlen(STREAM) == n

        makers = {
            "old publisher (Redis)": lambda: old.Publisher(cfg, url=server.url),
            "delivery stage + Redis": lambda: Publisher(cfg, url=server.url),
        }
        for rep in range(args.reps):  # alternate which goes first: the second run of a pair is often faster
            order = list(makers) if rep % 2 == 0 else list(reversed(makers))
            for name in order:
                results[name].append(run_once(makers[name], events, client, in_stream))
        mqtt_row = bench_mqtt(events, tmp, args.reps)
        if mqtt_row:
            results["delivery stage + MQTT (Mosquitto, QoS 1)"] = mqtt_row

    base = statistics.median(t for _, t in results["old publisher (Redis)"])
    print(
        f"\n{n} detections.frame events of {len(events[0].to_json())} B JSON, {args.reps} reps each, median\n"
    )
    print("| sink | in caller µs/event | end to end µs/event (min–max) | end to end vs old publisher |")
    print("|---|---:|---:|---:|")
    for name, rows in results.items():
        caller = statistics.median(c for c, _ in rows)
        totals = [t for _, t in rows]
        total = statistics.median(totals)
        print(
            f"| {name} | {caller:.1f} | {total:.1f} ({min(totals):.0f}–{max(totals):.0f}) | {total / base:.2f}× |"
        )
    return 0


def bench_mqtt(events: list, tmp: str, reps: int) -> list[tuple[float, float]]:
    """The MQTT sink into a real Mosquitto, a subscriber counting arrivals (skipped when Mosquitto is absent)."""
    if not Path("/usr/sbin/mosquitto").exists():
        return []
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from pipeline.config.sinks import MqttConfig
    from pipeline.deliver.delivery import DeliveryStage
    from pipeline.deliver.mqtt import MqttTransport
    from tests.support.mqtt_fixtures import LocalMosquitto

    broker = LocalMosquitto(Path(tmp)).start()
    got = {"n": 0}
    lock = threading.Lock()
    subscribed = threading.Event()

    def on_message(*_: Any) -> None:
        with lock:
            got["n"] += 1

    sub = mqtt.Client(CallbackAPIVersion.VERSION2)
    sub.on_message = on_message
    sub.on_subscribe = lambda *_: subscribed.set()
    sub.connect("127.0.0.1", broker.port)
    sub.subscribe("vidpipe/+/detections/#", qos=1)
    sub.loop_start()
    subscribed.wait(10)
    rows = []
    try:
        for i in range(reps):
            cfg = MqttConfig(
                url=broker.url(), spool_path=f"{tmp}/mqtt-{i}.sqlite", queue_size=len(events) + 1
            )
            got["n"] = 0
            rows.append(
                run_once(
                    lambda cfg=cfg: DeliveryStage("sink:mqtt", MqttTransport(cfg), cfg),
                    events,
                    None,
                    lambda: got["n"] >= len(events),
                )
            )
    finally:
        sub.loop_stop()
        broker.stop()
    return rows


if __name__ == "__main__":
    sys.exit(main())
