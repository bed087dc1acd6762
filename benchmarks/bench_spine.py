"""Spine overhead: frames through decoder → queues → detect (no-op) → analytics → publisher, against a bare
PyAV decode loop on the same file.

    .venv/bin/python benchmarks/bench_spine.py [--clip PATH] [--cameras N]

Without --clip it uses ../shared/data/videos/traffic_motorway.mp4 (1280x720 H.264) when present, else a
generated 720p clip. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import av

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config.schema import parse_config  # noqa: E402
from pipeline.deliver.redis_server import LocalRedis  # noqa: E402
from pipeline.detect.detectors.base import NullDetector  # noqa: E402
from pipeline.run.runner import Pipeline  # noqa: E402

SHARED_CLIP = Path(__file__).resolve().parents[2] / "shared/data/videos/traffic_motorway.mp4"


def bare_decode(path: Path) -> tuple[int, float]:
    t0 = time.perf_counter()
    n = 0
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        for frame in c.decode(s):
            frame.to_ndarray(format="bgr24")
            n += 1
    return n, time.perf_counter() - t0


def spine(path: Path, cameras: int, redis_url: str, tmp: Path, publish: bool) -> tuple[int, float, dict]:
    cfg = parse_config(
        {
            "cameras": [{"id": f"c{i}", "source": str(path)} for i in range(cameras)],
            "detector": {"model": "none", "batch": {"max_batch": max(1, cameras), "max_wait_ms": 2}},
            "redis": {
                "url": redis_url,
                "spool_path": str(tmp / "spool.sqlite"),
                "publish_detections": publish,
            },
        }
    )
    pipe = Pipeline(cfg, detector=NullDetector(), var_dir=tmp)
    t0 = time.perf_counter()
    pipe.start()
    assert pipe.wait(600), "pipeline did not finish"
    dt = time.perf_counter() - t0
    pipe.join(10)
    frames = sum(pipe.metrics.stage("analytics", f"c{i}").processed for i in range(cameras))
    return frames, dt, {"published": pipe.metrics.counters.get("publisher_published_total", 0)}


def median_run(fn, repeat: int) -> tuple[int, float]:
    """(frames, median seconds) over ``repeat`` runs."""
    results = [fn() for _ in range(repeat)]
    times = sorted(t for _, t in results)
    return results[0][0], times[len(times) // 2]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clip", type=Path)
    ap.add_argument("--cameras", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3, help="runs per row; the median is reported")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        clip = args.clip or (SHARED_CLIP if SHARED_CLIP.exists() else None)
        if clip is None:
            from pipeline.ingest.demo_media import write_demo_video

            clip = write_demo_video(tmp / "clip720.mp4", width=1280, height=720, seconds=10)
        with av.open(str(clip)) as c:
            s = c.streams.video[0]
            res = f"{s.codec_context.width}x{s.codec_context.height}"
        n0, t_bare = median_run(lambda: bare_decode(clip), args.repeat)
        rows = [("bare PyAV decode loop (decode + to BGR ndarray)", 1, n0, t_bare)]
        with LocalRedis(data_dir=tmp / "redis") as r:
            runs = iter(range(10_000))
            n1, t1 = median_run(lambda: spine(clip, 1, r.url, tmp / f"a{next(runs)}", False)[:2], args.repeat)
            rows.append(("spine, no-op detector, no per-frame events", 1, n1, t1))
            n2, t2 = median_run(lambda: spine(clip, 1, r.url, tmp / f"b{next(runs)}", True)[:2], args.repeat)
            rows.append(("spine, no-op detector, detections.frame event per frame to Redis", 1, n2, t2))
            if args.cameras > 1:
                n3, t3 = median_run(
                    lambda: spine(clip, args.cameras, r.url, tmp / f"c{next(runs)}", True)[:2], args.repeat
                )
                rows.append(
                    (f"spine, {args.cameras} cameras of the same file, batched", args.cameras, n3, t3)
                )
        print(f"clip: {clip.name} ({res}), {n0} frames, median of {args.repeat} runs per row\n")
        print("| path | cameras | frames | seconds | frames/s | overhead vs bare |")
        print("|---|---|---|---|---|---|")
        for name, cams, n, t in rows:
            fps = n / t
            over = (t / cams) / t_bare - 1 if cams else 0
            print(f"| {name} | {cams} | {n} | {t:.2f} | {fps:.1f} | {over * 100:+.1f}% per camera |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
