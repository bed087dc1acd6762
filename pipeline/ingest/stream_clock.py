"""Capture times for a live stream from its own clock (pts), not from when FFmpeg hands a frame over.

Why: when a camera goes silent, FFmpeg's parser still holds the last frame and hands it out only when the
read is interrupted, seconds later. Stamping it with "now" makes a stale frame look fresh, and a stale
frame must never vote at a door. The pts says when the camera produced the frame relative to its other
frames; the wall clock says when frames arrive. So:

* At connect the first frame anchors the mapping: ``offset = arrival - pts``; ``capture_time = pts + offset``.
* The offset is the smallest ``arrival - pts`` seen (the least-delayed frame is the best estimate of the
  network + decode latency), so a burst of buffered frames at connect or a late frame never pushes it up.
  A camera clock slightly slower than the wall clock would make that minimum fall behind by a few ms an
  hour; the offset may therefore rise by at most ``max_drift`` (1 ms per second) of elapsed time, far too
  little to hide a frame that is seconds late.
* Re-anchored (``reanchors`` counts it) on every new connection (``reset``) and on a discontinuity: pts
  going backwards (stream restart, RTCP resync). The offset never exceeds the frame's own ``arrival - pts``,
  so a capture time is never ahead of the wall clock (a wall clock stepped back pulls the offset down).
* A frame without pts falls back to its arrival time (``no_pts`` counts them): there is no better clock.
"""

from __future__ import annotations


class StreamClock:
    def __init__(self, max_drift: float = 1e-3) -> None:
        self.max_drift = max_drift
        self.reanchors = 0
        self.no_pts = 0
        self._offset: float | None = None
        self._last_pts = 0.0
        self._last_arrival = 0.0

    @property
    def offset(self) -> float | None:
        """``capture_time - pts`` of the current connection (None before its first frame): maps this
        stream's pts onto the wall clock, e.g. to find a main stream's packets for a detect-stream moment."""
        return self._offset

    def reset(self) -> None:
        """A new connection: its pts restart, the next frame re-anchors."""
        self._offset = None

    def capture_time(self, pts: float | None, arrival: float) -> float:
        """Wall-clock time (epoch s) at which the frame with ``pts`` (stream seconds) was captured, for a
        frame handed over at ``arrival`` (epoch s)."""
        if pts is None:
            self.no_pts += 1
            return arrival
        lag = arrival - pts
        if self._offset is None or pts < self._last_pts:
            self._offset = lag
            self.reanchors += 1
        else:
            drifted = self._offset + self.max_drift * max(0.0, arrival - self._last_arrival)
            self._offset = min(drifted, lag)
        self._last_pts, self._last_arrival = pts, arrival
        return pts + self._offset
