"""FFmpeg decode threads: CPU per decoded frame with FFmpeg's AUTO thread pool vs one thread, same run.

Decodes the whole clip (PyAV, ``thread_type AUTO``; ``thread_count`` 0 = FFmpeg's choice vs 1), the two
alternating for ``--rounds`` rounds; CPU = the process's user + system time (every thread) per frame.
The figure behind pipeline/ingest/thread_budget.py (one thread per decoder once cameras >= cores).

    .venv/bin/python benchmarks/bench_decode_threads.py CLIP [--rounds 7]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys

import av


def cpu_ms_per_frame(clip: str, threads: int) -> float:
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    with av.open(clip) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_type = "AUTO"
        if threads:
            stream.codec_context.thread_count = threads
        frames = sum(1 for _ in container.decode(stream))
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / max(frames, 1) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("clip")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    cpu_ms_per_frame(args.clip, 0)  # warm the page cache and the codec
    auto, one = [], []
    for _ in range(args.rounds):
        auto.append(cpu_ms_per_frame(args.clip, 0))
        one.append(cpu_ms_per_frame(args.clip, 1))
    a, b = statistics.median(auto), statistics.median(one)
    print(
        f"CPU ms per frame, median of {args.rounds}: AUTO {a:.2f}, one thread {b:.2f}; one / AUTO = {b / a:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
