"""Run the pipeline (the default command)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import ValidationError

from pipeline.cli.private_files import use_private_files
from pipeline.cli.stopping import (
    EXIT_ALL_CAMERAS_FAILED,
    EXIT_OK,
    EXIT_STARTUP,
    StopController,
    flush_std_streams,
)
from pipeline.config.paths import resolve_runtime_paths
from pipeline.config.profiles import PROFILES
from pipeline.config.schema import (
    CameraConfig,
    ConfigError,
    PipelineConfig,
    format_validation_error,
    load_config,
)
from pipeline.config.var_dir import RuntimePaths
from pipeline.core.events import Event
from pipeline.core.sources import redact_url
from pipeline.core.states import CameraStatus
from pipeline.deliver.redis_server import LocalRedis, RedisServerError
from pipeline.run.status_line import print_status_lines

log = logging.getLogger("vidpipe")

DEMO_SOURCE = "demo"

# Exit statuses: pipeline/cli/stopping.py and docs/running.md.


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/default.yaml", help="YAML config (default: %(default)s)")
    parser.add_argument("--source", help="run one camera on this URL/file instead of the config's cameras")
    parser.add_argument("--camera-id", default="cam0", help="camera id for --source (default: %(default)s)")
    parser.add_argument(
        "--record-source",
        help="with --source (the substream detection decodes): the camera's main stream, kept for clips and "
        "never decoded (cameras[].record_source; needs clips.enabled)",
    )
    parser.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        help="detection profile for every camera (cameras[].profile; replaces their detect settings): "
        "whole, street (1080p street: tiles), street-far (more tiles), door; see docs/regions.md",
    )
    parser.add_argument(
        "--print-events", action="store_true", help="echo every event as a JSON line on stdout"
    )
    parser.add_argument("--redis-url", help="override redis.url (default: config, else a local redis-server)")
    parser.add_argument("--model", help="override detector.model (a store name, an .onnx path, or 'none')")
    parser.add_argument(
        "--backend", choices=["onnxruntime", "torch", "tensorrt"], help="override detector.backend"
    )
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    parser.add_argument(
        "--var-dir", default="var", help="runtime data: spool, snapshots, demo clip, local redis"
    )
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--web-port", type=int, help="override web.port (0 = any free port)")
    parser.add_argument("--no-web", action="store_true", help="do not serve the web app")
    parser.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="executor ray: shard the cameras on Ray ('auto' joins a running cluster, 'local' starts one)",
    )


def _apply_overrides(cfg: PipelineConfig, args: argparse.Namespace) -> PipelineConfig:
    record = getattr(args, "record_source", None)
    if args.source:
        # the config's first camera lends its settings, not its streams
        base = cfg.cameras[0].model_dump(
            exclude={"id", "source", "record_source", "queue_policy", "loop", "realtime"}
        )
        data = {"id": args.camera_id, "source": args.source, **base}
        if record:
            data["record_source"] = record
        try:
            cfg.cameras = [CameraConfig.model_validate(data)]
        except ValidationError as err:
            raise ConfigError(format_validation_error(err, "--source/--record-source")) from None
    elif record:
        raise ConfigError("--record-source needs --source (in a config: cameras[].record_source)")
    if getattr(args, "profile", None):
        cfg.cameras = [
            CameraConfig.model_validate(cam.model_dump(exclude={"detect"}) | {"profile": args.profile})
            for cam in cfg.cameras
        ]
    if args.redis_url:
        cfg.redis.url = args.redis_url
    if args.model:
        cfg.detector.model = args.model
    if args.backend:
        cfg.detector.backend = args.backend
    if args.log_level:
        cfg.log_level = args.log_level
    if getattr(args, "ray", None):
        cfg.executor = "ray"
        cfg.ray.address = args.ray
    return cfg


def start_local_redis(data_dir: Path) -> LocalRedis:
    """A redis-server for this run, with a random password (any local process could otherwise forge or
    delete events). The password is written to ``<data_dir>/password`` (mode 0600) for redis-cli users."""
    password = secrets.token_urlsafe(24)
    data_dir.mkdir(parents=True, exist_ok=True)
    pw_file = data_dir / "password"
    pw_file.unlink(missing_ok=True)
    fd = os.open(pw_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    server = LocalRedis(data_dir=data_dir, password=password).start()
    print(
        f"started a local redis-server for this run at {redact_url(server.url)} (password in {pw_file})",
        file=sys.stderr,
    )
    return server


def redis_cli_auth_hint(local_redis: LocalRedis | None, url_password: str | None) -> str:
    """The ``REDISCLI_AUTH=...`` prefix the subscribe hint needs, never the password itself."""
    if local_redis is not None:
        return f'REDISCLI_AUTH="$(cat {local_redis.data_dir / "password"})" '
    return "REDISCLI_AUTH=<password from redis.url> " if url_password else ""


def check_redis_at_start(cfg: PipelineConfig) -> str | None:
    """None to go on; else why the run must not start (Redis unusable and start_without_redis is off)."""
    from pipeline.deliver.redis_transport import probe_redis

    assert cfg.redis.url is not None
    reason = probe_redis(cfg.redis.url, cfg.redis)
    if reason is None:
        return None
    if cfg.redis.start_without_redis:
        log.warning(
            "%s; starting anyway (redis.start_without_redis: true): events wait in the spool %s",
            reason,
            cfg.redis.spool_path,
        )
        return None
    return f"{reason}. Fix redis.url, or set redis.start_without_redis: true to spool until it answers"


def _resolve_demo_sources(cfg: PipelineConfig, var_dir: Path) -> None:
    for cam in cfg.cameras:
        if cam.source == DEMO_SOURCE:
            from pipeline.ingest.demo_media import default_demo_clip

            cam.source = str(default_demo_clip(RuntimePaths(var_dir).demo))
            log.info("camera %s: demo clip %s (built from scikit-image's sample photos)", cam.id, cam.source)


def prefetch_detector(cfg: PipelineConfig) -> Future:
    """Build the detector on a thread while the caller starts Redis and the sinks (start-up in parallel:
    model load and ONNX Runtime session creation overlap the redis-server start). ``result()`` gives the
    detector or raises what building it raised."""
    future: Future = Future()

    def build() -> None:
        from pipeline.detect.detectors.factory import build_detector

        try:
            future.set_result(build_detector(cfg.detector))
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits for it
            future.set_exception(exc)

    threading.Thread(target=build, name="detector-load", daemon=True).start()
    return future


def discard_detector(future: Future | None) -> None:
    """Close a prefetched detector the run will not use (start-up stopped early)."""
    if future is None:
        return
    with contextlib.suppress(Exception):  # its error no longer matters: the run is not starting
        future.result().close()


def _sensitive_paths(cfg: PipelineConfig) -> list[str | None]:
    """Configured files that hold secrets or personal data (tightened to 0600 at start)."""
    paths: list[str | None] = [cfg.redis.spool_path, cfg.faces.gallery_path]
    if cfg.faces.enabled:  # (the faces modules cost ~1.5 s of imports: only when faces run)
        from pipeline.analyze.faces.enroll import enroll_audit_path

        paths.append(str(enroll_audit_path(cfg.faces)))
    paths += [d.audit_log for d in cfg.doors]
    if cfg.sinks.mqtt is not None:
        paths.append(cfg.sinks.mqtt.spool_path)
    paths += [w.spool_path for w in cfg.sinks.webhooks]
    return paths


def _preflight(cfg: PipelineConfig, args: argparse.Namespace) -> int | None:
    """Checks that need no model: the web port, file sources. None to go on, else the exit status."""
    from pipeline.cli.preflight import port_problem, source_failures

    if cfg.web.enabled and not args.no_web:
        port = args.web_port if args.web_port is not None else cfg.web.port
        if (problem := port_problem(cfg.web.host, port)) is not None:
            print(
                f"error: web.port: cannot listen on {cfg.web.host}:{port} ({problem}); "
                "use --web-port, or --no-web",
                file=sys.stderr,
            )
            return EXIT_STARTUP
    failures = source_failures(cfg)
    enabled = [c.id for c in cfg.cameras if c.enabled]
    if enabled and all(cid in failures for cid in enabled):
        summary = {cid: f"failed: {failures[cid]}" for cid in enabled}
        print(f"pipeline failed: every camera failed; cameras: {json.dumps(summary)}", file=sys.stderr)
        return EXIT_ALL_CAMERAS_FAILED
    for cid, reason in failures.items():
        log.warning("camera %s will fail: %s", cid, reason)
    return None


def _start_metrics(cfg: PipelineConfig, metrics, health):  # noqa: ANN001, ANN202
    """The metrics server, started before the model loads (a taken port is known at once); None if off.
    Raises SystemExit(EXIT_STARTUP) naming the key when the port is taken."""
    if cfg.metrics.http_port is None:
        return None
    from pipeline.serve.metrics_http import MetricsServer

    try:
        server = MetricsServer(metrics, cfg.metrics.http_host, cfg.metrics.http_port, health)
    except OSError as exc:
        print(
            f"error: metrics.http_port: cannot listen on {cfg.metrics.http_host}:{cfg.metrics.http_port}"
            f" ({exc.strerror or exc}); pick a free port or set metrics.http_port: null",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_STARTUP) from None
    server.start()
    print(f"metrics: http://{cfg.metrics.http_host}:{server.port}/metrics", file=sys.stderr)
    return server


def _build_pipeline_interruptibly(stop: StopController, build):  # noqa: ANN001, ANN202
    """Run ``build()`` (the model load: 30-60 s under load) on a worker thread while the main thread
    waits in short slices, so a signal during the load is honoured. Returns the pipeline, or None when a
    stop was asked for first (the half-built pipeline is abandoned: the process is about to exit)."""
    box: dict[str, object] = {}

    def work() -> None:
        try:
            box["pipeline"] = build()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            box["error"] = exc

    worker = threading.Thread(target=work, name="startup", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.1)
        if stop.requested.is_set():
            return None
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["pipeline"]


def _exit_during_startup(stop: StopController, local_redis: LocalRedis | None, servers: list) -> int:  # noqa: ANN001
    """A signal came before the pipeline ran: stop what was started and leave (nothing was accepted yet)."""
    for server in servers:
        if server is not None:
            server.stop()
    if local_redis:
        local_redis.stop(timeout=max(0.1, min(2.0, stop.remaining() - 0.5)))
    print("stopped during start-up (a signal came before the pipeline ran)", file=sys.stderr, flush=True)
    stop.finished(EXIT_OK)
    flush_std_streams()
    os._exit(EXIT_OK)  # a model load may still run on its thread; nothing of it needs saving


def _drain_within_deadline(pipeline, stop: StopController, duration: float | None) -> None:  # noqa: ANN001
    """Run until the sources end, ``--duration`` passes or a signal comes; then drain what fits before the
    stop deadline and cut off the rest to the spools (``Pipeline.cut_off``)."""
    until = None if duration is None else time.monotonic() + duration
    finished = False
    while not stop.requested.is_set() and not finished:
        if until is not None and time.monotonic() >= until:
            break
        finished = pipeline.wait(0.1)
    if not finished and not stop.requested.is_set():  # --duration elapsed
        stop.request(f"--duration {duration:g}s elapsed: stopping within {stop.timeout_s:g}s")
    if finished and not stop.requested.is_set():
        pipeline.join(timeout=5.0)  # the sources ended on their own: everything is flushed
        return
    pipeline.stop()
    drained = pipeline.wait(max(0.0, stop.remaining() - stop.cut_off_reserve_s))
    if not drained:
        pipeline.cut_off()
        if not pipeline.wait_cut_off(max(0.0, stop.remaining() - 1.0)):
            log.error("stop deadline: a stage did not finish spooling in time")
    for s in [*pipeline.decoders.values(), pipeline.detect]:
        s.join(min(0.5, max(0.0, stop.remaining() - 1.0)))


def main(args: argparse.Namespace) -> int:
    # Signal handlers first: a SIGTERM during the config load, the model load or the drain is honoured.
    stop = StopController().install()
    try:
        cfg = _apply_overrides(load_config(args.config), args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    stop.timeout_s = cfg.stop_timeout_s
    stop.forced_note = f"forced exit; undelivered events stay in the spool {cfg.redis.spool_path}"
    logging.basicConfig(
        level=cfg.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    var_dir = Path(args.var_dir)
    use_private_files(var_dir)
    _resolve_demo_sources(cfg, var_dir)
    cfg = resolve_runtime_paths(cfg, var_dir)
    use_private_files(var_dir, _sensitive_paths(cfg))

    if (status := _preflight(cfg, args)) is not None:
        return status

    from pipeline.core.metrics import MetricsRegistry

    metrics = MetricsRegistry()
    holder: dict[str, object] = {}

    def health() -> dict:
        p = holder.get("pipeline")
        return p.health() if p is not None else {"ok": False, "starting": True}  # type: ignore[attr-defined]

    try:
        metrics_server = None if cfg.executor == "ray" else _start_metrics(cfg, metrics, health)
    except SystemExit as exc:
        return int(exc.code or EXIT_STARTUP)

    detector = prefetch_detector(cfg) if cfg.executor != "ray" else None

    local_redis = None
    if cfg.redis.url is None:
        try:
            local_redis = start_local_redis(RuntimePaths(var_dir).redis)
        except RedisServerError as exc:
            print(f"error: cannot start a local redis-server (redis.url is null): {exc}", file=sys.stderr)
            discard_detector(detector)
            if metrics_server:
                metrics_server.stop()
            return EXIT_STARTUP
        cfg.redis.url = local_redis.url
    elif (reason := check_redis_at_start(cfg)) is not None:
        print(f"error: {reason}", file=sys.stderr)
        discard_detector(detector)
        if metrics_server:
            metrics_server.stop()
        return EXIT_STARTUP
    if stop.requested.is_set():
        return _exit_during_startup(stop, local_redis, [metrics_server])

    if cfg.executor == "ray":
        from pipeline.scale.cli import run_sharded

        # while Ray connects (ray.init can block for minutes on a bad address) a signal ends the run at once;
        # once connected, the driver stops its shards through Ray with its own handlers
        def stop_while_connecting() -> None:
            _exit_during_startup(stop, local_redis, [])

        stop.on_stop = stop_while_connecting

        def connected() -> None:
            stop.on_stop = None
            stop.release()

        try:
            return run_sharded(cfg, args, var_dir, on_connected=connected)
        finally:
            if local_redis:
                local_redis.stop()

    from pipeline.run.runner import EventSink, Pipeline

    sinks: list[EventSink] = []
    if args.print_events:
        print_lock = threading.Lock()  # cameras emit from their own threads: one whole line at a time

        def print_event(ev: Event) -> None:
            with print_lock:
                print(ev.to_json(), flush=True)

        sinks.append(print_event)
    try:
        pipeline = _build_pipeline_interruptibly(
            stop,
            lambda: Pipeline(
                cfg,
                event_sinks=sinks,
                var_dir=var_dir,
                metrics=metrics,
                detector=detector.result() if detector else None,
            ),
        )
    except Exception as exc:  # noqa: BLE001 - a startup error is reported, not dumped
        log.error("cannot start the pipeline: %s", exc)
        if metrics_server:
            metrics_server.stop()
        if local_redis:
            local_redis.stop()
        return EXIT_STARTUP
    if pipeline is None:
        return _exit_during_startup(stop, local_redis, [metrics_server])
    holder["pipeline"] = pipeline

    parsed = urlsplit(cfg.redis.url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port
    p = cfg.redis.prefix
    auth = redis_cli_auth_hint(local_redis, parsed.password)
    print(
        "subscribe to events with:\n"
        f"  {auth}redis-cli -h {host} -p {port or 6379} PSUBSCRIBE '{p}:*'        # live (pub/sub)\n"
        f"  {auth}redis-cli -h {host} -p {port or 6379} XREAD BLOCK 0 STREAMS {p}:stream:detections $   # durable\n"
        "  (see docs/events.md for every channel and stream)",
        file=sys.stderr,
        flush=True,
    )

    web_server = None
    if cfg.web.enabled and not args.no_web:
        web_server = _start_web(cfg, pipeline, var_dir, args)
        if web_server is None:  # like a metrics port in use: a setting to fix, exit 2
            pipeline.join(timeout=1)
            if metrics_server:
                metrics_server.stop()
            if local_redis:
                local_redis.stop()
            return EXIT_STARTUP
    if stop.requested.is_set():
        return _exit_during_startup(stop, local_redis, [web_server, metrics_server])

    stop.on_stop = pipeline.stop
    stop_status = threading.Event()
    threading.Thread(
        target=print_status_lines, args=(pipeline, cfg.metrics.status_interval_s, stop_status), daemon=True
    ).start()
    pipeline.start()
    if stop.requested.is_set():  # a signal between the last check and on_stop being set
        pipeline.stop()
    try:
        _drain_within_deadline(pipeline, stop, args.duration)
    finally:
        stop_status.set()
        if web_server:
            web_server.stop()
        if metrics_server:
            metrics_server.stop()
        if local_redis:  # last: the pipeline has drained into it (or spooled what it could not)
            local_redis.stop(timeout=max(0.2, min(5.0, stop.remaining() - 0.3)))
    summary = {cid: d.outcome() for cid, d in pipeline.decoders.items()}
    all_failed = bool(summary) and all(d.status == CameraStatus.FAILED for d in pipeline.decoders.values())
    verdict = "pipeline failed: every camera failed" if all_failed else "pipeline stopped"
    print(f"{verdict}; cameras: {json.dumps(summary)}", file=sys.stderr)
    print(f"[status] {pipeline.metrics.status_line()}", file=sys.stderr, flush=True)
    status = EXIT_ALL_CAMERAS_FAILED if all_failed else EXIT_OK
    stop.finished(status)
    if stop.requested.is_set():
        # stopped by a signal or --duration: threads of a cut-off drain (a detector mid-inference) may still
        # run; the interpreter's shutdown must not wait on them past the deadline
        flush_std_streams()
        os._exit(status)
    return status


def _start_web(cfg: PipelineConfig, pipeline, var_dir: Path, args: argparse.Namespace):  # noqa: ANN001, ANN202
    """Serve the web app (live view, events, faces, doors, cameras); print its URL and, on the very first
    start, the generated login password (only here, on the terminal)."""
    from pipeline.serve.web.server import WebServer, first_login_note, make_context

    if args.web_port is not None:
        cfg.web.port = args.web_port
    config_path = None if args.source else Path(args.config)
    try:
        ctx, new_password = make_context(
            cfg.web, cfg.faces, var_dir, pipeline=pipeline, cfg=cfg, config_path=config_path
        )
        server = WebServer(ctx).start()
    except (OSError, ValueError) as exc:
        log.error("cannot start the web app: %s (use --web-port, or --no-web)", exc)
        return None
    print(f"web app: {server.url}  (live view, events, faces, doors, cameras)", file=sys.stderr, flush=True)
    print(first_login_note(new_password, var_dir, cfg.web.password_env), file=sys.stderr, flush=True)
    return server
