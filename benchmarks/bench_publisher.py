"""Publisher throughput: live to Redis, into the spool during an outage, and replay after it.

Events are realistic ``detections.frame`` events (8 detections, ~1 KB of JSON). Redis is a local
redis-server (no persistence) on 127.0.0.1 started by the benchmark; the spool is SQLite in a temp dir.

    .venv/bin/python benchmarks/bench_publisher.py [--events 20000] [--batch 256]

Prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis  # noqa: E402

from pipeline.config.schema import RedisConfig  # noqa: E402
from pipeline.core.events import Event  # noqa: E402
from pipeline.deliver.publisher import Publisher  # noqa: E402
from pipeline.deliver.redis_server import LocalRedis, free_port  # noqa: E402
from pipeline.deliver.spool import Spool  # noqa: E402

STREAM = "vidpipe:stream:detections"


def make_event(i: int) -> Event:
    dets = [
        {"label": "person", "class_id": 0, "score": 0.8123, "box": [10.0 + k, 20.0, 110.5 + k, 300.2]}
        for k in range(8)
    ]
    data = {"detector": "yolov3-tiny", "inference_ms": 21.5, "width": 1280, "height": 720, "detections": dets}
    return Event(type="detections.frame", camera_id=f"cam{i % 4}", frame_seq=i, data=data)


def wait(cond, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark condition not reached")
        time.sleep(0.005)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    n = args.events
    events = [make_event(i) for i in range(n)]
    size = len(events[0].to_json())
    rows: list[tuple[str, str, str]] = []

    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        cfg = RedisConfig(
            spool_path=f"{tmp}/spool.sqlite",
            batch_size=args.batch,
            queue_size=n + 1,
            retry_initial_s=0.05,
            retry_max_s=0.1,
            stream_maxlen=10 * n,
        )
        url = f"redis://127.0.0.1:{port}/0"
        with LocalRedis(data_dir=f"{tmp}/redis", port=port) as server:
            client = redis.Redis.from_url(server.url)

            # 1. live: Redis up, spool empty
            pub = Publisher(cfg, url=url)
            pub.start()
            t0 = time.perf_counter()
            for e in events:
                pub.publish_event(e)
            wait(lambda: client.xlen(STREAM) == n)
            live_s = time.perf_counter() - t0
            p50, p95 = pub.metrics.latency_percentiles()
            rows.append(
                (
                    "live publish (XADD + PUBLISH, pipelined)",
                    f"{n / live_s:,.0f} events/s",
                    f"per-event Redis time p50 {p50 * 1000:.1f} µs, p95 {p95 * 1000:.1f} µs",
                )
            )

            # 2. outage: Redis killed, everything goes to the spool
            server.kill()
            t0 = time.perf_counter()
            for e in events:
                pub.publish_event(e)
            wait(lambda: pub.spool.count() == n)
            spool_s = time.perf_counter() - t0
            rows.append(
                (
                    "outage: events into the SQLite spool",
                    f"{n / spool_s:,.0f} events/s",
                    f"{Path(cfg.spool_path).stat().st_size / 1e6:.1f} MB spool for {n} events",
                )
            )

            # 3. recovery: restart Redis, the spool is replayed in order
            t0 = time.perf_counter()
            server.restart()
            restart_s = time.perf_counter() - t0
            wait(lambda: pub.spool.count() == 0 and client.xlen(STREAM) == n)
            replay_s = time.perf_counter() - t0 - restart_s
            rows.append(
                (
                    "recovery: spool replay to the stream",
                    f"{n / replay_s:,.0f} events/s",
                    f"{n} events in {replay_s:.2f} s after redis-server was back ({restart_s:.2f} s)",
                )
            )
            pub.stop()
            pub.join(30)

        # 4. raw spool append/peek/ack cost, batch of args.batch
        with Spool(f"{tmp}/raw.sqlite", max_events=n) as spool:
            recs = [pub.transport.record(e) for e in events]
            t0 = time.perf_counter()
            for i in range(0, n, args.batch):
                spool.append_many(recs[i : i + args.batch])
            append_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            while batch := spool.peek_batch(args.batch):
                spool.ack(batch[-1].id)
            drain_s = time.perf_counter() - t0
        rows.append((f"Spool.append_many (batches of {args.batch})", f"{n / append_s:,.0f} events/s", ""))
        rows.append((f"Spool.peek_batch + ack (batches of {args.batch})", f"{n / drain_s:,.0f} events/s", ""))

    print(
        f"\nPublisher, {n} detections.frame events of {size} B JSON, batch {args.batch}, local redis-server\n"
    )
    print("| path | throughput | notes |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
