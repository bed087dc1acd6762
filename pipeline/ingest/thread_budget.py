"""How many FFmpeg decode threads each camera's decoder gets: a budget that follows the camera count.

FFmpeg's default (``thread_type AUTO``, thread count 0) starts a frame- or slice-thread pool per decoder,
sized to the machine. One camera on many cores decodes faster that way; but once the cameras outnumber the
cores, every pool competes for the same cores and the threads' hand-offs are pure overhead: one thread per
decoder used 5-17 % less CPU for the same frames (issue 24, 1080p H.264 on 2 cores). The cameras already
decode in parallel with each other, so the pools buy nothing there.
"""

from __future__ import annotations

import os

#: FFmpeg's "pick a thread count for this machine"
AUTO = 0


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def decode_threads(cameras: int, cores: int | None = None) -> int:
    """FFmpeg threads per decoder for ``cameras`` decoding at once: 1 when they are at least as many as the
    cores, else :data:`AUTO`."""
    cores = usable_cores() if cores is None else cores
    return 1 if cameras >= cores else AUTO
