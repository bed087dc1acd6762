"""``run`` with ``executor: ray`` (or ``--ray ADDRESS``): the driver's side of a sharded run.

The driver holds no camera: it places shards, supervises them, prints the merged status line and serves
the merged Prometheus metrics. ``--print-events`` reads the events back from Redis pub/sub (shards publish
there), since the shards' processes have no terminal. The web app needs an in-process Pipeline and is not
served in this mode.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.config.schema import PipelineConfig
from pipeline.core.exit_status import EXIT_CLUSTER_LOST, EXIT_OK, EXIT_STARTUP, EXIT_STOP_DEADLINE
from pipeline.run.status_line import print_status_lines

log = logging.getLogger("vidpipe")


def _print_events(url: str, prefix: str, stop: threading.Event) -> None:
    import redis

    client = redis.Redis.from_url(url, decode_responses=True)
    sub = client.pubsub(ignore_subscribe_messages=True)
    sub.psubscribe(f"{prefix}:*")
    try:
        while not stop.is_set():
            msg = sub.get_message(timeout=0.5)
            if msg and isinstance(msg.get("data"), str):
                print(msg["data"], flush=True)
    except redis.RedisError as exc:
        log.warning("--print-events: lost Redis (%s); events stay in the streams", exc)
    finally:
        sub.close()


def run_sharded(
    cfg: PipelineConfig,
    args: argparse.Namespace,
    var_dir: Path,
    on_connected: Callable[[], None] | None = None,
) -> int:
    """Run every camera as shards on Ray until the files end, ``--duration`` passes or a signal comes.

    on_connected: called once Ray answered, before this installs its own signal handlers."""
    from pipeline.scale.executor import RayExecutor, connect

    if cfg.web.enabled and not getattr(args, "no_web", False):
        log.warning("the web app is not served with executor: ray (it needs an in-process pipeline)")
    assert cfg.redis.url is not None  # the caller started a local redis-server when none was configured
    try:
        connect(cfg.ray.address)
    except Exception as exc:  # noqa: BLE001 - a start error is reported, not dumped
        # exit 2 (could not start), not 1: docs/running.md keeps 1 for "every camera failed"
        log.error("cannot reach Ray at %r (ray.address / --ray): %s", cfg.ray.address, exc)
        return EXIT_STARTUP
    if on_connected is not None:
        on_connected()
    executor = RayExecutor(cfg, var_dir)
    try:
        executor.start()
    except ValueError as exc:  # e.g. doors that do not fit one shard
        log.error("cannot place the cameras: %s", exc)
        return EXIT_STARTUP
    print(
        f"executor ray: {len(executor.shards)} shard(s) for {len(cfg.cameras)} camera(s); shards keep their "
        f"spools under {executor.shards_dir}",
        file=sys.stderr,
        flush=True,
    )
    stop = threading.Event()
    threads: list[threading.Thread] = []
    if args.print_events:
        threads.append(
            threading.Thread(target=_print_events, args=(cfg.redis.url, cfg.redis.prefix, stop), daemon=True)
        )
    threads.append(
        threading.Thread(
            target=print_status_lines, args=(executor, cfg.metrics.status_interval_s, stop), daemon=True
        )
    )
    metrics_server = None
    if cfg.metrics.http_port is not None:
        from pipeline.serve.metrics_http import MetricsServer

        metrics_server = MetricsServer(
            executor.metrics, cfg.metrics.http_host, cfg.metrics.http_port, executor.health
        ).start()
        print(f"metrics: http://{cfg.metrics.http_host}:{metrics_server.port}/metrics", file=sys.stderr)

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("%s: stopping every shard", signal.Signals(signum).name)
        executor.stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    for t in threads:
        t.start()
    try:
        if not executor.wait(args.duration) and executor.lost is None:
            executor.stop()
        if executor.lost is not None:  # no Ray to stop or join the shards through
            print(f"error: {executor.lost}; shards keep undelivered events in their spools", file=sys.stderr)
            return EXIT_CLUSTER_LOST
        ok = executor.join(timeout=cfg.redis.flush_timeout_s + 10)
    finally:
        stop.set()
        for t in threads:
            t.join(2.0)
        if metrics_server:
            metrics_server.stop()
    print(f"shards stopped; placement: {executor.placement()}", file=sys.stderr)
    # a shard that did not drain in time is a stop that did not finish (3), not "every camera failed" (1)
    return EXIT_OK if ok else EXIT_STOP_DEADLINE
