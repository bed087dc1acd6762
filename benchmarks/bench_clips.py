"""Cost of clips (issue 22): packet-ring memory per camera and CPU per clip, beside decoding the same stream.

Stream: /work/shared/data/videos/traffic_motorway.mp4 (real 1280x720 H.264, 30 fps, 368 frames) upscaled here
to 1920x1080 and encoded with libx264 at 4 Mbit/s (``bit_rate`` 4M, ``maxrate`` 4M, ``bufsize`` 8M, a keyframe
every 2 s), played forward then backward three times (about 37 s), which is what a 1080p camera sends.

* Ring memory: the file's packets pushed through ``PacketRing.push`` exactly as the decoder does, ring bounded
  at 30 s (the default ``clips.ring_max_s``). Reported: the packet payload held, and the Python heap the ring
  holds (tracemalloc: payload + per-packet objects).
* CPU per clip: ``ClipWriter._cut`` (remux to MP4 in memory + sha256 + write 0600 + fsync + quota) of a 10 s
  clip (pre_s 5, post_s 5) out of the full ring; process CPU time (all threads) per clip, median of N.
* Peer, same run, same stream: decoding one second (30 frames from a keyframe) with PyAV as the decoder
  stage does (thread_type AUTO), and the same plus the BGR conversion the pipeline makes for each frame it
  forwards.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_clips.py [--repeats 20] [--cache DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import tracemalloc
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from pipeline.config.clips import ClipsConfig
from pipeline.ingest.clip_writer import ClipRequest, ClipWriter
from pipeline.ingest.packet_ring import PacketRing

SOURCE = Path("/work/shared/data/videos/traffic_motorway.mp4")


def make_stream(dst: Path, passes: int = 6) -> Path:
    """1080p, 4 Mbit/s, keyframe every 2 s, ~37 s: the source played forward and backward ``passes`` times."""
    if dst.exists():
        return dst
    with av.open(str(SOURCE)) as inp:
        frames = [f.to_ndarray(format="rgb24") for f in inp.decode(video=0)]
    tmp = dst.with_suffix(".partial.mp4")
    with av.open(str(tmp), "w") as out:
        s = out.add_stream(
            "libx264",
            rate=30,
            options={"preset": "veryfast", "maxrate": "4M", "bufsize": "8M", "g": "60", "bf": "0"},
        )
        s.width, s.height, s.pix_fmt, s.bit_rate = 1920, 1080, "yuv420p", 4_000_000
        s.time_base = Fraction(1, 30)
        n = 0
        for p in range(passes):
            for img in frames if p % 2 == 0 else frames[::-1]:
                vf = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(1920, 1080)
                vf.pts = n
                n += 1
                for pkt in s.encode(vf):
                    out.mux(pkt)
        for pkt in s.encode():
            out.mux(pkt)
    tmp.rename(dst)
    return dst


def fill_ring(path: Path, max_s: float) -> tuple[PacketRing, int, float]:
    """(ring, Python heap it holds in bytes, stream bit rate in Mbit/s)."""
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    ring = PacketRing("cam", max_s=max_s, max_bytes=1 << 30)
    total, first, last = 0, None, None
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        ring.start_segment(stream)
        for pkt in c.demux(stream):
            if pkt.size:
                ring.push(pkt)
                total += pkt.size
                t = float(pkt.pts * pkt.time_base)
                first = t if first is None else min(first, t)
                last = t if last is None else max(last, t)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    held = sum(s.size_diff for s in after.compare_to(before, "filename"))
    return ring, held, total * 8 / ((last or 1) - (first or 0)) / 1e6


def decode_one_second(ring: PacketRing, t0: float, bgr: bool) -> float:
    """Process CPU seconds to decode 30 frames from the keyframe at or before ``t0``."""
    snap = ring.snapshot(t0, t0 + 0.99)
    assert snap is not None
    ctx = av.CodecContext.create("h264", "r")
    ctx.extradata = snap.template.stream.codec_context.extradata
    ctx.thread_type = "AUTO"
    c0 = time.process_time()
    frames = 0
    for rp in snap.packets[:30]:
        for f in ctx.decode(av.Packet(rp.data)):
            frames += 1
            if bgr:
                f.to_ndarray(format="bgr24")
    for f in ctx.decode(None):
        frames += 1
        if bgr:
            f.to_ndarray(format="bgr24")
    cpu = time.process_time() - c0
    assert frames == 30, frames
    return cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "vidpipe-bench-clips")
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    path = make_stream(args.cache / "1080p_4mbit.mp4")

    ring, heap, mbit = fill_ring(path, 30.0)
    oldest, newest = ring.span() or (0.0, 0.0)
    print(f"stream: {path.name}, {mbit:.2f} Mbit/s, 1920x1080, ring span {newest - oldest:.1f} s")
    print(
        f"| ring (30 s) payload | {ring.nbytes / 2**20:.1f} MiB | Python heap held | {heap / 2**20:.1f} MiB |"
    )

    writer = ClipWriter(
        args.cache / "clips", {"cam": ring}, ClipsConfig(enabled=True).for_camera, lambda e: None
    )
    mid = (oldest + newest) / 2
    clip_cpu, clip_wall, sizes = [], [], []
    dec_cpu, bgr_cpu = [], []
    for i in range(args.repeats):
        t = mid + (i % 5) - 2.0
        c0, w0 = time.process_time(), time.perf_counter()
        res = writer._cut(ClipRequest("cam", f"cam/{i}.mp4", t, t, 5.0, 5.0))
        clip_cpu.append(time.process_time() - c0)
        clip_wall.append(time.perf_counter() - w0)
        assert res is not None
        sizes.append(res.size)
        dec_cpu.append(decode_one_second(ring, t, bgr=False))
        bgr_cpu.append(decode_one_second(ring, t, bgr=True))
    med = statistics.median
    print(f"n = {args.repeats} of each, interleaved; medians (process CPU time, all threads)")
    print("| work | CPU ms | wall ms |")
    print("|---|---|---|")
    print(f"| one 10 s clip (remux + sha256 + write + fsync), {med(sizes) / 2**20:.1f} MiB | "
          f"{med(clip_cpu) * 1e3:.1f} | {med(clip_wall) * 1e3:.1f} |")  # fmt: skip
    print(f"| decode 1 s (30 frames) of the same stream | {med(dec_cpu) * 1e3:.1f} | |")
    print(f"| decode 1 s + BGR conversion (what the decoder stage does) | {med(bgr_cpu) * 1e3:.1f} | |")
    print(f"ratio clip / decode 1 s: {med(clip_cpu) / med(dec_cpu):.3f}; "
          f"p90 clip CPU {np.percentile(clip_cpu, 90) * 1e3:.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
