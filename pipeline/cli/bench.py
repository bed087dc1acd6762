"""bench subcommand: how many cameras of this kind does this machine hold?

python run_pipeline.py bench cameras --config C [--max N] [--seconds S] [--hold 0.9]

Adds cameras of the config's kind (its first camera: source, detect_fps, detect settings; the detector,
analytics and sinks of the config) one at a time, 1, 2, 3, ..., each round a fresh pipeline run for
``--seconds`` after a warm-up. A file source is looped and paced at its native frame rate, like a live
camera. A camera holds when it gets at least ``--hold`` x its ``detect_fps`` detections a second (4.5 of
5 by default). Prints each round (every camera's detections/s, the decode and inference share of the CPU,
frame age p95) and then the largest N at which every camera held. Exit 1 when not even one camera holds.

CPU shares come from the process's threads (/proc/self/task): decode = the decoder threads and FFmpeg's
own, inference = the detect thread and ONNX Runtime's pool, other = the rest (analytics, sinks, Python).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DETECT_FPS = 5.0
#: the warm-up waits at most this long for every camera's first detection
_FIRST_DETECTION_S = 60.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench_command", required=True)
    cams = sub.add_parser("cameras", help="the largest number of cameras of the config's kind that hold")
    cams.add_argument("--config", default="configs/default.yaml", help="YAML config (its first camera)")
    cams.add_argument("--max", type=int, default=16, help="stop at this many cameras (16)")
    cams.add_argument("--seconds", type=float, default=10.0, help="measured seconds per round (10)")
    cams.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring (3)")
    cams.add_argument(
        "--hold", type=float, default=0.9, help="a camera holds at >= this x its detect_fps (0.9)"
    )
    cams.add_argument("--model", help="override detector.model")
    cams.add_argument("--source", help="override the camera source")


@dataclass
class Round:
    cameras: int
    rates: dict[str, float]  # detections/s per camera in the measured window
    detect_fps: float
    cpu: dict[str, float]  # share of one core: decode, inference, other
    age_p95_s: float | None

    def holds(self, hold: float) -> bool:
        return bool(self.rates) and min(self.rates.values()) >= hold * self.detect_fps

    def line(self, hold: float) -> str:
        rates = sorted(self.rates.values())
        total = sum(self.cpu.values()) or 1.0
        age = f"{self.age_p95_s * 1000:.0f} ms" if self.age_p95_s is not None else "n/a"
        return (
            f"{self.cameras:>3} camera(s): detections/s per camera min {rates[0]:.2f} median "
            f"{rates[len(rates) // 2]:.2f} (need {hold * self.detect_fps:.2f}) | CPU {total:.2f} cores: "
            f"decode {100 * self.cpu['decode'] / total:.0f} %, inference {100 * self.cpu['inference'] / total:.0f} %, "
            f"other {100 * self.cpu['other'] / total:.0f} % | frame age p95 {age} | "
            f"{'holds' if self.holds(hold) else 'FALLS BEHIND'}"
        )

    def cores_per_camera(self) -> float:
        """CPU (cores) one camera used at the rate it got."""
        return sum(self.cpu.values()) / max(self.cameras, 1)


def _thread_cpu() -> dict[int, tuple[str, float]]:
    """native thread id -> (its name, CPU seconds) for every thread of this process."""
    tick = os.sysconf("SC_CLK_TCK")
    names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
    out = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            tid = int(task.name)
            stat = (task / "stat").read_text()
            comm = (task / "comm").read_text().strip()
        except (OSError, ValueError):
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        out[tid] = (names.get(tid, comm), (int(fields[11]) + int(fields[12])) / tick)
    return out


def _classify(name: str) -> str:
    if name.startswith(("decoder", "av:")):
        return "decode"
    if name.startswith("detect") or name in ("python", "python3") or name.startswith("onnx"):
        # threads Python did not start (ONNX Runtime's intra-op pool) carry the process's name
        return "inference"
    return "other"


def _cpu_shares(before: dict, after: dict, seconds: float) -> dict[str, float]:
    shares = {"decode": 0.0, "inference": 0.0, "other": 0.0}
    main_tid = threading.main_thread().native_id
    for tid, (name, cpu) in after.items():
        used = cpu - before.get(tid, (name, 0.0))[1]
        kind = "other" if tid == main_tid else _classify(name)
        shares[kind] += used / seconds
    return shares


def run_round(cfg, n: int, seconds: float, warmup: float, var_dir: Path) -> Round:  # noqa: ANN001
    """One pipeline run with ``n`` copies of the config's first camera; rates measured after the warm-up."""
    from pipeline.config.schema import CameraConfig
    from pipeline.run.runner import Pipeline

    template = cfg.cameras[0]
    base = template.model_dump(exclude={"id"})
    if not template.is_live:
        base.update(loop=True, realtime=True)
    base["detect_fps"] = template.detect_fps or DEFAULT_DETECT_FPS
    run_cfg = cfg.model_copy(deep=True)
    run_cfg.cameras = [CameraConfig(id=f"bench{i}", **base) for i in range(n)]
    pipeline = Pipeline(run_cfg, var_dir=var_dir)

    def detected() -> dict[str, int]:
        """Frames each camera's analytics got from the detector so far (one per detection round)."""
        return {c.id: pipeline.metrics.stage("analytics", c.id).processed for c in run_cfg.cameras}

    pipeline.start()
    try:
        deadline = time.monotonic() + max(warmup, _FIRST_DETECTION_S)
        time.sleep(warmup)
        while min(detected().values()) == 0 and time.monotonic() < deadline:
            time.sleep(0.2)  # the first detection pays one-off costs (ONNX Runtime's first run)
        start, before, t0 = detected(), _thread_cpu(), time.monotonic()
        time.sleep(seconds)
        end, after = detected(), _thread_cpu()
        elapsed = time.monotonic() - t0
        ages = pipeline.metrics.frame_ages()
    finally:
        pipeline.stop()
        pipeline.join(timeout=30)
    p95 = [a["0.95"] for a in ages.values()]
    return Round(
        cameras=n,
        rates={cid: (end[cid] - start[cid]) / elapsed for cid in end},
        detect_fps=float(base["detect_fps"]),
        cpu=_cpu_shares(before, after, elapsed),
        age_p95_s=max(p95) if p95 else None,
    )


