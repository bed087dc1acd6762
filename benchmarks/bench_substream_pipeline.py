"""The whole pipeline on a camera's main stream vs on its substream with the main stream kept for clips.

Two GStreamer RTSP servers (tests/support/rtsp_server.py) stream the same clip at the main size (default
1920x1080) and the substream size (640x360). The pipeline (YOLOX-Nano fp32 on ONNX Runtime, whole frame,
``detect_fps``, clips enabled so both set-ups keep a packet ring) runs alternately with

* ``main only``: ``source`` = the main stream (decoded), and
* ``sub + record``: ``source`` = the substream (decoded), ``record_source`` = the main stream (kept),

for ``--seconds`` each (the first ``--warmup`` not counted), ``--rounds`` times. Reported: the pipeline
process's CPU (user + system, every thread) per second of the steady window, frames detected per second,
and detections per detected frame (the whole-frame detector sees a 416-px picture either way). The RTSP
servers' CPU is the camera's and is not counted.

    .venv/bin/python benchmarks/bench_substream_pipeline.py ../shared/data/videos/traffic_motorway.mp4
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import av  # noqa: E402

from benchmarks.bench_substream import cpu_seconds, encode_resized  # noqa: E402


def run_once(source: str, record: str | None, redis_url: str, args: argparse.Namespace, tmp: Path) -> dict:
    from engines.model_store import get_model_path
    from pipeline.config.schema import parse_config
    from pipeline.core.events import Event
    from pipeline.run.runner import Pipeline

    cam: dict = {"id": "cam", "source": source, "detect_fps": args.detect_fps}
    if record:
        cam["record_source"] = record
    cfg = parse_config({
        "cameras": [cam],
        "detector": {"model": str(get_model_path("yolox-nano")), "layout": "yolox", "threads": 1},
        "redis": {"url": redis_url, "spool_path": str(tmp / f"spool-{time.monotonic_ns()}.sqlite"),
                  "publish_detections": True},
        "clips": {"enabled": True},
    })  # fmt: skip
    frames: list[tuple[float, int]] = []

    def sink(ev: Event) -> None:
        if ev.type == "detections.frame":
            frames.append((time.monotonic(), len(ev.data["detections"])))

    pipe = Pipeline(cfg, var_dir=tmp / "var", event_sinks=[sink]).start()
    try:
        time.sleep(args.warmup)
        c0, t0 = cpu_seconds(), time.monotonic()
        time.sleep(args.seconds - args.warmup)
        c1, t1 = cpu_seconds(), time.monotonic()
    finally:
        pipe.stop()
        pipe.wait(30)
        pipe.join(10)
    steady = [n for t, n in frames if t0 <= t <= t1]
    return {
        "cpu": (c1 - c0) / (t1 - t0),
        "fps": len(steady) / (t1 - t0),
        "dets": sum(steady) / max(len(steady), 1),
        "frames": len(steady),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("clip")
    ap.add_argument("--main", default="1920x1080")
    ap.add_argument("--sub", default="640x360")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=25.0)
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--detect-fps", type=float, default=5.0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from pipeline.deliver.redis_server import LocalRedis
    from tests.support.rtsp_fixtures import RtspServer

    main_size = tuple(int(v) for v in args.main.split("x"))
    sub_size = tuple(int(v) for v in args.sub.split("x"))
    with av.open(args.clip) as c:
        rate = c.streams.video[0].average_rate
    fps = round(float(rate)) if rate else 25
    rows: dict[str, list[dict]] = {"main only": [], "sub + record": []}
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        main_h264 = encode_resized(args.clip, main_size, tmp / "main.h264", fps)  # type: ignore[arg-type]
        sub_h264 = encode_resized(args.clip, sub_size, tmp / "sub.h264", fps)  # type: ignore[arg-type]
        main_srv = RtspServer(main_h264, fps=fps, mount="/main")
        sub_srv = RtspServer(sub_h264, fps=fps, mount="/sub")
        main_srv.start()
        sub_srv.start()
        try:
            with LocalRedis(data_dir=tmp / "redis") as redis:
                for _ in range(args.rounds):
                    rows["main only"].append(run_once(main_srv.url, None, redis.url, args, tmp))
                    loads.append(os.getloadavg()[0])
                    rows["sub + record"].append(run_once(sub_srv.url, main_srv.url, redis.url, args, tmp))
                    loads.append(os.getloadavg()[0])
        finally:
            main_srv.stop()
            sub_srv.stop()
    print(f"{args.main} main / {args.sub} sub, {fps} fps RTSP, YOLOX-Nano fp32 whole frame, 1 inference thread, "
          f"detect_fps {args.detect_fps:g}, {args.seconds:g} s per run ({args.warmup:g} s warm-up not counted), "
          f"{args.rounds} interleaved rounds; load {min(loads):.1f}-{max(loads):.1f}")  # fmt: skip
    print("| set-up | CPU cores (median) | frames detected/s | detections per frame | frames counted |")
    print("|---|---:|---:|---:|---:|")
    base = statistics.median(r["cpu"] for r in rows["main only"])
    for name, rs in rows.items():
        cpu = statistics.median(r["cpu"] for r in rs)
        print(f"| {name} | {cpu:.3f} ({cpu / base:.2f}x) | {statistics.median(r['fps'] for r in rs):.2f} "
              f"| {statistics.median(r['dets'] for r in rs):.2f} | {sum(r['frames'] for r in rs)} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
