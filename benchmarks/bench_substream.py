"""Detect on a substream, keep the main stream (``cameras[].record_source``): the CPU it saves per camera.

The same clip is encoded once at a main size (default 1920x1080) and a substream size (default 640x360),
H.264, a keyframe a second (not timed). Then, alternating for ``--rounds`` rounds, the CPU (process user +
system time, every thread) of what a camera costs per second of video:

* ``main decoded``: today's single-stream camera: every frame of the main stream decoded (one FFmpeg thread,
  as pipeline/ingest/thread_budget.py gives each decoder once cameras >= cores), BGR frames made at
  ``--detect-fps`` (the decoder converts only the frames it forwards);
* ``sub decoded``: the same work on the substream;
* ``main kept``: the record reader's work on the main stream: demux and copy each packet (no decoder);
* ``sub decoded + main kept``: a camera with a ``record_source``.

    .venv/bin/python benchmarks/bench_substream.py ../shared/data/videos/traffic_motorway.mp4 [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av
import cv2

from pipeline.ingest.demo_media import encode_bgr_video


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def encode_resized(src: str, size: tuple[int, int], dst: Path, fps: int) -> Path:
    with av.open(src) as c:
        frames = (
            cv2.resize(f.to_ndarray(format="bgr24"), size, interpolation=cv2.INTER_AREA)
            for f in c.decode(video=0)
        )
        return encode_bgr_video(dst, frames, fps, crf=23)


def decode_cpu(path: Path, fps: int, detect_fps: float) -> tuple[float, int]:
    """(CPU seconds, frames): decode every frame, convert one every fps/detect_fps frames to BGR."""
    every = max(1, round(fps / detect_fps))
    c0 = cpu_seconds()
    n = 0
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.codec_context.thread_type = "AUTO"
        s.codec_context.thread_count = 1
        for f in c.decode(s):
            if n % every == 0:
                f.to_ndarray(format="bgr24")
            n += 1
    return cpu_seconds() - c0, n


def keep_cpu(path: Path) -> tuple[float, int]:
    """(CPU seconds, packets): demux and copy every packet, as RecordStream does (no decoding)."""
    c0 = cpu_seconds()
    n = 0
    kept = []
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        for p in c.demux(s):
            if p.size:
                kept.append(bytes(p))
                n += 1
    return cpu_seconds() - c0, n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("clip")
    ap.add_argument("--main", default="1920x1080")
    ap.add_argument("--sub", default="640x360")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--detect-fps", type=float, default=5.0)
    args = ap.parse_args()
    main_size = tuple(int(v) for v in args.main.split("x"))
    sub_size = tuple(int(v) for v in args.sub.split("x"))
    with av.open(args.clip) as c:
        rate = c.streams.video[0].average_rate
    fps = round(float(rate)) if rate else 25
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        main_p = encode_resized(args.clip, main_size, Path(tmp) / "main.mp4", fps)  # type: ignore[arg-type]
        sub_p = encode_resized(args.clip, sub_size, Path(tmp) / "sub.mp4", fps)  # type: ignore[arg-type]
        print(f"encoded in {time.monotonic() - t0:.0f} s; load {os.getloadavg()[0]:.2f}")
        decode_cpu(sub_p, fps, args.detect_fps)  # warm caches and codecs
        keep_cpu(main_p)
        rows: dict[str, list[float]] = {"main decoded": [], "sub decoded": [], "main kept": []}
        frames = 0
        for _ in range(args.rounds):
            cpu, frames = decode_cpu(main_p, fps, args.detect_fps)
            rows["main decoded"].append(cpu)
            cpu, _ = decode_cpu(sub_p, fps, args.detect_fps)
            rows["sub decoded"].append(cpu)
            cpu, _ = keep_cpu(main_p)
            rows["main kept"].append(cpu)
        seconds = frames / fps
        med = {k: statistics.median(v) / seconds for k, v in rows.items()}  # cores per camera
        med["sub decoded + main kept"] = med["sub decoded"] + med["main kept"]
        for name, size in (("main", main_p), ("sub", sub_p)):
            kbps = size.stat().st_size * 8 / seconds / 1000
            print(f"{name}: {kbps:.0f} kbit/s")
        print(f"{frames} frames ({seconds:.1f} s at {fps} fps), BGR at {args.detect_fps:g} fps, "
              f"median of {args.rounds} interleaved rounds; load now {os.getloadavg()[0]:.2f}")  # fmt: skip
        base = med["main decoded"]
        for k, v in med.items():
            print(f"  {k:<26} {v:.4f} cores per camera  ({v / base:.3f}x main decoded)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