def cmd_cameras(args: argparse.Namespace) -> int:
    import logging

    from pipeline.cli.run import start_local_redis
    from pipeline.config.paths import resolve_runtime_paths
    from pipeline.config.schema import ConfigError, load_config
    from pipeline.config.var_dir import RuntimePaths
    from pipeline.deliver.redis_server import RedisServerError

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not cfg.cameras:
        print(f"error: {args.config}: cameras: the config has no camera to repeat", file=sys.stderr)
        return 2
    if args.source:
        cfg.cameras[0] = cfg.cameras[0].model_copy(update={"source": args.source})
    if args.model:
        cfg.detector.model = args.model
    if cfg.cameras[0].source == "demo":
        from pipeline.ingest.demo_media import default_demo_clip

        cfg.cameras[0] = cfg.cameras[0].model_copy(
            update={"source": str(default_demo_clip(Path("var") / "demo"))}
        )
    if args.max < 1 or args.seconds <= 0:
        print("error: --max must be >= 1 and --seconds > 0", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="vidpipe-bench-") as tmp:
        var_dir = Path(tmp)
        cfg = resolve_runtime_paths(cfg, var_dir)
        local_redis = None
        if cfg.redis.url is None:
            try:
                local_redis = start_local_redis(RuntimePaths(var_dir).redis)
            except RedisServerError as exc:
                print(f"error: cannot start a local redis-server: {exc}", file=sys.stderr)
                return 2
            cfg.redis.url = local_redis.url
        cam = cfg.cameras[0]
        fps = cam.detect_fps or DEFAULT_DETECT_FPS
        print(
            f"camera kind: {cam.source} (detect_fps {fps:g}), detector {cfg.detector.model} "
            f"({cfg.detector.precision}), {os.cpu_count()} CPU(s), load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        best = 0
        held: Round | None = None
        try:
            for n in range(1, args.max + 1):
                try:
                    r = run_round(cfg, n, args.seconds, args.warmup, var_dir)
                except Exception as exc:  # noqa: BLE001 - e.g. int8 refused, a model not found: say which
                    print(f"error: cannot start the pipeline with {n} camera(s): {exc}", file=sys.stderr)
                    return 2
                print(r.line(args.hold), flush=True)
                if not r.holds(args.hold):
                    break
                best, held = n, r
        finally:
            if local_redis:
                local_redis.stop()
    if held is not None:
        from pipeline.ingest.thread_budget import usable_cores

        per = held.cores_per_camera()
        cores = usable_cores()
        print(
            f"CPU per camera at {best} camera(s): {per:.2f} cores; all {cores} cores to this process "
            f"would hold about {int(cores / per) if per > 0 else 0} (a projection: on a shared machine the "
            "measured N is what the other load leaves)"
        )
    more = " (or more: raise --max)" if best == args.max else ""
    print(
        f"largest N that holds {args.hold * fps:g} detections/s per camera: {best}{more} "
        f"(load at the end {os.getloadavg()[0]:.1f})"
    )
    return 0 if best >= 1 else 1


def main(args: argparse.Namespace) -> int:
    return cmd_cameras(args)
