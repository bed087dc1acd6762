"""Decode throughput: a bare PyAV loop vs the DecoderStage feeding a BoundedQueue to a do-nothing consumer.

Clips: /work/shared/data/videos/traffic_motorway.mp4 (real 1280x720 H.264, 30 fps, 368 frames) and a 1080p
version of it made here with PyAV (bilinear upscale, libx264 veryfast, crf 23). Without the shared data the
generated demo scene (pipeline.ingest.demo_media) is used at both sizes instead.

    .venv/bin/python benchmarks/bench_decode.py [--repeats 3] [--cache DIR] [--video PATH]

Prints a markdown table (median of ``--repeats`` runs, frames per second).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from fractions import Fraction
from pathlib import Path

import av

from pipeline.config.schema import CameraConfig
from pipeline.core.metrics import MetricsRegistry
from pipeline.core.queues import BoundedQueue, QueueClosed
from pipeline.ingest.decoder import DecoderStage
from pipeline.ingest.demo_media import write_demo_video

SHARED_720P = Path("/work/shared/data/videos/traffic_motorway.mp4")


def upscale(src: Path, dst: Path, width: int, height: int) -> Path:
    """Re-encode ``src`` at ``width``x``height`` (H.264, same frame rate)."""
    if dst.exists():
        return dst
    tmp = dst.with_suffix(".partial.mp4")
    with av.open(str(src)) as inp, av.open(str(tmp), "w") as out:
        vin = inp.streams.video[0]
        rate = vin.average_rate or Fraction(30, 1)
        vout = out.add_stream("libx264", rate=rate, options={"preset": "veryfast", "crf": "23"})
        vout.width, vout.height, vout.pix_fmt = width, height, "yuv420p"
        for i, frame in enumerate(inp.decode(vin)):
            big = frame.reformat(width=width, height=height, format="yuv420p", interpolation="BILINEAR")
            big.pts, big.time_base = i, 1 / rate
            for packet in vout.encode(big):
                out.mux(packet)
        for packet in vout.encode(None):
            out.mux(packet)
    tmp.replace(dst)
    return dst


def clips(cache: Path, video: Path | None) -> list[tuple[str, Path]]:
    cache.mkdir(parents=True, exist_ok=True)
    src = video or SHARED_720P
    if src.exists():
        return [
            (f"720p ({src.name})", src),
            (f"1080p ({src.name} upscaled)", upscale(src, cache / f"{src.stem}_1080p.mp4", 1920, 1080)),
        ]
    out = []
    for name, w, h in (("720p", 1280, 720), ("1080p", 1920, 1080)):
        path = cache / f"demo_{h}p.mp4"
        if not path.exists():
            write_demo_video(path, width=w, height=h, fps=30, seconds=10.0)
        out.append((f"{name} (generated demo scene)", path))
    return out


def bare_pyav(path: Path, to_bgr: bool) -> tuple[int, float]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_type = "AUTO"
        n = 0
        t0 = time.perf_counter()
        for frame in container.decode(stream):
            if to_bgr:
                frame.to_ndarray(format="bgr24")
            n += 1
        return n, time.perf_counter() - t0


def decoder_stage(path: Path) -> tuple[int, float]:
    cam = CameraConfig(id="bench", source=str(path))
    queue = BoundedQueue(cam.queue_size, cam.effective_queue_policy)
    stage = DecoderStage(cam, queue, lambda event: None, MetricsRegistry())
    count = 0
    done = threading.Event()

    def consume() -> None:
        nonlocal count
        while True:
            try:
                if queue.get(1.0) is not None:
                    count += 1
            except QueueClosed:
                done.set()
                return

    consumer = threading.Thread(target=consume, daemon=True)
    t0 = time.perf_counter()
    stage.start()
    consumer.start()
    done.wait()
    elapsed = time.perf_counter() - t0
    stage.join(5)
    return count, elapsed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=Path("var/bench_cache"))
    parser.add_argument("--video", type=Path, help="a 720p clip to use instead of the shared traffic clip")
    args = parser.parse_args()

    rows = []
    for label, path in clips(args.cache, args.video):
        with av.open(str(path)) as c:
            s = c.streams.video[0]
            size = f"{s.codec_context.width}x{s.codec_context.height}"
        methods = {
            "PyAV decode only": lambda p=path: bare_pyav(p, to_bgr=False),
            "PyAV decode + bgr24": lambda p=path: bare_pyav(p, to_bgr=True),
            "DecoderStage -> queue -> no-op consumer": lambda p=path: decoder_stage(p),
        }
        for method, fn in methods.items():
            runs = [fn() for _ in range(args.repeats)]
            frames = runs[0][0]
            fps = statistics.median(n / t for n, t in runs)
            rows.append((label, size, method, frames, fps))

    print("| clip | size | path | frames | decode fps (median) |")
    print("|---|---|---|---|---|")
    for label, size, method, frames, fps in rows:
        print(f"| {label} | {size} | {method} | {frames} | {fps:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
