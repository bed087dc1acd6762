"""Per-frame cost of ``executor: ray`` against ``local`` on the same cameras, and the Ray runtime's own cost.

One process, one run, the same local redis-server and the same looping real-time clip per camera:

  1. local: the Pipeline in this process;
  2. Ray idle: ``ray.init`` on this machine with no actor — CPU and memory of Ray's own processes;
  3. ray: the same cameras as shards on that Ray (one shard process, or one per camera).

For each executor, over a steady window after warm-up: CPU seconds per frame of every process involved
(this one and all its descendants: Ray's GCS, raylet, workers), resident memory, and the latency from a
frame's capture to its ``detections.frame`` entry in the Redis stream. CPU and memory come from /proc.

    .venv/bin/python benchmarks/bench_ray_executor.py [--cameras 2] [--window 10] [--model none]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from pipeline.config.schema import parse_config  # noqa: E402
from pipeline.core.events import Event  # noqa: E402
from pipeline.deliver.redis_server import LocalRedis  # noqa: E402
from pipeline.ingest.demo_media import write_demo_video  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _tree(root: int, exclude: set[int]) -> list[int]:
    """root and all its descendants (from /proc), minus ``exclude`` (e.g. the redis-server)."""
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parent[int(d)] = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        if p not in exclude:
            out.append(p)
            todo += [c for c, pp in parent.items() if pp == p]
    return out


def _usage(pids: list[int]) -> tuple[dict[int, float], float]:
    """CPU seconds per pid, and total RSS in MB."""
    cpu, rss = {}, 0.0
    for p in pids:
        try:
            f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            cpu[p] = (int(f[11]) + int(f[12])) / TICK
            rss += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * PAGE / 1e6
        except (OSError, IndexError, ValueError):
            pass
    return cpu, rss


class Window:
    """CPU used by a process tree between two points, and its memory at the end."""

    def __init__(self, exclude: set[int]) -> None:
        self.exclude = exclude
        self.t0 = time.time()
        self.cpu0, _ = _usage(_tree(os.getpid(), exclude))

    def close(self) -> tuple[float, float, float, float]:
        t1 = time.time()
        pids = _tree(os.getpid(), self.exclude)
        cpu1, rss = _usage(pids)
        used = sum(c - self.cpu0.get(p, 0.0) for p, c in cpu1.items())  # a new process counts from 0
        return self.t0, t1, used, rss


def _frames(client: redis.Redis, prefix: str, t0: float, t1: float) -> list[float]:
    """Capture-to-stream latencies (ms) of the detections.frame entries that landed in [t0, t1]."""
    lat = []
    for sid, f in client.xrange(f"{prefix}:stream:detections", min=int(t0 * 1000), max=int(t1 * 1000)):
        ev = Event.from_json(f[b"event"])
        lat.append(int(sid.split(b"-")[0]) - ev.ts * 1000)
    return lat


def _row(name: str, window: tuple[float, float, float, float], lat: list[float], peer: float | None) -> str:
    t0, t1, cpu, rss = window
    n = len(lat)
    per = cpu / max(n, 1) * 1000
    ratio = f"{per / peer:.2f}" if peer else "1.00"
    q = statistics.quantiles(lat, n=20) if n > 1 else [0.0] * 19
    return (
        f"| {name} | {n} | {n / (t1 - t0):.1f} | {per:.2f} | {ratio} | {statistics.median(lat):.1f} | "
        f"{q[18]:.1f} | {rss:.0f} |"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cameras", type=int, default=2)
    ap.add_argument("--fps", type=int, default=25)
    ap.add_argument("--warmup", type=float, default=4.0)
    ap.add_argument("--window", type=float, default=10.0)
    ap.add_argument("--model", default="none")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    clip = write_demo_video(tmp / "clip.mp4", width=320, height=240, fps=args.fps, seconds=4.0)
    server = LocalRedis(data_dir=tmp / "redis").start()
    client = redis.Redis.from_url(server.url, socket_timeout=5)
    exclude = {server.proc.pid} if server.proc is not None else set()  # redis is the same for both
    rows = []

    def cfg(prefix: str, per_shard: int) -> dict:
        cams = [
            {"id": f"c{i}", "source": str(clip), "loop": True, "realtime": True} for i in range(args.cameras)
        ]
        return {
            "cameras": cams,
            "detector": {"model": args.model, "threads": 1},
            "redis": {"url": server.url, "prefix": prefix, "spool_path": str(tmp / f"{prefix}.sqlite")},
            "web": {"enabled": False},
            "ray": {"max_cameras_per_shard": per_shard, "standby": False},
        }

    try:
        # 1. local
        from pipeline.run.runner import Pipeline

        pipe = Pipeline(parse_config(cfg("local", 1)), var_dir=tmp / "local").start()
        time.sleep(args.warmup)
        w = Window(exclude)
        time.sleep(args.window)
        local = w.close()
        pipe.stop()
        pipe.join(10)
        lat = _frames(client, "local", local[0], local[1])
        peer = local[2] / max(len(lat), 1) * 1000
        rows.append(_row(f"local, {args.cameras} cameras in this process (peer)", local, lat, None))

        # 2. Ray on its own
        import ray

        from pipeline.scale.executor import RayExecutor, connect

        _, rss_before = _usage([os.getpid()])
        connect("local", num_cpus=2, object_store_memory=80 * 1024 * 1024)
        time.sleep(5)
        w = Window(exclude)
        time.sleep(args.window)
        t0, t1, cpu, rss = w.close()
        idle = (cpu / (t1 - t0), rss - rss_before, len(_tree(os.getpid(), exclude)) - 1)

        # 3. ray, one shard for all cameras, then one shard per camera
        for per_shard, label in ((args.cameras, "1 shard"), (1, f"{args.cameras} shards")):
            prefix = f"ray{per_shard}"
            ex = RayExecutor(
                parse_config({**cfg(prefix, per_shard), "executor": "ray"}), tmp / prefix
            ).start()
            deadline = time.time() + 120
            while time.time() < deadline and not all(p["running"] for p in ex.placement().values()):
                time.sleep(0.2)
            time.sleep(args.warmup)
            w = Window(exclude)
            time.sleep(args.window)
            win = w.close()
            ex.stop()
            ex.join(20)
            lat = _frames(client, prefix, win[0], win[1])
            rows.append(_row(f"ray, {label} (incl. Ray's own processes)", win, lat, peer))
        ray.shutdown()
    finally:
        server.stop()

    print(f"cameras {args.cameras} x {args.fps} fps real time, model {args.model}, window {args.window}s")
    print("| executor | frames | frames/s | CPU ms/frame | vs local | latency p50 ms | p95 ms | RSS MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(r)
    print(
        f"Ray idle (no actors): {idle[0] * 100:.1f}% of one core, {idle[1]:.0f} MB RSS over {idle[2]} processes"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
