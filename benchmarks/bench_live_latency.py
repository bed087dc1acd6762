"""Live latency under overload: 8 live 720p RTSP cameras, YOLOv3-tiny on the CPU, detect_fps 5 each.

    .venv/bin/python benchmarks/bench_live_latency.py --before /tmp/vidpipe-before [--seconds 50]

Starts one GStreamer RTSP server (tests/support/rtsp_server.py, a generated 1280x720 H.264 clip in a loop,
25 fps; every client gets its own stream) and a redis-server, then runs the pipeline of each source tree
in turn in a child process (``--before``: an export of the old code, e.g. ``git archive main``; this tree
second), with the same config, for the same time. Measured in each child, the same way for both trees:

* frame age at detection: ``time.time() - frame.capture_time`` when the detect stage hands a batch to the
  detector (``DetectStage._gather`` is wrapped, so the old code is measured at the same point); the first
  10 s are warm-up and not counted;
* achieved detections per second per camera;
* resident memory (VmRSS, sampled every second; the peak is reported);
* under-rate warnings logged by ``pipeline.core.rate_watch`` (the new code only).

Prints a markdown table. The machine may be shared: compare the two rows of one run, not across runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
CAMERAS = 8
DETECT_FPS = 5.0
WARMUP_S = 10.0


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def worker(tree: Path, url: str, redis_url: str, seconds: float, tmp: Path) -> dict:
    sys.path.insert(0, str(tree))
    frames_q = int(os.environ.get("VIDPIPE_BENCH_FRAMES_Q", "0"))
    if frames_q:  # a diagnostic variant: the new code with the old 8-frame live queue
        from pipeline.core import queues

        init = queues.BoundedQueue.__init__

        def patched(self, maxsize, policy="block", name="", wakeup=None):  # type: ignore[no-untyped-def]
            init(self, frames_q if name.startswith("frames[") else maxsize, policy, name, wakeup)

        queues.BoundedQueue.__init__ = patched  # type: ignore[method-assign]
    from pipeline.config.schema import parse_config
    from pipeline.detect.detect_stage import DetectStage
    from pipeline.run.runner import Pipeline

    ages: dict[str, list[float]] = {}
    t_start = [0.0]
    original = DetectStage._gather

    def gather(self: DetectStage) -> list:
        batch = original(self)
        now = time.time()
        if time.monotonic() - t_start[0] >= WARMUP_S:
            for f in batch:
                ages.setdefault(f.camera_id, []).append(now - f.capture_time)
        return batch

    DetectStage._gather = gather  # type: ignore[method-assign]

    warnings: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            warnings.append(record.getMessage())

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pipeline.core.rate_watch").addHandler(Catch())

    cfg = parse_config(
        {
            "cameras": [{"id": f"cam{i}", "source": url, "detect_fps": DETECT_FPS} for i in range(CAMERAS)],
            "detector": {"model": "yolov3-tiny", "backend": "onnxruntime"},
            "redis": {"url": redis_url, "spool_path": str(tmp / f"spool-{os.getpid()}.sqlite")},
        }
    )
    pipe = Pipeline(cfg, var_dir=tmp)
    rss: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(1.0):
            rss.append(_rss_mib())

    threading.Thread(target=sample, daemon=True).start()
    pipe.start()
    t_start[0] = time.monotonic()
    time.sleep(seconds)
    stop.set()
    pipe.stop()
    pipe.join(30)
    import numpy as np

    measured = seconds - WARMUP_S
    all_ages = np.asarray([a for v in ages.values() for a in v], dtype=np.float64)
    rates = [len(ages.get(f"cam{i}", [])) / measured for i in range(CAMERAS)]
    return {
        "frames_detected": int(all_ages.size),
        "age_p50_s": float(np.percentile(all_ages, 50)) if all_ages.size else None,
        "age_p95_s": float(np.percentile(all_ages, 95)) if all_ages.size else None,
        "rate_mean": float(np.mean(rates)),
        "rate_min": float(np.min(rates)),
        "rss_peak_mib": max(rss) if rss else None,
        "under_rate_warnings": len([w for w in warnings if "cannot keep up" in w]),
        "warning_example": next((w for w in warnings if "cannot keep up" in w), ""),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, help="source tree of the old code (git archive export)")
    ap.add_argument("--seconds", type=float, default=50.0)
    ap.add_argument("--after-first", action="store_true", help="run this tree first (order check)")
    ap.add_argument(
        "--with-q8", action="store_true", help="also run this tree with an 8-frame live queue (diagnostic)"
    )
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--redis-url", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args.url, args.redis_url, args.seconds, args.tmp)))
        return 0

    sys.path.insert(0, str(REPO))
    from pipeline.deliver.redis_server import LocalRedis
    from pipeline.ingest.demo_media import write_demo_video
    from tests.support.rtsp_fixtures import RtspServer

    trees = ([("before", args.before)] if args.before else []) + [("after", REPO)]
    if args.after_first:
        trees.reverse()
    if args.with_q8:
        trees.append(("after, frames queue 8", REPO))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        clip = write_demo_video(tmp / "720p.h264", width=1280, height=720, fps=25, seconds=8)
        server = RtspServer(clip)
        server.start()
        rows = []
        try:
            with LocalRedis(data_dir=tmp / "redis") as redis_server:
                for name, tree in trees:
                    env = {**os.environ, "VIDPIPE_BENCH_FRAMES_Q": "8" if "queue 8" in name else "0"}
                    r = subprocess.run(
                        [sys.executable, str(HERE), "--worker", str(tree), "--url", server.url,
                         "--redis-url", redis_server.url, "--seconds", str(args.seconds), "--tmp", str(tmp)],
                        capture_output=True, text=True, cwd=tree, timeout=args.seconds + 300, env=env,
                    )  # fmt: skip
                    line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
                    if line is None:
                        print(r.stderr[-3000:], file=sys.stderr)
                        raise SystemExit(f"{name}: no result")
                    rows.append((name, json.loads(line[len("RESULT ") :])))
        finally:
            server.stop()
    print(f"{CAMERAS} RTSP cameras 1280x720 @25 fps, detect_fps {DETECT_FPS:g}, {args.seconds:g} s each "
          f"(first {WARMUP_S:g} s not counted), yolov3-tiny ONNX Runtime CPU, {os.cpu_count()} CPUs\n")  # fmt: skip
    print("| code | frames detected | age p50 (s) | age p95 (s) | det/s per camera (mean, min) "
          "| peak RSS (MiB) | under-rate warnings |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in rows:
        print(
            f"| {name} | {r['frames_detected']} | {r['age_p50_s']:.3f} | {r['age_p95_s']:.3f} "
            f"| {r['rate_mean']:.2f}, {r['rate_min']:.2f} | {r['rss_peak_mib']:.0f} | {r['under_rate_warnings']} |"
        )
    for name, r in rows:
        if r["warning_example"]:
            print(f"\n{name} warning: {r['warning_example']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
